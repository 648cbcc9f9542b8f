"""The Starlette app: routes and lifespan. Thin: request -> facts -> service -> response."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import __version__
from .config import Settings, settings_for_worker
from .http.conditional import Conditions
from .middleware import EdgeHeaders
from .origins.local import LocalOrigin
from .paths import BadPath, HiddenPath, clean_path
from .service import EdgeService, Reply, RequestFacts
from .streaming import send_plan

READ_METHODS = ("GET", "HEAD")


class ReplyResponse(Response):
    """Streams a service Reply; the origin file is closed however the send ends."""

    def __init__(self, reply: Reply, head: bool) -> None:
        self.reply = reply
        self.head = head
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send_plan(self.reply.plan, self.reply.reader, receive, send, head=self.head)
        finally:
            self.reply.close()


class AnyMethod:
    """An endpoint for every method, known or not (a function Route accepts only GET)."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def _joined(request: Request, name: str) -> str | None:
    """A field's value with repeated lines joined as one list (RFC 9110 section 5.3)."""
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def create_app(settings: Settings) -> Starlette:
    origin = LocalOrigin(settings.origin, chunk_size=settings.chunk_size, allow_dotfiles=settings.serve_dotfiles)
    service = EdgeService(settings, origin)

    async def serve(request: Request, url_path: str) -> Response:
        if request.method not in READ_METHODS:
            return _text(405, "Method Not Allowed", {"Allow": ", ".join(READ_METHODS)})
        try:
            path = clean_path(url_path, allow_dotfiles=settings.serve_dotfiles)
        except BadPath as e:
            return _text(400, f"Bad Request: {e}")
        except HiddenPath:
            return _text(404, "Not Found")
        facts = RequestFacts(
            method=request.method,
            path=path,
            conditions=Conditions(
                if_match=_joined(request, "if-match"),
                if_none_match=_joined(request, "if-none-match"),
                if_modified_since=_joined(request, "if-modified-since"),
                if_unmodified_since=_joined(request, "if-unmodified-since"),
                if_range=_joined(request, "if-range"),
            ),
            range=_joined(request, "range"),
        )
        reply = await service.fetch(facts)
        if reply is None:
            return _text(404, "Not Found")
        return ReplyResponse(reply, head=request.method == "HEAD")

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
        ok = origin.healthy()
        return JSONResponse(
            {"status": "ok" if ok else "origin unavailable", "version": __version__},
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
    return Starlette(routes=routes, middleware=middleware)


def app_from_env() -> Starlette:
    """uvicorn factory for worker processes (`--workers N` needs an import string)."""
    return create_app(settings_for_worker())
