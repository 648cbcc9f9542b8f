"""What the driver hands the server: a status, headers and a body stream, closed once sent."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from ..http.cache import Fwd
from ..http.cachestatus import cache_status
from ..http.directives import Fields, Headers
from ..origins.base import OriginResponse, text_response
from ..streaming import Chunk, FileSpan, size_of


@dataclass(frozen=True)
class Steady:
    """What makes a reply the answer to every identical request, byte for byte (see
    http.cache.steady_until): from `since` until `until`, while the key's change counter at
    `slot` is still `count` (its stored response unchanged, in every process)."""

    since: float
    until: float
    slot: int
    count: int
    hit: str  # the stored response's key, for the hit tally
    varies_on: tuple[str, ...]  # the request fields that selected the stored response
    # The same hit at a later time, while the stored response is unchanged (see Retimed): given
    # the fields of a request asking the same (those the rules read) and that time; None where
    # the answer is no longer this hit's with only its time fields changed.
    renew: Callable[[Fields, float], Retimed | None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Retimed:
    """A steady hit's answer at a later time, for as long as `steady` says: the same answer but
    for the fields time enters (http.cache.steady_until): its Date when the edge dated it
    (None: the stored response's own stays), its Age, and the ttl of its Cache-Status member."""

    steady: Steady
    date: str | None
    age: str
    ttl: int


@dataclass
class Reply:
    """A response to send: chunks None means no body (HEAD, 304); close() when sent."""

    status: int
    headers: Headers
    chunks: AsyncIterator[Chunk] | None
    close: Callable[[], Awaitable[None]]
    literal: int = 0  # chunks of generated text (multipart framing) before the first stored byte
    in_hand: bool = False  # the chunks hold the whole body already: sending it waits for nothing
    whole: bytes | None = None  # the whole body when it is bytes in hand (b"" for none)
    steady: Steady | None = None  # set when identical requests may be answered with this again
    # ... and, for a hit of one span in hand, how the read path answers the same request with another
    # Range: the body, and its Content-Range and Content-Length among the InHand's fields (the rest
    # as this reply's); None: ask the read path. Its second argument: borrow the blocks' descriptors.
    rerange: Callable[[Twin, bool], InHand | None] | None = None


@dataclass
class Twin:
    """A request that asks what a kept hit's request asked but for its Range (Reply.rerange): its
    one Range line (None: none, or several), and its fields, made the first time they are needed."""

    range: str | None
    make: Callable[[], Fields]
    _fields: Fields | None = None

    @classmethod
    def of(cls, lines: Iterable[tuple[bytes, bytes]], make: Callable[[], Fields]) -> Twin:
        """The twin whose header lines (ASGI's: lower-case names) are `lines`."""
        found, count = b"", 0
        for name, value in lines:
            if name == b"range":
                found, count = value, count + 1
        return cls(found.decode("latin-1") if count == 1 else None, make)

    def fields(self) -> Fields:
        if self._fields is None:
            self._fields = self.make()
        return self._fields


@dataclass(frozen=True)
class InHand:
    """A reply's fields and its whole body in hand, as chunks whose descriptors are the receiver's
    to close (close(), once); `borrowed`: they are the block files' own, to be sent before the
    receiver yields to the event loop (OpenBlocks.borrow), and never closed."""

    headers: Headers
    chunks: list[Chunk]
    borrowed: bool = False

    @property
    def length(self) -> int:
        return sum(map(size_of, self.chunks))

    def close(self) -> None:
        if not self.borrowed:
            for chunk in self.chunks:
                if isinstance(chunk, FileSpan):
                    os.close(chunk.fd)

    def kept(self, chunks: list[Chunk]) -> InHand:
        """`chunks` (the rest of this body, once the rest was sent) as a body of its own, to send
        later: its own descriptors (borrowed ones duplicated); those of the chunks sent are closed."""
        if not self.borrowed:
            keep = {chunk.fd for chunk in chunks if isinstance(chunk, FileSpan)}
            for chunk in self.chunks:
                if isinstance(chunk, FileSpan) and chunk.fd not in keep:
                    os.close(chunk.fd)
            return InHand(self.headers, chunks)
        owned: list[Chunk] = []
        try:
            for chunk in chunks:
                owned.append(FileSpan(os.dup(chunk.fd), chunk.offset, chunk.count)
                             if isinstance(chunk, FileSpan) else chunk)
        except BaseException:
            InHand(self.headers, owned).close()
            raise
        return InHand(self.headers, owned)


async def nothing_to_close() -> None:
    return None


def text_reply(status: int, message: str, headers: Headers | None = None) -> Reply:
    text = text_response(status, message, headers)
    return Reply(text.status, text.headers, text.body, text.close)


def relay(response: OriginResponse, method: str, status: str, xcache: str) -> Reply:
    """The origin's response as it is, with our Cache-Status and X-Cache."""
    headers = [*response.headers, ("Cache-Status", status), ("X-Cache", xcache)]
    has_body = method != "HEAD" and response.status not in (204, 304) and response.status >= 200
    return Reply(response.status, headers, response.body if has_body else None, response.close)


def relay_forwarded(response: OriginResponse, method: str, fwd: Fwd, detail: str | None = None) -> Reply:
    """A response to a request forwarded without the cache: MISS, or BYPASS when the cache stood aside."""
    xcache = "BYPASS" if fwd in (Fwd.BYPASS, Fwd.METHOD) else "MISS"
    return relay(response, method, cache_status(fwd=fwd.value, fwd_status=response.status, detail=detail), xcache)
