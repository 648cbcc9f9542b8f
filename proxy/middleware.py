"""ASGI middleware: the Host field, and Date / Server / nosniff on every response."""
from __future__ import annotations

import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .http.headers import format_http_date

# RFC 9112 section 3.2 / RFC 3986 section 3.2.2: uri-host [ ":" port ], possibly empty.
_HOST_VALUE = re.compile(
    rb"(\[[0-9A-Za-z:.%~_!$&'()*+,;=-]+\]|[0-9A-Za-z._~%!$&'()*+,;=-]*)(:[0-9]*)?"
)
_SECTION = "(RFC 9112 section 3.2)"


def host_problem(http_version: str, headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why the request's Host field is unacceptable (RFC 9112 section 3.2), or None.

    An HTTP/1.1 request needs exactly one Host field; no request may carry two; the
    value must be a host[:port] (empty is allowed).
    """
    hosts = [value for name, value in headers if name.lower() == b"host"]
    if len(hosts) > 1:
        return f"more than one Host header field {_SECTION}"
    if not hosts:
        return None if http_version in ("1.0", "0.9") else f"an HTTP/1.1 request needs a Host header field {_SECTION}"
    if not _HOST_VALUE.fullmatch(hosts[0].strip()):
        return f"the Host header field is not a valid host[:port] {_SECTION}"
    return None


class EdgeHeaders:
    """Rejects requests without exactly one valid Host (400, RFC 9112 section 3.2). (Heads
    too large are refused by the server as they arrive: server/limits.py.)

    Adds exactly one Date (RFC 9110 section 6.6.1) and the configured Server to
    responses that lack them; uvicorn's own are switched off. Every response says
    `X-Content-Type-Options: nosniff`: a browser renders a file as the type it is
    served with, never as HTML it guessed from the bytes.
    """

    def __init__(self, app: ASGIApp, *, server: str) -> None:
        self.app = app
        self.server = server.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = host_problem(scope.get("http_version", "1.1"), scope["headers"])
        if problem is not None:
            await self._refuse(send, 400, f"Bad Request: {problem}")
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._complete(message["headers"])}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _complete(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        present = {name for name, _ in headers}  # ASGI: names are lower-case
        extra = []
        if b"date" not in present:
            extra.append((b"date", format_http_date(time.time()).encode()))
        if self.server and b"server" not in present:
            extra.append((b"server", self.server))
        if b"x-content-type-options" not in present:
            extra.append((b"x-content-type-options", b"nosniff"))
        return [*headers, *extra]

    async def _refuse(self, send: Send, status: int, message: str) -> None:
        """A one-line plain-text answer before the app sees the request; the connection closes."""
        body = (message + "\n").encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": self._complete(headers)})
        await send({"type": "http.response.body", "body": body})
