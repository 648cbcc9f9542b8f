"""Ready answers: a hit that every request asking the same of the edge would get again, byte for
byte, is kept and sent again without asking the cache, for as long as nothing it depends on can
have changed (see cache.replies.Steady and http.cache.steady_until). Past that time, with its
stored response unchanged, the read path's rules decide again on the key's own field lines
(Steady.renew): while that is still a fresh hit, the answer goes on with new time fields
(`retimed_fields`: Age, Cache-Status ttl, and Date when the edge dated it).

The edge's front layer (server/front.py) does it, in front of everything that shapes a response
(the routes, the read path): it keeps the answer as it went out, when the routes offered it
(`Offer`, in the scope under OFFER), and sends it again as it is.

Which requests ask the same: those with the same method, scheme, HTTP version, path (as received
and decoded), query and Host lines, and the same lines of every header field the rules that made
the answer read. The read path records the fields its rules read (`Fields.reads`: every rule
reads a request's fields through `directives.get`) and the Vary fields that selected the stored
response; for one path, answers are keyed by the values of the union of what was read for it.
A request whose values agree on that union makes the rules take the same steps, read the same
values, and decide the same answer: a User-Agent, a cookie or a Referer of its own (read by no
rule) does not make a request another. Never kept: an answer that read a field the edge sets
itself (X-Forwarded-For, ...: the request's own value is not what the rules saw), and requests
with a body.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain

from starlette.types import Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from ..cache.replies import InHand, Retimed, Steady
from ..http.directives import Fields
from ..streaming import Given, send_in_hand, zero_copy
from .zerocopy import HEAD_KEY, EncodedHead, encoded_head, encoded_line, has_body

READY_BYTES = 8 * 1024**2  # bound on the answers kept, per process
SEEN = 8192  # requests remembered (by hash) as asked once: an answer is kept when asked again
OFFER = "edgecache.ready"  # the scope key of a request's Offer

# What every request asking the same of the edge has in common: method, scheme, HTTP version,
# root path, path, raw path, query, and its Host lines.
Asked = tuple[str, str, str | None, str, str, bytes | None, bytes | None, tuple[bytes, ...]]
# ... and its lines of the fields the answer's rules read, in the order of their names (a ranged
# answer's key has None for its Range lines: it answers any Range).
RequestKey = tuple[Asked, tuple[tuple[bytes, ...] | None, ...]]
_BODY = (b"content-length", b"transfer-encoding")


@dataclass
class Ready:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    steady: Steady
    size: int  # approximate bytes held (the encoded head included)
    head: EncodedHead | None = None  # the headers as the server writes them, once sent again
    encoded: bool = False  # `head` worked out (an answer never asked for again never pays for it)

    wire: bytes | None = None  # the whole response as the server writes it (see `written`)
    wired: bool = False  # `wire` worked out
    body_sent: int = 0  # body bytes in `wire`
    x_cache: bytes = dataclasses.field(init=False, repr=False)  # its X-Cache (b"" when absent), asked of each answer

    def __post_init__(self) -> None:
        self.x_cache = field_of(self.headers, b"x-cache")

    async def send(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status, "headers": self.headers}
        head = self.encoded_head()
        if head is not None:
            start[HEAD_KEY] = head
        await send(start)
        await send({"type": "http.response.body", "body": self.body, "more_body": False})

    def encoded_head(self) -> EncodedHead | None:
        if not self.encoded:
            self.head, self.encoded = encoded_head(self.headers), True
        return self.head

    def written(self, method: str) -> bytes | None:
        """The bytes of the whole response as the server writes it on a keep-alive connection
        (status line, head, body), for the server to write itself at once; None when its head
        is one the server must see (server/zerocopy.py) or its length does not frame its body."""
        if not self.wired:
            self.wire, self.wired = self._wire(method), True
        return self.wire

    def _wire(self, method: str) -> bytes | None:
        head = self.encoded_head()
        status_line = STATUS_LINE.get(self.status)
        if head is None or status_line is None:
            return None
        if not has_body(method, self.status):
            return status_line + head.block + b"\r\n"
        if head.length != len(self.body):
            return None
        self.body_sent = len(self.body)
        return status_line + head.block + b"\r\n" + self.body

    def field(self, name: bytes) -> bytes:
        """The value of one of its fields (b"" when absent), as the edge's observation reads it."""
        return field_of(self.headers, name)

    def retimed(self, retimed: Retimed) -> Ready | None:
        """This answer at a later time (Steady.renew); None when its fields are not a hit's."""
        headers = retimed_fields(self.headers, retimed)
        return None if headers is None else Ready(self.status, headers, self.body, retimed.steady, self.size)


