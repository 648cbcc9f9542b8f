"""The Starlette app: routes and lifespan. Thin: request -> facts -> service -> response."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import __version__
from .auth import write_denial
from .config import Settings, settings_for_worker
from .middleware import EdgeHeaders
from .origins.base import Origin, Target
from .origins.local import LocalOrigin
from .origins.upstream import UpstreamOrigin
from .paths import BadPath, HiddenPath, clean_path
from .service import EdgeService, ProxyRequest, Reply
from .store.disk import Store, StoreErrors
from .streaming import send_response

log = logging.getLogger("edgecache")
READ_METHODS = ("GET", "HEAD")
_PATH_SAFE = "/!$&'()*+,;=:@~"


class ReplyResponse(Response):
    """Streams a service Reply; whatever it holds open is closed however the send ends."""

    def __init__(self, reply: Reply, head: bool) -> None:
        self.reply = reply
        self.head = head
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            chunks = None if self.head else self.reply.chunks
            await send_response(self.reply.status, self.reply.headers, chunks, receive, send)
        finally:
            await self.reply.close()


class AnyMethod:
    """An endpoint for every method, known or not (a function Route accepts only GET)."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def make_origin(settings: Settings) -> Origin:
    if settings.origin_is_http:
        return UpstreamOrigin(
            settings.origin,
            connect_timeout=settings.origin_connect_timeout,
            read_timeout=settings.origin_read_timeout,
            response_timeout=settings.origin_response_timeout,
        )
    return LocalOrigin(
        settings.origin,
        chunk_size=settings.chunk_size,
        cache_control=settings.cache_control,
        max_ranges=settings.max_ranges,
        allow_dotfiles=settings.serve_dotfiles,
    )


def open_store(settings: Settings) -> Store | None:
    """The disk cache, or None when it is off (directory origin only) or cannot be opened."""
    if not settings.cache_enabled and not settings.origin_is_http:
        return None
    try:
        store = Store(settings.cache_dir, settings.cache_size_limit)
        store.sweep_parts(older_than=120)
        return store
    except StoreErrors as e:
        log.error("cache directory %s unusable, serving from the origin only: %s", settings.cache_dir, e)
        return None


def create_app(settings: Settings) -> Starlette:
    origin = make_origin(settings)
    service = EdgeService(settings, origin, open_store(settings))

    async def serve(request: Request, url_path: str) -> Response:
        method = request.method
        if method not in READ_METHODS and not settings.origin_is_http:
            return _text(405, "Method Not Allowed", {"Allow": ", ".join(READ_METHODS)})
        try:
            path = clean_path(url_path, allow_dotfiles=settings.serve_dotfiles)
        except BadPath as e:
            return _text(400, f"Bad Request: {e}")
        except HiddenPath:
            return _text(404, "Not Found")
        if method not in READ_METHODS:
            client = request.client.host if request.client else None
            denial = write_denial(settings.tokens, client, request.headers.get("authorization"))
            if denial:
                return _text(denial[0], f"{'Unauthorized' if denial[0] == 401 else 'Forbidden'}: {denial[1]}")
        query = request.scope.get("query_string", b"").decode("latin-1")
        target = Target(path=path, raw="/" + quote(path, safe=_PATH_SAFE) + (f"?{query}" if query else ""))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
        body: AsyncIterator[bytes] | None = None
        if method not in READ_METHODS:
            body = request.stream()
        reply = await service.handle(ProxyRequest(method, target, headers, body))
        return ReplyResponse(reply, head=method == "HEAD")

    async def content(request: Request) -> Response:
        return await serve(request, request.path_params["path"])

    async def compat_video(request: Request) -> Response:
        return await serve(request, "video/" + request.path_params["name"])

    async def welcome(request: Request) -> Response:
        return JSONResponse(
            {
                "message": "Welcome to edgecache, a caching edge for video and large files.",
                "version": __version__,
                "health": "/_edge/health",
            }
        )

    async def health(request: Request) -> Response:
        ok = await origin.healthy()
        return JSONResponse(
            {"status": "ok" if ok else "origin unavailable", "version": __version__,
             "origin": origin.kind, "cache": service.store is not None},
            status_code=200 if ok else 503,
            headers={"Cache-Control": "no-store"},
        )

    async def edge_not_found(request: Request) -> Response:
        return _text(404, "Not Found")

    routes = [
        Route("/_edge/health", health, methods=list(READ_METHODS)),
        Route("/_edge/{rest:path}", AnyMethod(edge_not_found)),
    ]
    if settings.compat_routes:
        routes += [
            Route("/", welcome, methods=list(READ_METHODS)),
            Route("/get_video_by_name/{name:path}", AnyMethod(compat_video)),
            Route("/assets/{path:path}", AnyMethod(content)),
        ]
    routes.append(Route("/{path:path}", AnyMethod(content)))
    middleware = [
        Middleware(
            EdgeHeaders,
            max_count=settings.max_header_count,
            max_bytes=settings.max_header_bytes,
            server=settings.server_name,
        )
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await service.aclose()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.service = service
    return app


def app_from_env() -> Starlette:
    """uvicorn factory for worker processes (`--workers N` needs an import string)."""
    return create_app(settings_for_worker())
