"""The edge's own short answers: one line of plain text, its reason first."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .limits import Refusal
from .protocol import TIMED_OUT

REASONS = {400: "Bad Request", 408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
           415: "Unsupported Media Type", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           507: "Insufficient Storage"}


def text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def gone(request: Request, when: str) -> Response:
    """The answer to a request whose body stopped: 408 when the server timed it out (the
    connection then closes), else 400 (the client went away: nobody reads it)."""
    timed_out = request.scope.get(TIMED_OUT)
    if isinstance(timed_out, Refusal):
        return text(408, f"Request Timeout: {timed_out.detail}")
    return text(400, f"Bad Request: the client went away {when}")
