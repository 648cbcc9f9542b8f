"""Content requests: the files the edge serves, any method, answered through the service (the
read path for GET and HEAD); and the dispatch between them and the edge's own routes."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..http.cachestatus import chained
from ..http.directives import Fields
from ..request.client import forwarding_headers
from ..request.paths import BadPath, HiddenPath, clean_path
from ..request.target import content_path, target_of
from ..service import EdgeService, ProxyRequest, Reply, Twin
from ..streaming import send_response, zero_copy
from ..writes import signing
from ..writes.guard import WriteGuard
from ..writes.upload_route import UploadRoute, is_multipart
from .ready import OFFER
from .texts import gone, text

READ_METHODS = ("GET", "HEAD")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # RFC 9110 section 9.2.1: not writes (CORS preflights pass)
DIRECTORY_METHODS = ("GET", "HEAD", "PUT", "POST")


class ReplyResponse(Response):
    """Streams a service Reply; whatever it holds open is closed however the send ends."""

    def __init__(self, reply: Reply, head: bool) -> None:
        self.reply = reply
        self.head = head
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            chunks = None if self.head else self.reply.chunks
            await send_response(self.reply.status, self.reply.headers, chunks, receive, send, zero_copy(scope),
                                self.reply.in_hand)
        finally:
            await self.reply.close()


class ContentRoute:
    """A content request: an upload (a directory origin's PUT, a browser's multipart POST), else
    the service's answer; checked first (the path, who may write, a signed URL)."""

    def __init__(self, settings: Settings, service: EdgeService, guard: WriteGuard, uploads: UploadRoute) -> None:
        self.settings = settings
        self.service = service
        self.guard = guard
        self.uploads = uploads
        self.public_host = urlsplit(settings.public_base_url).netloc or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, decoded: str, wire_path: str | None) -> None:
        request = Request(scope, receive)
        response = await self.serve(request, decoded, wire_path)
        await response(scope, receive, send)

    async def serve(self, request: Request, decoded: str, wire_path: str | None) -> Response:
        """`decoded`: the path decoded (checked, and the directory origin's path), `wire_path` as it came
        (the HTTP origin's path and cache key; None: the cleaned path quoted)."""
        settings, method = self.settings, request.method
        # The edge takes uploads for a directory origin, and turns a browser's multipart form into a PUT
        # for an HTTP origin; any other write to an HTTP origin is proxied as it is.
        if (method == "PUT" and not settings.origin_is_http) or (method == "POST" and is_multipart(request)):
            return await self.uploads(request, decoded)
        if method == "POST" and not settings.origin_is_http:
            return text(415, "Unsupported Media Type: uploads are multipart/form-data with a field 'file'")
        if method not in READ_METHODS and not settings.origin_is_http:
            return text(405, "Method Not Allowed", {"Allow": ", ".join(DIRECTORY_METHODS)})
        try:
            path = clean_path(decoded, allow_dotfiles=settings.serve_dotfiles)
        except BadPath as e:
            return text(400, f"Bad Request: {e}")
        except HiddenPath:
            return text(404, "Not Found")
        if method not in SAFE_METHODS:
            refusal = self.guard.refusal(request)
            if refusal is not None:
                return refusal
        # A request body goes along as it arrives, whatever the method (RFC 9112 section 6.3).
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        body = request.stream() if has_body else None
        query = request.scope.get("query_string", b"").decode("latin-1")
        target = target_of(path, query, wire_path if settings.origin_is_http else None)
        # Every read needs the signature: OPTIONS too (it reaches an HTTP origin); writes have their own rule.
        if settings.signing_key and method in SAFE_METHODS:
            required = signing.needs_signature("/" + path, settings.signed_paths)
            verdict = signing.check(settings.signing_key, target.raw, required, time.time())
            if isinstance(verdict, signing.Refused):
                return text(403, f"Forbidden: {verdict.reason}", {"Cache-Control": "no-store"})
            target = dataclasses.replace(target, raw=verdict.raw)
        headers = self.fields_of(request.scope)
        offer = request.scope.get(OFFER)
        if offer is not None:
            headers.reads = offer.read  # the fields the rules read: what the answer depends on
        try:
            reply = await self.service.handle(ProxyRequest(method, target, headers, body))
        except ClientDisconnect:
            return gone(request, "while sending the request body")
        reply.headers = chained(reply.headers, settings.cache_name)
        # Kept for requests that ask the same: not a signed one (its verdict depends on the time), nor one with a body.
        if offer is not None and reply.steady is not None and body is None and not settings.signing_key:
            offer.steady = reply.steady
            if reply.whole is not None:
                offer.body = b"" if method == "HEAD" else reply.whole
            rerange = reply.rerange
            if rerange is not None:
                offer.again = lambda scope, borrow: rerange(Twin.of(scope["headers"], lambda: self.fields_of(scope)),
                                                            borrow)
        return ReplyResponse(reply, head=method == "HEAD")

    def fields_of(self, scope: Scope) -> Fields:
        """The request's fields as the read path takes them (and the origin gets them)."""
        received = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        peer = scope.get("client")
        return forwarding_headers(received, peer[0] if peer else None, scope.get("scheme", "http"), self.public_host,
                                  self.settings.proxies)


# A content request: scope, receive, send, the path decoded, the path as received.
Content = Callable[[Scope, Receive, Send, str, str | None], Awaitable[None]]


class Dispatch:
    """Content requests (the files the edge serves, any method) go straight to the edge; the
    edge's own routes (/_edge/..., the welcome at /) and the lifespan to Starlette."""

    def __init__(self, content: Content, routes: ASGIApp, compat: bool) -> None:
        self.content = content
        self.routes = routes
        self.compat = compat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "*":
            await asterisk(scope["method"])(scope, receive, send)
            return
        if scope["type"] == "http":
            found = content_path(scope, self.compat)
            if found is not None:
                await self.content(scope, receive, send, *found)
                return
        await self.routes(scope, receive, send)


def asterisk(method: str) -> Response:
    """The answer to a request for `*` (RFC 9112 section 3.2.4): the edge's own, never the origin's.
    `OPTIONS *` asks what the server supports; any other method may not ask for `*`."""
    if method != "OPTIONS":
        return text(400, "Bad Request: the request target '*' is for OPTIONS only (RFC 9112 section 3.2.4)")
    return Response(status_code=200, headers={"Allow": ", ".join(("OPTIONS", *DIRECTORY_METHODS))})
