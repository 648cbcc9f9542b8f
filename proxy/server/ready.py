"""Ready answers: a hit that every identical request would get again, byte for byte, is kept
for that request and sent again without asking the cache, for as long as nothing it depends
on can have changed (see cache.replies.Steady and http.cache.steady_until).

`Replay` is the ASGI middleware that does it, in front of everything that shapes a response
(the header middleware, the routes, the read path): it keeps the answer as it went out,
when the app offered it (`Offer`, in the scope under OFFER), and sends it again as it is.

An identical request is one with the same method, scheme, HTTP version, path (as received and
decoded), query and header fields, in the same order: everything of a request the edge reads
to answer it, except the client's address. The address reaches the answer only through the
forwarding fields the edge sets (X-Forwarded-For, Forwarded, ...), so an answer whose stored
response was selected by one of those (Vary) is never kept.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..cache.replies import Steady
from .zerocopy import HEAD_KEY, EncodedHead, encoded_head

READY_BYTES = 8 * 1024**2  # bound on the answers kept, per process (they live a second at most)
SEEN = 8192  # requests remembered (by hash) as asked once: an answer is kept when asked again
OFFER = "edgecache.ready"  # the scope key of a request's Offer

# method, scheme, HTTP version, root path, path, raw path, query, header fields
RequestKey = tuple[str, str, str | None, str, str, bytes | None, bytes | None, tuple[tuple[bytes, bytes], ...]]


@dataclass
class Ready:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    steady: Steady
    size: int  # approximate bytes held (the encoded head included)
    head: EncodedHead | None = None  # the headers as the server writes them, once sent again
    encoded: bool = False  # `head` worked out (an answer never asked for again never pays for it)

    async def send(self, send: Send) -> None:
        if not self.encoded:
            self.head, self.encoded = encoded_head(self.headers), True
        start = {"type": "http.response.start", "status": self.status, "headers": self.headers}
        if self.head is not None:
            start[HEAD_KEY] = self.head
        await send(start)
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def request_key(scope: Scope) -> RequestKey | None:
    """What identifies a request among identical ones (None: one that is never answered ready)."""
    key: RequestKey = (scope["method"], scope.get("scheme", "http"), scope.get("http_version"),
                       scope.get("root_path", ""), scope["path"], scope.get("raw_path"), scope.get("query_string"),
                       tuple(scope["headers"]))
    try:
        hash(key)
    except TypeError:  # header pairs as lists (ASGI allows any iterable pair): not hashable
        return None
    return key


_FIELD = 100  # bytes a header field takes beyond its name and value (a tuple, two bytes objects)


def _fields_size(fields: Iterable[tuple[bytes, bytes]]) -> int:
    """Approximate bytes held by header fields (one C-level join, not a loop: this runs for
    every answer kept)."""
    fields = tuple(fields)
    return len(fields) * _FIELD + len(b"".join(chain.from_iterable(fields)))


def _key_size(key: RequestKey) -> int:
    *parts, headers = key
    return 200 + sum(len(p) for p in parts if p is not None) + _fields_size(headers)


class ReadyAnswers:
    """Answers kept by request, at most READY_BYTES of them; the oldest go first. An answer is
    kept the second time its request comes (within the last SEEN requests offered): a request
    asked once, the usual case for a client's own header fields, costs a hash, not a copy."""

    def __init__(self, changes_at: Callable[[int], int], hit: Callable[[str], None],
                 max_bytes: int = READY_BYTES) -> None:
        self._changes_at = changes_at
        self._hit = hit
        self._max_bytes = max_bytes
        self._answers: dict[RequestKey, Ready] = {}
        self._bytes = 0
        self._seen: dict[int, None] = {}  # hashes of requests offered once, oldest first

    def find(self, key: RequestKey, now: float) -> Ready | None:
        """The answer kept for this request, if it is still the answer at `now` (a hit, tallied)."""
        ready = self._answers.get(key)
        if ready is None:
            return None
        steady = ready.steady
        if steady.since <= now < steady.until and self._changes_at(steady.slot) == steady.count:
            self._hit(steady.hit)
            return ready
        self._drop(key)
        return None

    def keep(self, key: RequestKey, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
             steady: Steady, unkeyed: Iterable[str]) -> None:
        """Keep an answer for identical requests, unless the client's address may have selected it
        (its stored response varies on a field in `unkeyed`, which the edge sets) or it is large."""
        if not set(steady.varies_on).isdisjoint(unkeyed) or not self._asked_again(key):
            return
        size = _key_size(key) + len(body) + 2 * _fields_size(headers)  # the list, and its encoded block
        if size > self._max_bytes // 64:  # room for many small answers, not a few large ones
            return
        self._drop(key)
        self._answers[key] = Ready(status, headers, body, steady, size)
        self._bytes += size
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._answers)))

    def _asked_again(self, key: RequestKey) -> bool:
        """Was this request offered before (lately)? Remembers it if not. A hash shared by two
        requests only keeps an answer sooner: that is never wrong, only a copy spent."""
        seen = self._seen
        digest = hash(key)
        if digest in seen:
            return True
        seen[digest] = None
        if len(seen) > SEEN:
            del seen[next(iter(seen))]
        return False

    def _drop(self, key: RequestKey) -> None:
        ready = self._answers.pop(key, None)
        if ready is not None:
            self._bytes -= ready.size


class Offer:
    """Set by the app when the answer it sends may be kept for identical requests: what makes
    it steady, and its whole body."""

    steady: Steady | None = None
    body: bytes = b""


class Replay:
    """ASGI middleware: a request with a ready answer gets it; any other goes to the app, and
    the answer it sends is kept if the app offered it."""

    def __init__(self, app: ASGIApp, answers: ReadyAnswers, unkeyed: Iterable[str]) -> None:
        self.app = app
        self.answers = answers
        self.unkeyed = frozenset(unkeyed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = request_key(scope) if scope["type"] == "http" else None
        if key is None:
            await self.app(scope, receive, send)
            return
        ready = self.answers.find(key, time.time())
        if ready is not None:
            await ready.send(send)
            return
        offer = scope[OFFER] = Offer()
        started: list[Message] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.append(message)
            await send(message)

        await self.app(scope, receive, sending)
        if offer.steady is not None and started:
            start = started[0]
            self.answers.keep(key, start["status"], start["headers"], offer.body, offer.steady, self.unkeyed)
