"""The browser page at /_edge/ and the JSON it reads: cached objects, origin files, metrics."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any, TypeVar

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..request.paths import query_value, url_path
from ..service import EdgeService
from . import metrics

PAGE_SIZE = 100  # listing entries per page, at most
_STATIC = {"edge.js": "text/javascript; charset=utf-8", "edge.css": "text/css; charset=utf-8"}
# The page loads only its own script and style, plays media from this edge, and is never framed.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
T = TypeVar("T")

Guard = Callable[[Request], Response | None]


def _asset(name: str) -> bytes:
    return resources.files("proxy.ops").joinpath("static", name).read_bytes()


def origin_files(root: str, after: str, limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """Up to `limit` regular files under `root` whose relative paths sort after `after` (in the
    order of those paths as strings; dot names and links skipped); and the cursor of the next
    page. Folders wholly before the cursor are not walked."""
    found: list[dict[str, Any]] = []
    for rel, size in _walk(root, "", after):
        if len(found) == limit:
            return found, found[-1]["path"][1:]
        found.append({"path": "/" + rel, "url": url_path(rel), "size": size})
    return found, None


def _walk(root: str, rel: str, after: str) -> Iterator[tuple[str, int]]:
    """Files below `rel` whose paths sort after `after`, in that order: a folder's entries by
    their paths' order (a folder `a` as `a/`, so `a-b.txt` comes before `a/z.txt`)."""
    try:
        with os.scandir(os.path.join(root, rel)) as it:
            entries = [(f"{rel}/{e.name}" if rel else e.name, e) for e in it if not e.name.startswith(".")]
    except OSError:
        return
    folders = {path for path, entry in entries if entry.is_dir(follow_symlinks=False)}
    for path, entry in sorted(entries, key=lambda pair: pair[0] + "/" if pair[0] in folders else pair[0]):
        if path in folders:
            inside = path + "/"
            if after.startswith(inside) or inside > after:  # else every path in it sorts before `after`
                yield from _walk(root, path, after)
        elif path > after and entry.is_file(follow_symlinks=False):
            yield path, entry.stat(follow_symlinks=False).st_size


def _page_of(request: Request) -> tuple[int, str] | Response:
    """A listing request's (limit, after), or the 400 for a bad limit."""
    text = query_value(request.url.query, "limit") or str(PAGE_SIZE)
    if not (text.isdigit() and 1 <= int(text) <= PAGE_SIZE):
        return PlainTextResponse(f"Bad Request: limit must be 1 to {PAGE_SIZE}\n", status_code=400)
    return int(text), query_value(request.url.query, "after") or ""


def page_routes(service: EdgeService, guard: Guard) -> list[Route]:
    """GET /_edge/ (the page, its script and style), /_edge/metrics, and the listings behind
    `guard` (the write rule: a listing names every path the edge or the origin holds)."""
    page = _asset("edge.html")
    statics = {name: _asset(name) for name in _STATIC}
    origin_dir = service.settings.origin if service.origin.kind == "directory" else None  # no listing of HTTP, S3

    async def in_thread(func: Callable[..., T], *args: Any) -> T:
        """Blocking work on the store's own threads (they hold its connections), else anyio's."""
        if service.reads is not None:
            return await service.reads.threads.run(func, *args)
        return await anyio.to_thread.run_sync(func, *args)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in statics:
            return PlainTextResponse("Not Found\n", status_code=404)
        return Response(statics[name], media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    async def scrape(request: Request) -> Response:
        body = await in_thread(metrics.scrape, service.store)
        return Response(body, media_type=metrics.CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    async def objects(request: Request) -> Response:
        asked = guard(request) or _page_of(request)
        if isinstance(asked, Response):
            return asked
        limit, after = asked
        if service.store is None:
            return _listing([], None)
        listed = await in_thread(service.store.list_objects, after, limit)
        now, http = time.time(), service.settings.origin_is_http
        rows = [{"key": o.key, "url": o.key if http else url_path(o.key.lstrip("/")), "size": o.size,
                 "blocks": o.blocks, "blocks_cached": o.blocks_cached, "hits": o.hits,
                 "age": max(0, int(now - o.stored_at))}
                for o in listed]
        return _listing(rows, listed[-1].meta_key if len(listed) == limit else None)

    async def files(request: Request) -> Response:
        asked = guard(request) or _page_of(request)
        if isinstance(asked, Response):
            return asked
        limit, after = asked
        if origin_dir is None:
            return _listing([], None)
        found, cursor = await anyio.to_thread.run_sync(origin_files, origin_dir, after, limit)
        return _listing(found, cursor)

    return [
        Route("/_edge/", index, methods=["GET", "HEAD"]),
        Route("/_edge/static/{name}", static, methods=["GET", "HEAD"]),
        Route("/_edge/metrics", scrape, methods=["GET", "HEAD"]),
        Route("/_edge/objects", objects, methods=["GET", "HEAD"]),
        Route("/_edge/files", files, methods=["GET", "HEAD"]),
    ]


def _listing(items: list[dict[str, Any]], cursor: str | None) -> Response:
    return JSONResponse({"items": items, "next": cursor}, headers={"Cache-Control": "no-store"})

