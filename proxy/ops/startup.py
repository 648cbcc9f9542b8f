"""What the operator is told when the server starts: what it serves from where, and what looks wrong."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from uvicorn.logging import DefaultFormatter

from .. import __version__
from ..config import Settings, format_size, unknown_env


def startup_line(settings: Settings) -> str:
    """Origin, cache directory and size limit, workers and listen URL, as the server will use them."""
    origin = settings.origin if settings.origin_is_http else os.path.abspath(settings.origin)
    if settings.cache_enabled or settings.origin_is_http:
        cache = f"cache {os.path.abspath(settings.cache_dir)} (limit {format_size(settings.cache_size_limit)})"
    else:
        cache = "cache off"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    workers = f"{settings.workers} worker{'s' if settings.workers > 1 else ''}"
    urls = [f"{'https' if settings.tls_cert and not settings.tls_port else 'http'}://{host}:{settings.port}"]
    if settings.tls_port:
        urls.append(f"https://{host}:{settings.tls_port}")
    return f"edgecache {__version__}: origin {origin}, {cache}, {workers}, listening on {' and '.join(urls)}"


def origin_problem(settings: Settings) -> str | None:
    """Why a directory origin cannot serve (missing, not a directory, unreadable), or None."""
    if settings.origin_is_http or settings.origin_is_s3:
        return None
    root = os.path.abspath(settings.origin)
    if not os.path.exists(root):
        return f"the origin directory {root} does not exist: every request will be 404"
    if not os.path.isdir(root):
        return f"the origin {root} is not a directory: every request will be 404"
    try:
        with os.scandir(root):
            pass
    except OSError as e:
        return f"the origin directory {root} cannot be read ({e.strerror}): requests will fail"
    return None


def env_warnings(environ: Mapping[str, str]) -> list[str]:
    """One line per EDGECACHE_* variable that names no setting (it is ignored)."""
    return [f"{key} is not a setting and is ignored" + (f" (did you mean {match}?)" if match else "")
            for key, match in unknown_env(environ)]


def log_to_console(logger: logging.Logger, level: str) -> None:
    """`logger`'s messages (and its children's) on stderr at `level`, looking like uvicorn's
    ('INFO:     ...')."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
