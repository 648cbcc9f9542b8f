"""Command line: flags + env + TOML -> Settings -> uvicorn."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time

from rich.console import Console

from . import __version__
from .config import ConfigError, Settings, load_settings, parse_size
from .http.tags import is_tag
from .ops import simulate
from .ops.fetchers import FetchError
from .ops.renditions import ALL, parse_selection
from .ops.startup import env_warnings, log_to_console, origin_problem, startup_line
from .ops.verify import verify
from .ops.warm import BadItem, Display, Tally, read_items, target_of, warm_cache, warm_edge
from .request.paths import BadPath, HiddenPath, key_prefix, origin_path, typed_key, wire
from .server.run import serve
from .store.disk import Store, StoreErrors, is_cache_dir
from .writes.signing import signed_query

log = logging.getLogger("edgecache.cli")
# Options of one command, not settings.
_COMMAND_OPTIONS = ("path", "prefix", "tag", "soft", "items", "from_file", "edge", "concurrency", "head_size",
                    "renditions", "sign_path", "ttl", "base", "drop")


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be between 1 and 256 (got {value})")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecache", description="A caching edge for video and large files.")
    parser.add_argument("--version", action="version", version=f"edgecache {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    which.add_argument("--tag", help="every cache key stored with this cache tag (Surrogate-Key, Cache-Tag)")
    purge.add_argument("--soft", action="store_true",
                       help="mark the entries stale instead of deleting them: the next request revalidates them, and "
                            "they may still be served stale (stale-while-revalidate, stale-if-error, origin down)")
    sign = commands.add_parser("sign", help="print a signed URL for a path (needs signing_key)")
    sign.add_argument("--config", help="TOML settings file (also EDGECACHE_CONFIG)")
    sign.add_argument("sign_path", metavar="PATH", help="the file's path, e.g. /premium/a.mp4")
    sign.add_argument("--ttl", type=int, default=3600, help="seconds the URL stays valid (default 3600)")
    sign.add_argument("--base", help="base URL (default: public_base_url)")
    warm = commands.add_parser(
        "warm", help="fill the cache with files, through a running edge or directly into a cache directory")
    warm.add_argument("items", nargs="*", metavar="PATH_OR_URL", help="/video/a.mp4 or http://edge/video/a.mp4")
    warm.add_argument("--from", dest="from_file", metavar="FILE", help="paths or URLs, one a line ('-': stdin)")
    warm.add_argument("--edge", metavar="URL", help="warm through the edge running at URL, e.g. http://127.0.0.1:8080"
                      " (default: directly into the cache directory, from the configured origin)")
    warm.add_argument("--config", help="TOML settings file (also EDGECACHE_CONFIG)")
    warm.add_argument("--origin", help="origin, without --edge (default ./assets)")
    warm.add_argument("--cache-dir", dest="cache_dir", help="cache directory, without --edge (default ./.edgecache)")
    warm.add_argument("--concurrency", type=_count, default=4, help="files warmed at a time (default 4)")
    warm.add_argument("--head-size", dest="head_size", metavar="SIZE",
                      help="warm only the first SIZE bytes of each file (e.g. 8MiB), and an MP4's index "
                           "stored past them (default: whole files)")
    warm.add_argument("--renditions", metavar="SELECT",
                      help="renditions of an HLS master playlist or a DASH MPD to warm: all (default), best, lowest, "
                           "an index (0), a height (720p), a size (1280x720), a bandwidth bound ('<=3M', '>=800k'), "
                           "or several: 720p,1080p")
    check = commands.add_parser("verify", help="check every block stored in a cache directory against its checksum "
                                "(exit status 1 when some are damaged)")
    check.add_argument("--config", help="TOML settings file (also EDGECACHE_CONFIG)")
    check.add_argument("--cache-dir", dest="cache_dir", help="cache directory (default ./.edgecache)")
    check.add_argument("--drop", action="store_true", help="drop the damaged blocks (a running edge fetches them "
                       "again from the origin when they are asked for)")
    simulate.add_parser(commands)
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
    key_path = origin_path(wire(path.partition("?")[0]))  # as a client's request names it, UTF-8
    expires = int(time.time()) + ttl
    print(f"{base}{key_path}?{signed_query(settings.signing_key, key_path, expires)}")
    return 0


def _not_a_cache(directory: str) -> str | None:
    """Why `directory` is not an edgecache cache directory, or None when it is one."""
    if is_cache_dir(directory):
        return None
    reason = "does not exist" if not os.path.exists(directory) else "is not an edgecache cache directory"
    return f"{os.path.abspath(directory)} {reason} (edgecache serve creates one)"


def run_purge(settings: Settings, path: str | None, prefix: str | None, tag: str | None, soft: bool) -> int:
    """Purge from the cache directory directly; prints what was purged as JSON."""
    problem = _not_a_cache(settings.cache_dir) or (
        "a tag is 1 to 1024 visible ASCII characters, without commas" if tag is not None and not is_tag(tag) else None)
    if problem is not None:
        print(f"edgecache purge: {problem}", file=sys.stderr)
        return 2
    try:
        store = Store(settings.cache_dir, settings.cache_size_limit, block_size=settings.block_size,
                      policy_memory=settings.policy_memory)
    except StoreErrors as e:
        print(f"edgecache: cannot open the cache in {settings.cache_dir}: {e}", file=sys.stderr)
        return 1
    stale_at = time.time() if soft else None
    try:
        if prefix is not None:
            purged = store.purge_prefix(key_prefix(prefix, settings.origin_is_http), stale_at)
        elif tag is not None:
            purged = store.purge_tag(tag, stale_at)
        else:
            key = typed_key(path or "", settings.origin_is_http)
            purged = [key] if store.purge_key(key, stale_at) else []
    except (BadPath, HiddenPath) as e:
        print(f"edgecache purge: not a path a file can have: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(json.dumps({"purged": purged, "count": len(purged)}))
    return 0


def run_verify(settings: Settings, drop: bool) -> int:
    """Check the stored blocks of the cache directory; a summary on stdout; 1 when some are damaged."""
    problem = _not_a_cache(settings.cache_dir)
    if problem is not None:
        print(f"edgecache verify: {problem}", file=sys.stderr)
        return 2
    try:
        store = Store(settings.cache_dir, settings.cache_size_limit, block_size=settings.block_size,
                      policy_memory=settings.policy_memory)
    except StoreErrors as e:
        print(f"edgecache: cannot open the cache in {settings.cache_dir}: {e}", file=sys.stderr)
        return 1
    try:
        findings = verify(store, drop, Console())
    finally:
        store.close()
    print(findings.summary())
    return 1 if findings.damage else 0


def run_warm(settings: Settings, items: list[str], from_file: str | None, edge: str | None, concurrency: int,
             head_size: str | None, renditions: str | None) -> int:
    """Warm the cache; a progress bar on a terminal, a summary on stdout; 1 when a file failed."""
    try:
        if from_file == "-":
            items = items + read_items(sys.stdin)
        elif from_file is not None:
            with open(from_file, encoding="utf-8") as f:
                items = items + read_items(f)
        targets = [target_of(item) for item in items]
        head = parse_size(head_size) if head_size is not None else None
    except OSError as e:
        print(f"edgecache warm: cannot read {from_file}: {e.strerror}", file=sys.stderr)
        return 2
    except (BadItem, ValueError) as e:
        what = f"--head-size must be a size such as 8MiB (got {head_size!r})" if not isinstance(e, BadItem) else e
        print(f"edgecache warm: {what}", file=sys.stderr)
        return 2
    try:
        selection = parse_selection(renditions) if renditions is not None else ALL
    except ValueError as e:
        print(f"edgecache warm: --renditions: {e}", file=sys.stderr)
        return 2
    problem = _warm_problem(settings, targets, edge, head)
    if problem is not None:
        print(f"edgecache warm: {problem}", file=sys.stderr)
        return 2
    display = Display(Tally(), Console())
    errors = Console(stderr=True)
    try:
        if edge is not None:
            tally = asyncio.run(warm_edge(edge, targets, concurrency, head, display, errors, selection))
        else:
            tally = asyncio.run(warm_cache(settings, targets, concurrency, head, display, errors, selection))
    except FetchError as e:
        print(f"edgecache warm: {e}", file=sys.stderr)
        return 1
    print(tally.summary())
    return 1 if tally.errors else 0


def _warm_problem(settings: Settings, targets: list[str], edge: str | None, head: int | None) -> str | None:
    if not targets:
        return "nothing to warm: give paths or URLs, or --from FILE"
    if head is not None and head < 1:
        return "--head-size must be at least 1 byte"
    if edge is not None:
        if not edge.startswith(("http://", "https://")) or not edge.split("://", 1)[1].strip("/"):
            return f"--edge must be the edge's URL, e.g. http://127.0.0.1:8080 (got {edge!r})"
        return None
    if not settings.cache_enabled and not settings.origin_is_http:
        return "the cache is off (cache_enabled = false): there is nothing to warm"
    return _not_a_cache(settings.cache_dir)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    if command is None:  # a usage error, as argparse has it (exit 2), but with the whole help
        parser.print_help(sys.stderr)
        return 2
    if command == "simulate":  # an offline tool: no settings to load
        return simulate.run(**args)
    config_file = args.pop("config")
    options = {name: args.pop(name) for name in _COMMAND_OPTIONS if name in args}
    if command == "warm" and options["edge"] is not None and any(args.values()):
        print("edgecache warm: --origin and --cache-dir are for warming a cache directory, not with --edge",
              file=sys.stderr)
        return 2
    try:
        settings = load_settings(flags=args, config_file=config_file)
    except ConfigError as e:
        print(f"edgecache: {e}", file=sys.stderr)
        return 2
    log_to_console(log, settings.log_level)
    for warning in env_warnings(os.environ):
        log.warning(warning)
    if command == "purge":
        return run_purge(settings, options["path"], options["prefix"], options["tag"], options["soft"])
    if command == "sign":
        return run_sign(settings, options["sign_path"], options["ttl"], options["base"])
    if command == "warm":
        return run_warm(settings, **options)
    if command == "verify":
        return run_verify(settings, options["drop"])
    problem = origin_problem(settings)
    if problem is not None:
        log.warning(problem)
    return serve(settings, announce=lambda: log.info(startup_line(settings)))
