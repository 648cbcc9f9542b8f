"""Command line: flags + env + TOML -> Settings -> uvicorn."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import uvicorn

from .config import RESOLVED_ENV, ConfigError, Settings, dump_resolved, load_settings
from .paths import key_prefix, origin_path
from .signing import signed_query
from .store.disk import Store, StoreErrors


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecache", description="A caching edge for video and large files.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the edge server")
    serve.add_argument("--config", help="TOML settings file (also EDGECACHE_CONFIG)")
    serve.add_argument("--origin", help="origin directory (default ./assets)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", help="port to listen on (default 8080)")
    serve.add_argument("--workers", help="worker processes (default 1)")
    serve.add_argument("--cache-dir", dest="cache_dir", help="cache directory (default ./.edgecache)")
    serve.add_argument("--log-level", dest="log_level", help="critical|error|warning|info|debug")
    purge = commands.add_parser("purge", help="purge cached entries from a cache directory (server may be stopped)")
    purge.add_argument("--config", help="TOML settings file (also EDGECACHE_CONFIG)")
    purge.add_argument("--cache-dir", dest="cache_dir", help="cache directory (default ./.edgecache)")
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--path", help="one cache key, e.g. /video/a.mp4")
    which.add_argument("--prefix", help="every cache key starting with this, e.g. /video/")
    sign = commands.add_parser("sign", help="print a signed URL for a path (needs signing_key)")
    sign.add_argument("--config", help="TOML settings file (also EDGECACHE_CONFIG)")
    sign.add_argument("sign_path", metavar="PATH", help="the file's path, e.g. /premium/a.mp4")
    sign.add_argument("--ttl", type=int, default=3600, help="seconds the URL stays valid (default 3600)")
    sign.add_argument("--base", help="base URL (default: public_base_url)")
    return parser


def run_sign(settings: Settings, path: str, ttl: int, base: str | None) -> int:
    """Print `base` + the path as the edge keys it + a signature valid for `ttl` seconds."""
    base = (base or settings.public_base_url).rstrip("/")
    problem = ("no signing_key is set" if not settings.signing_key
               else "give --base or set public_base_url" if not base.startswith(("http://", "https://"))
               else "--ttl must be positive" if ttl <= 0 else None)
    if problem:
        print(f"edgecache sign: {problem}", file=sys.stderr)
        return 2
    key_path = origin_path(path.lstrip("/"))
    expires = int(time.time()) + ttl
    print(f"{base}{key_path}?{signed_query(settings.signing_key, key_path, expires)}")
    return 0


def run_purge(settings: Settings, path: str | None, prefix: str | None) -> int:
    """Purge from the cache directory directly; prints what was purged as JSON."""
    try:
        store = Store(settings.cache_dir, settings.cache_size_limit)
    except StoreErrors as e:
        print(f"edgecache: cannot open the cache in {settings.cache_dir}: {e}", file=sys.stderr)
        return 1
    try:
        if prefix is not None:
            purged = store.purge_prefix(key_prefix(prefix, settings.origin_is_http))
        else:
            key = key_prefix(path, settings.origin_is_http) if path else None  # a whole path: its key
            purged = [key] if key and store.purge(key) else []
    finally:
        store.close()
    print(json.dumps({"purged": purged, "count": len(purged)}))
    return 0


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options every edgecache server runs with (also used by the tests)."""
    return dict(
        loop="uvloop",
        # httptools (llhttp: rejects CL+TE, duplicate lengths, obs-fold with 400), plus sendfile
        http="proxy.server.zerocopy:ZeroCopyProtocol",
        lifespan="on",
        proxy_headers=False,  # X-Forwarded-* are trusted only where configured
        server_header=False,  # the app sends one Server header itself
        date_header=False,  # ... and one Date
        timeout_keep_alive=settings.keepalive_timeout,
        timeout_graceful_shutdown=10,  # then open streams are cut, so a stop never hangs
        log_level=settings.log_level,
        access_log=settings.access_log,
    )


def run_server(settings: Settings) -> None:
    """Run uvicorn with the settings; N workers are N real processes."""
    os.environ[RESOLVED_ENV] = dump_resolved(settings)
    uvicorn.run(
        "proxy.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        **uvicorn_options(settings),
    )


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    config_file = args.pop("config")
    path, prefix = args.pop("path", None), args.pop("prefix", None)
    sign_path, ttl, base = args.pop("sign_path", None), args.pop("ttl", None), args.pop("base", None)
    try:
        settings = load_settings(flags=args, config_file=config_file)
    except ConfigError as e:
        print(f"edgecache: {e}", file=sys.stderr)
        return 2
    if command == "purge":
        return run_purge(settings, path, prefix)
    if command == "sign":
        return run_sign(settings, sign_path, ttl, base)
    run_server(settings)
    return 0