def field_of(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    """The value of one of a kept answer's fields (b"" when absent)."""
    return next((value for field_name, value in headers if field_name == name), b"")


_SPAN_FIELDS = {"content-range": b"content-range", "content-length": b"content-length"}
_SPAN_NAMES = tuple(_SPAN_FIELDS.values())
_RANGE = b"range"


@dataclass
class Ranged:
    """A hit of one span, kept for the requests that ask the same but for their Range: each is
    answered by the read path's `again` (replies.Reply.rerange, given the request's scope), sent
    with the fields this answer went out with, its Content-Range and Content-Length changed."""

    status: int
    headers: list[tuple[bytes, bytes]]
    steady: Steady
    again: Callable[[Scope, bool], InHand | None]
    size: int  # approximate bytes held
    _template: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None = None  # see _encoded, once worked out
    x_cache: bytes = dataclasses.field(init=False, repr=False)  # its X-Cache (b"" when absent), asked of each answer

    def __post_init__(self) -> None:
        self.x_cache = field_of(self.headers, b"x-cache")

    def field(self, name: bytes) -> bytes:
        """The value of one of its fields (b"" when absent), as the edge's observation reads it."""
        return field_of(self.headers, name)

    async def send(self, scope: Scope, send: Send) -> bool:
        """Answer the request of `scope`; False (nothing sent) when the read path must."""
        body = self.again(scope, False)
        if body is None:
            return False
        try:
            await send({"type": "http.response.start", "status": self.status, "headers": self._fields(body)})
            await send_in_hand(Given(*body.chunks), send, zero_copy(scope))
        finally:
            body.close()
        return True

    def at_once(self, scope: Scope) -> FileAnswer | None:
        """The answer to the request of `scope` for the server to write itself, at once (its head
        as the server writes it on a keep-alive connection, server/zerocopy.py); None when the read
        path must answer, or the server must see the head."""
        if self._template is None:
            self._template = self._encoded()
        fixed, names = self._template
        if not fixed:
            return None
        body = self.again(scope, True)  # (the server sends what it can at once, and keeps the rest)
        if body is None:
            return None
        span, length = _span(body), body.length
        sent = span[b"content-length"]
        if not sent.isdigit() or int(sent) != length:
            body.close()
            return None
        parts = [fixed[0]]
        for name, after in zip(names, fixed[1:], strict=True):
            parts += (b"%s: %s\r\n" % (name, span[name]), after)
        return FileAnswer(b"".join(parts), body, length)

    def _encoded(self) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        """Its head as the server writes it, cut where its Content-Range and Content-Length lines
        go (each answer's own): the bytes before, between and after them, and their names in
        order; ((), ()) when the server must see its fields (or its status)."""
        fixed, names, lines = [], [], [STATUS_LINE.get(self.status, b"")]
        for name, value in self.headers:
            low = name.lower()
            if low in _SPAN_NAMES:
                fixed.append(b"".join(lines))
                names.append(low)
                lines = []
                continue
            line = encoded_line(name, value)
            if line is None:
                return (), ()
            lines.append(line)
        fixed.append(b"".join(lines) + b"\r\n")
        if self.status not in STATUS_LINE or names.count(b"content-length") != 1:
            return (), ()
        return tuple(fixed), tuple(names)

    def _fields(self, body: InHand) -> list[tuple[bytes, bytes]]:
        span = _span(body)
        return [(name, span.get(name.lower(), value)) for name, value in self.headers]

    def retimed(self, retimed: Retimed) -> Ranged | None:
        """This answer at a later time (Steady.renew); None when its fields are not a hit's."""
        headers = retimed_fields(self.headers, retimed)
        return None if headers is None else Ranged(self.status, headers, retimed.steady, self.again, self.size)


_TTL = re.compile(rb"(;[ \t]*ttl=)-?[0-9]+")


def retimed_fields(headers: list[tuple[bytes, bytes]], retimed: Retimed) -> list[tuple[bytes, bytes]] | None:
    """A kept hit's fields at a later time: its Age, its Date when the edge dated it, and the ttl of
    the last Cache-Status member (the edge's own: RFC 9211 section 2) as `retimed` says, the rest
    as they are; None when one of those is missing (it was not a hit)."""
    out, found = [], 0
    for name, value in headers:
        low = name.lower()
        if low == b"age":
            value, found = retimed.age.encode("latin-1"), found | 1
        elif low == b"cache-status":
            before, comma, own = value.rpartition(b",")
            own, changes = _TTL.subn(lambda m: m.group(1) + b"%d" % retimed.ttl, own, count=1)
            value, found = before + comma + own, found | (2 if changes else 0)
        elif low == b"date" and retimed.date is not None:
            value, found = retimed.date.encode("latin-1"), found | 4
        out.append((name, value))
    return out if found == (7 if retimed.date is not None else 3) else None


def _span(body: InHand) -> dict[bytes, bytes]:
    """The values of Content-Range and Content-Length of an answer in hand (b"" when absent; the
    lines of one joined, as directives.get joins them), in one pass over its few fields."""
    found: dict[bytes, list[str]] = {}
    for name, value in body.headers:
        low = _SPAN_FIELDS.get(name.lower())
        if low is not None:
            found.setdefault(low, []).append(value)
    return {b"content-range": ", ".join(found.get(b"content-range", ())).encode("latin-1"),
            b"content-length": ", ".join(found.get(b"content-length", ())).encode("latin-1")}


@dataclass(frozen=True)
class FileAnswer:
    """A response for the server to write at once: its head, then its body's chunks (bytes, and
    spans of files to send with sendfile; see InHand for their descriptors)."""

    head: bytes
    body: InHand
    length: int  # the body's bytes


def asked_of(scope: Scope) -> Asked | None:
    """What a request has in common with every one asking the same (None: never answered ready:
    it has a body, or header pairs that are not bytes)."""
    hosts = []
    for name, value in scope["headers"]:
        if name == b"host":
            hosts.append(value)
        elif name in _BODY:
            return None
    asked: Asked = (scope["method"], scope.get("scheme", "http"), scope.get("http_version"),
                    scope.get("root_path", ""), scope["path"], scope.get("raw_path"), scope.get("query_string"),
                    tuple(hosts))
    try:
        hash(asked)
    except TypeError:
        return None
    return asked


def lines_of(headers: Iterable[tuple[bytes, bytes]], names: tuple[bytes, ...]) -> tuple[tuple[bytes, ...], ...]:
    """A request's lines of each of `names` (lower-case), in their order."""
    found: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if name in names:
            found.setdefault(name, []).append(value)
    return tuple([tuple(found[name]) if name in found else () for name in names])  # (no generator: a hit's path)


_FIELD = 100  # bytes a header field takes beyond its name and value (a tuple, two bytes objects)


def _fields_size(fields: Iterable[tuple[bytes, bytes]]) -> int:
    """Approximate bytes held by header fields (one C-level join, not a loop: this runs for
    every answer kept)."""
    fields = tuple(fields)
    return len(fields) * _FIELD + len(b"".join(chain.from_iterable(fields)))


def _key_size(key: RequestKey) -> int:
    (*parts, hosts), lines = key
    return 200 + sum(len(p) for p in parts if p is not None) + len(b"".join(hosts)) + \
        len(b"".join(chain.from_iterable(line for line in lines if line is not None))) + _FIELD * len(lines)


def _any_range(key: RequestKey, names: tuple[bytes, ...]) -> RequestKey | None:
    """A request's key (its lines those of `names`) as a ranged answer's: its Range lines None; None
    when Range is not one of the names."""
    if _RANGE not in names:
        return None
    at = names.index(_RANGE)
    asked, lines = key
    return asked, (*lines[:at], None, *lines[at + 1:])


class ReadyAnswers:
    """Answers kept by what their requests asked, at most READY_BYTES of them; the oldest go
    first. An answer is kept the second time its request comes (within the last SEEN requests
    offered): a request asked once costs a hash, not a copy."""

    def __init__(self, changes_at: Callable[[int], int], hit: Callable[[str], None],
                 max_bytes: int = READY_BYTES) -> None:
        self._changes_at = changes_at
        self._hit = hit
        self._max_bytes = max_bytes
        self._answers: dict[RequestKey, Ready | Ranged] = {}
        self._read: dict[Asked, tuple[bytes, ...]] = {}  # what the rules read for a path, so far
        self._kept: dict[Asked, set[RequestKey]] = {}  # the answers kept for a path
        self._bytes = 0
        self._seen: dict[int, None] = {}  # hashes of requests offered once, oldest first

    def key(self, asked: Asked, headers: Iterable[tuple[bytes, bytes]]) -> RequestKey | None:
        """The key of a request, when answers were kept for what it asks (else None)."""
        names = self._read.get(asked)
        return None if names is None else (asked, lines_of(headers, names))

    def find(self, key: RequestKey, now: float) -> Ready | None:
        """The answer kept for this request, if it is still the answer at `now` (a hit, tallied)."""
        ready = self.current(key, now)
        if ready is not None:
            self.tally(ready)
        return ready

    def current(self, key: RequestKey, now: float) -> Ready | None:
        """The answer kept for this request, if it is still the answer at `now` (not tallied)."""
        ready = self._holding(key, now)
        return ready if isinstance(ready, Ready) else None

    def ranged(self, key: RequestKey, now: float) -> Ranged | None:
        """The ranged answer kept for this request (`key` its own), if it still holds at `now`:
        asked of it (Ranged.send), it answers this request whatever its Range (not tallied)."""
        names = self._read.get(key[0], ())  # (gone if the answer just found no longer held)
        any_range = _any_range(key, names)
        ranged = self._holding(any_range, now) if any_range is not None else None
        return ranged if isinstance(ranged, Ranged) else None

    def _holding(self, key: RequestKey, now: float) -> Ready | Ranged | None:
        kept = self._answers.get(key)
        if kept is None:
            return None
        steady = kept.steady
        if self._changes_at(steady.slot) == steady.count:
            if steady.since <= now < steady.until:
                return kept
            renewed = self._renewed(key, kept, now) if now >= steady.until else None
            if renewed is not None:
                self._answers[key] = renewed  # (its size is the same)
                return renewed
        self._drop(key)
        return None

    def _renewed(self, key: RequestKey, kept: Ready | Ranged, now: float) -> Ready | Ranged | None:
        """The answer kept under `key`, its stored response unchanged, at `now`, past its steady
        time: the read path's rules decide again on the key's own lines (Steady.renew), and they
        must read no other field (a ranged answer's key has no Range: they must not read it)."""
        renew = kept.steady.renew
        if renew is None:
            return None
        asked, lines = key
        names = self._read.get(asked, ())
        if len(names) != len(lines):
            return None
        pairs, known = [], set()
        for name, values in zip(names, lines, strict=True):
            if values is not None:
                text = name.decode("latin-1")
                known.add(text)
                pairs += [(text, value.decode("latin-1")) for value in values]
        fields = Fields(pairs)
        fields.reads = set()
        retimed = renew(fields, now)
        if retimed is None or not fields.reads <= known:
            return None
        return kept.retimed(retimed)

    def tally(self, ready: Ready | Ranged) -> None:
        """An answer given: a hit of its stored response."""
        self._hit(ready.steady.hit)

    def keep(self, asked: Asked, request: Iterable[tuple[bytes, bytes]], read: Iterable[str], status: int,
             headers: list[tuple[bytes, bytes]], steady: Steady, unkeyed: Iterable[str], body: bytes | None = None,
             again: Callable[[Scope, bool], InHand | None] | None = None) -> None:
        """Keep an answer for the requests that ask the same (see the module's docstring): as it is
        (its whole `body`), and as a Ranged answer for those that ask the same but for their Range
        (`again`); unless the rules read a field the edge sets (`unkeyed`) or it is large."""
        used = {*read, *steady.varies_on}
        if not used.isdisjoint(unkeyed):
            return
        names = self._read.get(asked, ())
        union = tuple(sorted({*names, *(name.encode("latin-1") for name in used)}))
        if union != names:  # answers kept under fewer names are no longer found: they go
            for old in list(self._kept.get(asked, ())):
                self._drop(old)
        lines = lines_of(request, union)
        fields = 2 * _fields_size(headers)  # the list, and its encoded block
        if body is not None:
            key: RequestKey = (asked, lines)
            self._add(key, union, _key_size(key) + len(body) + fields,
                      lambda size: Ready(status, headers, body, steady, size))
        any_range = _any_range((asked, lines), union) if again is not None else None
        if again is not None and any_range is not None:
            self._add(any_range, union, _key_size(any_range) + fields,
                      lambda size: Ranged(status, headers, steady, again, size))

    def _add(self, key: RequestKey, union: tuple[bytes, ...], size: int, made: Callable[[int], Ready | Ranged]) -> None:
        """Keep an answer under `key` (its lines those of `union`) if it was offered before and is not large."""
        if not self._asked_again(key) or size > self._max_bytes // 64:  # room for many small answers
            return
        asked = key[0]
        self._drop(key)
        self._read[asked] = union
        self._kept.setdefault(asked, set()).add(key)
        self._answers[key] = made(size)
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
        if ready is None:
            return
        self._bytes -= ready.size
        asked = key[0]
        kept = self._kept[asked]
        kept.discard(key)
        if not kept:  # nothing kept for the path: what was read for it is forgotten too (bounded)
            del self._kept[asked], self._read[asked]


@dataclass
class Offer:
    """Set by the app when the answer it sends may be kept: what makes it steady, its whole body
    (when in hand) and how another Range is answered (`again`, a hit of one span), and the request
    fields its rules read (the read path records them in `read`)."""

    steady: Steady | None = None
    body: bytes | None = None
    again: Callable[[Scope, bool], InHand | None] | None = None
    read: set[str] = dataclasses.field(default_factory=set)
