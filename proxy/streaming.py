"""ASGI body sending: chunks streamed to the client, stopped at once when it disconnects.

A chunk is bytes, or a FileSpan: bytes of an open stored file, sent with the
server's zero-copy extension (`http.response.zerocopysend`, see server/zerocopy.py)
when the request's scope offers it, else read in a thread and sent as bytes.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from starlette.types import Receive, Scope, Send

from .http.model import ResponsePlan, Span
from .origins.base import BodyAborted, OriginError
from .pagecache import Mapped
from .server.zerocopy import EXTENSION

log = logging.getLogger("edgecache")

FALLBACK_READ = 512 * 1024  # bytes per read when a span must pass through Python
_ABORTED = (BodyAborted, OriginError, OSError)  # a body that fails midway: left incomplete


@dataclass(frozen=True)
class FileSpan:
    """Bytes [offset, offset + count) of an open file. Its producer owns the descriptor, which
    stays open until the consumer asks for the next chunk (or, for a reply's body in hand,
    until the reply is closed)."""

    fd: int
    offset: int
    count: int
    pages: Mapped | None = None  # the file mapped, to ask whether the span is in memory (a block at hand's)


Chunk = bytes | FileSpan
C = TypeVar("C", bytes, Chunk)


def size_of(chunk: Chunk) -> int:
    return chunk.count if isinstance(chunk, FileSpan) else len(chunk)


class Given:
    """Chunks already in hand, as an async iterator (without an async generator's upkeep)."""

    def __init__(self, *chunks: Chunk) -> None:
        self._chunks = iter(chunks)

    def rest(self) -> list[Chunk]:
        """Every chunk not yet taken, at once (their descriptors are not the iterator's to close)."""
        return list(self._chunks)

    def __aiter__(self) -> Given:
        return self

    async def __anext__(self) -> Chunk:
        for chunk in self._chunks:
            return chunk
        raise StopAsyncIteration


async def plan_chunks(plan: ResponsePlan, reader: Callable[[int, int], AsyncIterator[C]]) -> AsyncIterator[C | bytes]:
    """The body of a plan: literal segments as they are, spans [start, end) from the reader."""
    for segment in plan.body:
        if isinstance(segment, Span):
            async for chunk in reader(segment.start, segment.end):
                yield chunk
        else:
            yield segment


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Fields as ASGI sends them: names lower-case (RFC 9110 section 5.1: case-insensitive)."""
    names = _NAMES
    if len(names) > _NAMES_KEPT:
        names.clear()
    out = []
    for n, v in headers:
        name = names.get(n)
        if name is None:
            name = names[n] = n.lower().encode("latin-1")
        out.append((name, v.encode("latin-1")))
    return out


_NAMES: dict[str, bytes] = {}  # field names as sent, encoded: the same few dozen on every response
_NAMES_KEPT = 1024


def multipart_boundary() -> str:
    """A boundary nobody can foresee, so that no stored body can forge a part (RFC 9110 section 14.6)."""
    return secrets.token_hex(12)


def zero_copy(scope: Scope) -> bool:
    """Does the server send files itself for this request?"""
    return EXTENSION in scope.get("extensions", ())


async def send_response(
    status: int,
    headers: list[tuple[str, str]],
    chunks: AsyncIterator[Chunk] | None,
    receive: Receive,
    send: Send,
    zerocopy: bool = False,
    in_hand: bool = False,
) -> None:
    """Send status, headers and the chunks; None or HEAD sends the headers only.

    The client's `http.disconnect` cancels the reads at once (uvicorn would
    otherwise drop our sends silently while we keep reading), unless the whole body is
    `in_hand` (nothing left to wait for). A body that fails midway is not completed, so
    the client sees a truncated response, never a wrong one.
    """
    await send({"type": "http.response.start", "status": status, "headers": encode_headers(headers)})
    if chunks is None:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if isinstance(chunks, Given):
        await send_in_hand(chunks, send, zerocopy)
        return
    if in_hand:  # (a span's descriptor may close once the next chunk is asked for: one at a time)
        try:
            first = await anext(chunks, None)
            second = await anext(chunks, None) if isinstance(first, bytes) else None
        except _ABORTED as e:
            log.warning("response body aborted: %s", e)
            return
        if isinstance(first, bytes) and second is None:  # one message for the whole body
            await send({"type": "http.response.body", "body": first, "more_body": False})
            return
        chunks = _after([c for c in (first, second) if c is not None], chunks)
        if await _send_all(chunks, send, zerocopy):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    with anyio.CancelScope() as reading:
        def gone(_: object) -> None:
            reading.cancel()

        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(gone)
        try:
            complete = await _send_all(chunks, send, zerocopy)
        finally:
            watcher.remove_done_callback(gone)
            watcher.cancel()
        if complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def send_in_hand(chunks: Given, send: Send, zerocopy: bool) -> None:
    """Send a body in hand, after its response's start (each descriptor stays open until the reply
    is closed); a body that fails midway is left incomplete."""
    try:
        await _send_held(chunks.rest(), send, zerocopy)
    except _ABORTED as e:
        log.warning("response body aborted: %s", e)


async def _send_all(chunks: AsyncIterator[Chunk], send: Send, zerocopy: bool) -> bool:
    """Send every chunk; False when the body failed midway (then it must stay incomplete:
    uvicorn closes the connection)."""
    try:
        async for chunk in chunks:
            await _send_chunk(chunk, send, zerocopy, more=True)
    except _ABORTED as e:
        log.warning("response body aborted: %s", e)
        return False
    return True


async def _send_held(chunks: list[Chunk], send: Send, zerocopy: bool) -> None:
    """Send a body in hand: its last message ends the response (no empty message after it)."""
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        await _send_chunk(chunk, send, zerocopy, more=i < last)
    if not chunks:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_chunk(chunk: Chunk, send: Send, zerocopy: bool, *, more: bool) -> None:
    """One chunk: bytes as they are, a span by the server's zero-copy send or read here; the
    response ends with it unless `more`."""
    if isinstance(chunk, bytes):
        await send({"type": "http.response.body", "body": chunk, "more_body": more})
    elif zerocopy:
        await send({"type": EXTENSION, "file": chunk.fd, "offset": chunk.offset, "count": chunk.count,
                    "more_body": more})
    else:
        await _send_read(chunk, send)
        if not more:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _after(taken: list[Chunk], rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in taken:
        yield chunk
    async for chunk in rest:
        yield chunk


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_read(span: FileSpan, send: Send) -> None:
    """A span read in a thread and sent as bytes (no zero-copy here: TLS, or the tests' ASGI client)."""
    pos, end = span.offset, span.offset + span.count
    while pos < end:
        data = await anyio.to_thread.run_sync(os.pread, span.fd, min(FALLBACK_READ, end - pos), pos)
        if not data:
            raise OSError(f"stored file ended {end - pos} bytes early")
        pos += len(data)
        await send({"type": "http.response.body", "body": data, "more_body": True})
