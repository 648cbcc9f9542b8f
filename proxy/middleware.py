"""ASGI middleware: request header limits, and Date / Server on every response."""
from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .http.headers import format_http_date


class EdgeHeaders:
    """Rejects requests with too many or too large headers (431, RFC 6585 section 5).

    Adds exactly one Date (RFC 9110 section 6.6.1) and the configured Server to
    responses that lack them; uvicorn's own are switched off.
    """

    def __init__(self, app: ASGIApp, *, max_count: int, max_bytes: int, server: str) -> None:
        self.app = app
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.server = server.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if len(headers) > self.max_count or sum(len(n) + len(v) + 4 for n, v in headers) > self.max_bytes:
            await self._too_large(send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name for name, _ in message["headers"]}
                extra = []
                if b"date" not in present:
                    extra.append((b"date", format_http_date(time.time()).encode()))
                if self.server and b"server" not in present:
                    extra.append((b"server", self.server))
                message = {**message, "headers": [*message["headers"], *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _too_large(self, send: Send) -> None:
        body = b"Request Header Fields Too Large\n"
        await send(
            {
                "type": "http.response.start",
                "status": 431,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    (b"date", format_http_date(time.time()).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
