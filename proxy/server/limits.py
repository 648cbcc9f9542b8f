"""What a connection may cost the edge, and when a client has had its time. Pure: the protocol
(server/protocol.py) feeds it bytes and times, and carries out what it decides.

A request head is counted as its bytes arrive, before the parser holds them (one header line
of 500 MB never reaches memory); a client that sends its head slowly, stops sending its body,
or stops taking the response is cut off when its time is up, as nginx's
`client_header_timeout`, `client_body_timeout` and `send_timeout` do.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import formatdate

from ..config import Settings

# The refusals, as the metrics label them.
HEAD_TOO_LARGE = "head_too_large"
TARGET_TOO_LONG = "target_too_long"
TOO_MANY_FIELDS = "too_many_fields"
HEAD_TIMEOUT = "head_timeout"
BODY_TIMEOUT = "body_timeout"
SEND_TIMEOUT = "send_timeout"
TOO_MANY_CONNECTIONS = "too_many_connections"
TOO_MANY_FROM_CLIENT = "too_many_from_client"
TOO_DEEP_PIPELINE = "too_deep_pipeline"
REFUSALS = (HEAD_TOO_LARGE, TARGET_TOO_LONG, TOO_MANY_FIELDS, HEAD_TIMEOUT, BODY_TIMEOUT, SEND_TIMEOUT,
            TOO_MANY_CONNECTIONS, TOO_MANY_FROM_CLIENT, TOO_DEEP_PIPELINE)


@dataclass(frozen=True)
class Limits:
    """A worker's limits on each connection (from Settings: see the configuration reference)."""

    head_bytes: int = 16 * 1024
    head_fields: int = 100
    head_timeout: float = 10.0
    body_timeout: float = 20.0
    body_min_rate: int = 256
    send_timeout: float = 60.0
    connections: int = 4096
    per_client: int = 0  # 0: no limit
    pipelined: int = 16
    server: bytes = b"edgecache"

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(head_bytes=settings.max_header_bytes, head_fields=settings.max_header_count,
                   head_timeout=settings.client_header_timeout, body_timeout=settings.client_body_timeout,
                   body_min_rate=settings.client_body_min_rate, send_timeout=settings.send_timeout,
                   connections=settings.max_connections, per_client=settings.max_connections_per_client,
                   pipelined=settings.max_pipelined_requests, server=settings.server_name.encode("latin-1"))


@dataclass(frozen=True)
class Refusal:
    """A request or connection the edge will not serve: a status (0: closed without an answer),
    the metrics label, and what the client and the log are told."""

    status: int
    reason: str
    detail: str


_END = b"\r\n\r\n"  # a head ends with an empty line (RFC 9112 section 2.1)


class HeadMeter:
    """Counts the bytes of the request head being received, as they arrive.

    The head starts when the previous message ended (`begin`), and ends when the parser says
    so (`end`). A read that holds the end of the head counts only up to it: the rest is body
    or the next request. A pipelined head that starts inside a read is counted from the next
    read (the parser has the rest of that read, at most one read more than the limit).
    """

    __slots__ = ("limit", "active", "count", "line", "_tail")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = True
        self.count = 0  # bytes of this head so far
        self.line: int | None = None  # the request line's length, once it ended (too long: 414, not 431)
        self._tail = b""  # the last bytes of the previous read of this head (an end split over two reads)

    def begin(self) -> None:
        self.active, self.count, self.line, self._tail = True, 0, None, b""

    def end(self) -> None:
        self.active = False

    def feed(self, data: bytes) -> Refusal | None:
        """Count a read; a Refusal once the head is over the limit."""
        if not self.active:
            return None
        tail = self._tail
        at = (tail + data[:3]).find(_END) if tail else -1
        if at >= 0:
            taken = at + 4 - len(tail)
        else:
            at = data.find(_END)
            taken = len(data) if at < 0 else at + 4
        if self.line is None:
            end = data.find(b"\n", 0, taken)
            if end >= 0:
                self.line = self.count + end + 1
        self.count += taken
        self._tail = b"" if at >= 0 else data[-3:] if len(data) >= 3 else (tail + data)[-3:]
        if self.count <= self.limit:
            return None
        if self.line is None or self.line > self.limit:
            return Refusal(414, TARGET_TOO_LONG, f"the request line is over {self.limit} bytes (max_header_bytes)")
        return Refusal(431, HEAD_TOO_LARGE, f"the request head is over {self.limit} bytes (max_header_bytes)")


@dataclass
class BodyClock:
    """When a client that is sending a request body has had its time (RFC 9110 section 15.5.9,
    408): no body bytes for `timeout` seconds, or, with a `min_rate`, fewer than `min_rate`
    bytes a second after the first `timeout` seconds (a client dripping one byte at a time
    never lets the first rule fire). Time while the edge itself is not reading (the app has
    not taken what came) does not count."""

    timeout: float
    min_rate: int
    since: float  # when the wait for the body began, or the edge last paused reading
    last: float  # when body bytes last came
    received: int = 0  # bytes since `since`

    def arrived(self, now: float, count: int) -> None:
        self.last = now
        self.received += count

    def held(self, now: float) -> None:
        """The edge is not reading: the client's time starts again when it does."""
        self.since = self.last = now
        self.received = 0

    def expired(self, now: float) -> bool:
        if now - self.last > self.timeout:
            return True
        return self.min_rate > 0 and now - self.since > self.timeout + self.received / self.min_rate


def refusal_bytes(refusal: Refusal, server: bytes, now: float | None = None) -> bytes:
    """The whole response the protocol writes for a refusal, before or instead of the app's:
    plain text, Date (RFC 9110 section 6.6.1), Server, and `Connection: close`."""
    body = (refusal.detail + "\n").encode()
    date = formatdate(time.time() if now is None else now, usegmt=True).encode()
    lines = [b"HTTP/1.1 %d %s\r\n" % (refusal.status, _PHRASES[refusal.status]),
             b"content-type: text/plain; charset=utf-8\r\n", b"content-length: %d\r\n" % len(body),
             b"connection: close\r\n", b"date: " + date + b"\r\n",
             *([b"server: " + server + b"\r\n"] if server else []), b"x-content-type-options: nosniff\r\n",
             *([b"retry-after: 1\r\n"] if refusal.status == 503 else []), b"\r\n", body]
    return b"".join(lines)


_PHRASES = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}
