"""Turning a request path into a safe relative path below the origin root, or into the path
an HTTP origin is asked for (pure)."""
from __future__ import annotations

import re

MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255


class BadPath(ValueError):
    """A path that can never name a file below the root; the message says why (400)."""


class HiddenPath(LookupError):
    """A dot-file or dot-folder, not served by default (404)."""


def clean_path(url_path: str, *, allow_dotfiles: bool = False) -> str:
    """The relative path 'a/b.mp4' for the (already percent-decoded) URL path '/a/b.mp4'.

    Rejects NUL and control characters, backslashes, '.' and '..' segments and
    over-long names; merges repeated slashes. An empty result means the root.
    """
    if len(url_path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise BadPath("path too long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url_path):
        raise BadPath("control characters are not allowed in paths")
    if "\\" in url_path:
        raise BadPath("backslashes are not allowed in paths")
    segments = [s for s in url_path.split("/") if s]
    for segment in segments:
        if segment in (".", ".."):
            raise BadPath("'.' and '..' path segments are not allowed")
        if len(segment.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES:
            raise BadPath("path segment too long")
        if segment.startswith(".") and not allow_dotfiles:
            raise HiddenPath(segment)
    return "/".join(segments)


_SLASHES = re.compile(r"/{2,}")


def origin_path(raw_path: str) -> str:
    """The path of a request as an HTTP origin gets it (and as its cache key), from the
    path as received: percent-encoding kept (`%2F` stays `%2F`, `%FF` is not `%FE`), a
    trailing slash kept; runs of '/' merged, as for the cleaned path; the bytes that
    cannot appear in a request target (controls, space, non-ASCII, '#') percent-encoded.

    `raw_path` is the received bytes as latin-1 text, without the query. The safety
    checks are clean_path's, on the decoded path.
    """
    merged = _SLASHES.sub("/", "/" + raw_path)
    return "".join(c if "!" <= c <= "~" and c != "#" else _percent(c) for c in merged)


def _percent(char: str) -> str:
    data = char.encode("latin-1") if ord(char) < 0x100 else char.encode("utf-8")
    return "".join(f"%{b:02X}" for b in data)
