"""The edge's one ASGI layer in front of its routes: every request passes it once, and every
message of every answer once.

For a request it refuses a Host field that is missing, doubled or not host[:port] (400, RFC
9112 section 3.2), and answers a request that has a ready answer (server/ready.py); any other
goes to the routes. For each answer it adds exactly one Date (RFC 9110 section 6.6.1), the
configured Server and `X-Content-Type-Options: nosniff` (a browser renders a file as the type
it is served with, never as HTML it guessed), keeps the answer when the routes offered it, and
observes it: counted in the metrics and, with an access log, one line (written by another
thread). A 5xx answer is also logged as a warning with the edge's Cache-Status (its `detail`
names what failed); an exception escaping the app is logged with the request it broke.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..http.headers import format_http_date, host_problem
from ..ops.accesslog import Entry, as_json, combined
from ..ops.metrics import RequestMeter
from ..request.client import Network, identify
from ..streaming import zero_copy
from .ready import OFFER, FileAnswer, Offer, Ranged, Ready, ReadyAnswers, asked_of

log = logging.getLogger("edgecache")
_LOGGED = (b"range", b"referer", b"user-agent")


class Front:
    def __init__(self, app: ASGIApp, *, answers: ReadyAnswers | None, unkeyed: Iterable[str], server: str,
                 write: Callable[[str], None] | None, log_format: str, proxies: tuple[Network, ...],
                 forwarded_header: str) -> None:
        self.app = app
        self.answers = answers
        self.unkeyed = frozenset(unkeyed)
        self.server = server.encode("latin-1")
        self.meter = RequestMeter()
        self.write = write
        self.format = as_json if log_format == "json" else combined
        self.proxies = proxies
        self.forwarded_header = forwarded_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, arrived = time.perf_counter(), time.time()
        status, sent, x_cache, cache_status = 0, 0, b"", b""
        kept: list[Message] = []  # the start of an answer offered for keeping

        async def observed(message: Message) -> None:
            nonlocal status, sent, x_cache, cache_status
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
                for name, value in message["headers"]:
                    if name == b"x-cache":
                        x_cache = value
                    elif name == b"cache-status":
                        cache_status = value
            elif kind == "http.response.zerocopysend":
                sent += message.get("count") or 0
            await send(message)

        async def completed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._complete(message["headers"])}
                kept.append(message)
            await observed(message)

        try:
            problem = host_problem(scope.get("http_version", "1.1"), scope["headers"])
            if problem is not None:
                await self._refuse(completed, 400, f"Bad Request: {problem}")
                return
            await self._answer(scope, receive, observed, completed, kept)
        except Exception as e:
            log.error("%s %s from %s failed after %d bytes: %r", scope["method"], _target(scope),
                      self._client(scope), sent, e)
            status = status or 500
            raise
        finally:
            self.meter.record(x_cache, status, sent)
            if self.write is not None or status >= 500:
                self._log(scope, arrived, time.perf_counter() - started, status, sent, x_cache, cache_status)

    async def _answer(self, scope: Scope, receive: Receive, observed: Send, completed: Send,
                      kept: list[Message]) -> None:
        """A ready answer, or the routes' (kept when they offer it)."""
        answers = self.answers
        asked = asked_of(scope) if answers is not None else None
        if answers is None or asked is None:
            await self.app(scope, receive, completed)
            return
        key = answers.key(asked, scope["headers"])
        if key is not None:  # (the fields of kept answers were completed when they were kept)
            now = time.time()
            ready = answers.find(key, now)
            if ready is not None:
                await ready.send(observed)
                return
            ranged = answers.ranged(key, now)
            if ranged is not None and await ranged.send(scope, observed):
                answers.tally(ranged)
                return
        offer = scope[OFFER] = Offer()
        await self.app(scope, receive, completed)
        if offer.steady is not None and kept:
            start = kept[0]
            answers.keep(asked, scope["headers"], offer.read, start["status"], start["headers"], offer.steady,
                         self.unkeyed, body=offer.body, again=offer.again)

    def answer_at_once(self, scope: Scope) -> bytes | FileAnswer | None:
        """The whole response to a request that has a ready answer the server may write itself,
        at once, without an ASGI cycle (server/protocol.py: a keep-alive request with nothing
        before it on its connection), counted and logged as any answer: bytes, or a FileAnswer
        (a ranged answer's, sent with sendfile when the connection allows it); None when the
        request goes the ordinary way. `scope` is the server's, with the request's target filled in."""
        answers = self.answers
        if answers is None:
            return None
        started, arrived = time.perf_counter(), time.time()
        asked = asked_of(scope)
        key = answers.key(asked, scope["headers"]) if asked is not None else None
        if key is None:  # (its key holds the Host lines and the version: it passed the Host check)
            return None
        data: bytes | FileAnswer | None
        ready: Ready | Ranged | None
        exact = answers.current(key, arrived)
        if exact is not None:
            ready, data, sent = exact, exact.written(scope["method"]), exact.body_sent
        else:
            ready = answers.ranged(key, arrived) if zero_copy(scope) else None
            try:
                data = ready.at_once(scope) if ready is not None else None
            except OSError as e:  # a block's mapping, say: the ordinary way answers (and reports) it
                log.warning("%s %s: a ranged answer failed, answered the ordinary way: %s", scope["method"],
                            _target(scope), e)
                return None
            sent = data.length if data is not None else 0
        if data is None or ready is None:
            return None
        answers.tally(ready)
        status, x_cache = ready.status, ready.x_cache
        self.meter.record(x_cache, status, sent)
        if self.write is not None or status >= 500:
            self._log(scope, arrived, time.perf_counter() - started, status, sent, x_cache,
                      ready.field(b"cache-status"))
        return data

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
        """A one-line plain-text answer before the routes see the request; the connection closes."""
        body = (message + "\n").encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _log(self, scope: Scope, arrived: float, duration: float, status: int, sent: int, x_cache: bytes,
             cache_status: bytes) -> None:
        fields = {n: v.decode("latin-1") for n, v in scope["headers"] if n in _LOGGED}
        entry = Entry(arrived, self._client(scope), scope["method"], _target(scope), scope.get("http_version", "1.1"),
                      status, sent, x_cache.decode("latin-1"), fields.get(b"range", ""),
                      fwd_status(cache_status), duration, fields.get(b"referer", ""), fields.get(b"user-agent", ""))
        if self.write is not None:
            self.write(self.format(entry))
        if status >= 500:
            log.warning("%s %s from %s answered %d: cache-status %r, %.3f s", entry.method, entry.target,
                        entry.client, status, cache_status.decode("latin-1"), duration)

    def _client(self, scope: Scope) -> str:
        peer = scope.get("client")
        host = peer[0] if peer else None
        if not self.proxies:
            return host or ""
        client = identify(host, scope.get("scheme", "http"), scope["headers"], self.proxies, self.forwarded_header)
        return client.address or ""


def fwd_status(cache_status: bytes) -> int | None:
    """The `fwd-status` of a Cache-Status value's last member, ours (RFC 9211 section 2.4)."""
    member = cache_status.rpartition(b",")[2]
    at = member.find(b"fwd-status=")
    if at < 0:
        return None
    digits = member[at + 11:at + 14]
    return int(digits) if digits.isdigit() else None


def _target(scope: Scope) -> str:
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    query = scope.get("query_string", b"")
    return (raw + b"?" + query if query else raw).decode("latin-1")
