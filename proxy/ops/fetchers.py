"""Two ways for the warmer to GET through the cache, bodies counted and dropped: a running
edge over HTTP, or the edge's own app driven in this process (so a cache directory is
filled exactly as the server fills it)."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

import anyio
import httpx
from starlette.types import ASGIApp

from ..app import create_app
from ..config import Settings
from ..http.cache import content_range

Counter = Callable[[int], None]


class FetchError(Exception):
    """A GET that got no answer (the edge unreachable, a timeout), or a cache that cannot be opened."""


@dataclass
class Fetched:
    status: int
    x_cache: str  # the edge's X-Cache: HIT, MISS, STALE, BYPASS ("" when none)
    length: int | None  # Content-Length of this response
    size: int | None  # of the whole object: Content-Range's, else Content-Length of a 200
    received: int = 0
    data: bytes = b""  # the first `keep` bytes of the body


class Fetcher(Protocol):
    async def get(self, target: str, byte_range: tuple[int, int] | None, keep: int, on_length: Counter,
                  on_chunk: Counter) -> Fetched:
        """GET `target` (a path and query, percent-encoded), bytes [first, last] when a range is given."""
        ...


def _fetched(status: int, headers: httpx.Headers, keep: int) -> Fetched:
    length = headers.get("content-length")
    span = content_range(headers.multi_items())  # RFC 9110 section 14.4
    size = span[2] if span is not None else (int(length) if status == 200 and length else None)
    return Fetched(status, headers.get("x-cache", ""), int(length) if length else None, size)


def _request_headers(byte_range: tuple[int, int] | None) -> list[tuple[str, str]]:
    return [("range", f"bytes={byte_range[0]}-{byte_range[1]}")] if byte_range else []


def _take(fetched: Fetched, chunk: bytes, keep: int, on_chunk: Counter) -> None:
    if len(fetched.data) < keep:
        fetched.data += chunk[: keep - len(fetched.data)]
    fetched.received += len(chunk)
    on_chunk(len(chunk))


class EdgeFetcher:
    """GETs to a running edge."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/"), limits=limits, trust_env=False,
                                        timeout=httpx.Timeout(30.0, connect=5.0))

    async def get(self, target: str, byte_range: tuple[int, int] | None, keep: int, on_length: Counter,
                  on_chunk: Counter) -> Fetched:
        try:
            async with self.client.stream("GET", target, headers=_request_headers(byte_range)) as response:
                fetched = _fetched(response.status_code, response.headers, keep)
                on_length(fetched.length or 0)
                async for chunk in response.aiter_raw():
                    _take(fetched, chunk, keep, on_chunk)
        except httpx.HTTPError as e:
            raise FetchError(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
        return fetched

    async def aclose(self) -> None:
        await self.client.aclose()


class AppFetcher:
    """GETs driven through the edge's app in this process, as uvicorn would drive them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def get(self, target: str, byte_range: tuple[int, int] | None, keep: int, on_length: Counter,
                  on_chunk: Counter) -> Fetched:
        path, _, query = target.partition("?")
        headers = [(b"host", b"localhost"), *((n.encode(), v.encode()) for n, v in _request_headers(byte_range))]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": unquote(path), "raw_path": path.encode("latin-1"), "query_string": query.encode("latin-1"),
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 0), "server": ("localhost", 80),
        }
        finished = anyio.Event()
        fetched: Fetched | None = None
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal fetched
            if message["type"] == "http.response.start":
                fetched = _fetched(message["status"], httpx.Headers(message.get("headers", [])), keep)
                on_length(fetched.length or 0)
            elif message["type"] == "http.response.body" and fetched is not None:
                _take(fetched, message.get("body", b""), keep, on_chunk)

        try:
            await self.app(scope, receive, send)
        finally:
            finished.set()
        if fetched is None:
            raise RuntimeError(f"the app sent no response for {target}")
        return fetched


@contextlib.asynccontextmanager
async def app_fetcher(settings: Settings) -> AsyncIterator[AppFetcher]:
    """The edge's app for `settings`, started (its ASGI lifespan) for as long as the block runs;
    the block fills it started are stored before it stops."""
    app = create_app(dataclasses.replace(settings, access_log=False))  # no client lines among warm's output
    if app.state.service.store is None:
        raise FetchError(f"the cache in {settings.cache_dir} cannot be opened (see the error above)")
    async with _lifespan(app):
        yield AppFetcher(app)
        await app.state.service.settle()


@contextlib.asynccontextmanager
async def _lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Run an ASGI app's lifespan protocol around the block, as a server does."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()

    async def send(message: MutableMapping[str, Any]) -> None:
        await from_app.put(message)

    async def run() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, to_app.get, send)

    task = asyncio.get_running_loop().create_task(run())
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        await task
        raise FetchError(f"the edge did not start: {started.get('message', started['type'])}")
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await task
