"""The edge's own routes: /_edge/health, /_edge/purge, the page and its listings, the rest of
/_edge/ (reserved), and with the compatibility routes the JSON welcome at /."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..config import Settings
from ..ops.page import page_routes
from ..service import EdgeService
from ..writes.guard import WriteGuard
from ..writes.purge import PurgeRoute
from ..writes.upload_route import UploadRoute, is_multipart
from .content import READ_METHODS
from .texts import text


class AnyMethod:
    """An endpoint for every method, known or not (a function Route accepts only GET)."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def own_routes(settings: Settings, service: EdgeService, guard: WriteGuard, uploads: UploadRoute,
               purge: PurgeRoute) -> list[BaseRoute]:
    async def welcome(request: Request) -> Response:
        return JSONResponse({"message": "Welcome to edgecache, a caching edge for video and large files.",
                             "version": __version__, "health": "/_edge/health", "page": "/_edge/",
                             "metrics": "/_edge/metrics"})

    async def health(request: Request) -> Response:
        origin = service.origin
        ok = await origin.healthy()
        return JSONResponse({"status": "ok" if ok else "origin unavailable", "version": __version__,
                             "origin": origin.kind, "cache": service.store is not None},
                            status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})

    async def reserved(request: Request) -> Response:
        """/_edge/ is the edge's own: an upload there is refused with the reason, the rest is 404."""
        if request.method == "PUT" or (request.method == "POST" and is_multipart(request)):
            return await uploads(request, "/_edge/" + request.path_params["rest"])
        return text(404, "Not Found")

    routes: list[BaseRoute] = [
        Route("/_edge/health", health, methods=list(READ_METHODS)),
        Route("/_edge/purge", purge.answer, methods=["POST"]),
        *page_routes(service, guard.refusal),
        Route("/_edge/{rest:path}", AnyMethod(reserved)),
    ]
    if settings.compat_routes:
        routes.append(Route("/", welcome, methods=list(READ_METHODS)))
    return routes
