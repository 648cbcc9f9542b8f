"""One HTTP/1.1 connection to the origin (RFC 9112): a request written on an asyncio transport,
its response parsed by httptools (llhttp, the parser uvicorn serves clients with) as the bytes come.

The whole exchange runs in the transport's callbacks and one awaited future at a time: no
stream layers, no per-read task or cancel scope, and no system call to learn that an idle
connection was closed (the loop says so when it is). Errors are httpx's, as the rest of the
origin code expects them.

Framing of the response (RFC 9112 section 6.3): none for 1xx, 204 and 304, nor for an answer to
HEAD; chunked or Content-Length as llhttp reads them; otherwise the body runs to the close of
the connection (and the connection is not reused). A connection is reused only when its response
ended as framed, the origin keeps it (`should_keep_alive`) and nothing came after the response.
A response body waits in memory up to HIGH_WATER bytes; beyond that the transport stops reading
until the reader takes it (flow control, so memory is bounded whatever the body's size).
"""
from __future__ import annotations

import asyncio
import collections
import re
import ssl
from typing import cast

import httptools
import httpx

HIGH_WATER = 256 * 1024  # bytes of a response body held before reading stops
LOW_WATER = 64 * 1024  # ... and starts again below this
NO_BODY_STATUS = frozenset({204, 304})  # RFC 9112 section 6.3, item 1 (and 1xx)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2
_NOT_IN_TARGET = re.compile(rb"[\x00-\x20\x7f-\xff]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")  # RFC 9110 section 5.5: no CR, LF or NUL in a field value
Fields = list[tuple[bytes, bytes]]


class ResponseTimeout(httpx.TimeoutException):
    """No response head within the exchange's response deadline."""


def request_head(method: str, target: bytes, fields: Fields) -> bytes:
    """The request line and fields of a request, as sent; LocalProtocolError for a field that
    cannot be sent as it is (a name that is not a token, a value with CR, LF or NUL). Bytes a
    request target may not hold (controls, space, non-ASCII: RFC 3986 section 2) are
    percent-encoded."""
    if _NOT_IN_TARGET.search(target) is not None:
        target = _NOT_IN_TARGET.sub(lambda m: b"%%%02X" % m[0][0], target)
    lines = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in fields:
        if _TOKEN.fullmatch(name) is None or _BAD_VALUE.search(value) is not None:
            raise httpx.LocalProtocolError(f"a field that cannot be sent: {name!r}")
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def body_framing(method: str, fields: Fields, has_body: bool) -> tuple[Fields, bool]:
    """The fields with the request's framing (RFC 9112 section 6), and whether the body is sent
    chunked: a body of no stated length is chunked; a POST, PUT or PATCH without one says
    Content-Length: 0 (RFC 9110 section 8.6)."""
    names = {name.lower() for name, _ in fields}
    if b"content-length" in names:
        return fields, False
    if b"transfer-encoding" in names:
        return fields, True
    if has_body:
        return [*fields, (b"Transfer-Encoding", b"chunked")], True
    if method in ("POST", "PUT", "PATCH"):
        return [*fields, (b"Content-Length", b"0")], False
    return fields, False


class Connection(asyncio.Protocol):
    """A connection that carries one exchange at a time: `start`, `head`, `read` until b"";
    then `reusable` says whether another exchange may follow on it."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None  # the one read or write waiting
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self._error: Exception | None = None  # what ended the exchange (or the connection)
        self.closed = False
        self.exchanges = 0  # begun on this connection
        self.idle_since = self._loop.time()
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._fields: Fields = []
        self._interim = False  # a 1xx head was read; its end is not the response's
        self._head_done = False
        self._done = False
        self._until_close = False
        self._keep = False
        self._heard = False  # any byte of the response came
        self._head_only = False

    # --- opening and the exchange ---------------------------------------------------
    @classmethod
    async def open(cls, host: str, port: int, ssl_context: ssl.SSLContext | None, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    cls, host, port, ssl=ssl_context, server_hostname=host if ssl_context else None)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"{host}:{port}: no connection within {timeout:g}s") from None
        except (OSError, ssl.SSLError) as e:
            raise httpx.ConnectError(f"{host}:{port}: {e}") from None
        return connection

    def start(self, method: str, head: bytes) -> None:
        """Send a request's head (its body, if any, follows with `send`)."""
        if self._transport is None or self.closed:
            raise httpx.ConnectError("the origin closed the connection")
        self.exchanges += 1
        self._reset()
        self._error = None
        self.rest()  # what the last response's reader left goes
        self._head_only = method == "HEAD"
        self._parser = httptools.HttpResponseParser(self)
        self._transport.write(head)

    async def send(self, pieces: list[bytes], timeout: float) -> None:
        """Write some of the request's body, waiting (up to `timeout`) while the transport's buffer is full."""
        if self._error is not None or self._transport is None or self.closed:
            raise httpx.WriteError("the origin closed the connection") from self._error
        self._transport.writelines(pieces)
        while self._writing_paused and not self.closed:
            await self._wait(timeout, httpx.WriteTimeout("no progress writing to the origin"))

    async def head(self, timeout: float, deadline: float | None = None) -> tuple[int, Fields]:
        """The response's status and fields, once read (1xx heads are skipped). Each wait for bytes
        lasts `timeout` at most; ResponseTimeout past the loop time `deadline`."""
        while not self._head_done:
            if self._error is not None:
                raise self._error
            wait = timeout
            if deadline is not None:
                wait = min(wait, deadline - self._loop.time())
                if wait <= 0:
                    raise ResponseTimeout("no response head in time")
            late = ResponseTimeout("no response head in time") if wait < timeout else None
            await self._wait(wait, late or httpx.ReadTimeout("the origin sent nothing in time"))
        return self._status, self._fields

    async def read(self, timeout: float) -> bytes:
        """The next bytes of the response's body; b"" once it ended."""
        while not self._chunks:
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(timeout, httpx.ReadTimeout("the origin sent nothing in time"))
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered < LOW_WATER and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        return chunk

    @property
    def heard(self) -> bool:
        """Did any byte of the response come?"""
        return self._heard

    @property
    def answered(self) -> bool:
        """Did the response's head come?"""
        return self._head_done

    @property
    def ended(self) -> bool:
        """Did the response end as framed?"""
        return self._done

    @property
    def reusable(self) -> bool:
        return self._done and self._keep and not self.closed and self._error is None

    def rest(self) -> None:
        """Between exchanges: reading goes on (so a close by the origin is seen while idle)."""
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close at once, unsent bytes dropped (an exchange cut short)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    async def _wait(self, timeout: float, expired: Exception) -> None:
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, _expire, waiter, expired)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    # --- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._done:  # bytes nobody asked for: the connection is not reused
            self._keep = False
            self.close()
            return
        self._heard = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the origin switched protocols"))
            self.abort()
        except httptools.HttpParserError as e:
            self._fail(httpx.RemoteProtocolError(f"an answer that is not HTTP/1.1: {e}"))
            self.abort()

    def eof_received(self) -> bool | None:
        return False  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._keep = False
        if self._head_done and not self._done and self._until_close and exc is None:
            self._done = True  # a body that runs to the close (RFC 9112 section 6.3, item 8)
        elif not self._done and self._parser is not None:
            what = "in the middle of the response" if self._head_done else "without a response"
            error = httpx.RemoteProtocolError if self._heard or exc is None else httpx.ReadError
            self._fail(error(f"the origin closed the connection {what}"))
        self._writing_paused = False
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    # --- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._done:  # a second message after the response: never asked for
            self._keep = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_done:  # trailer fields (and a message never asked for) are not the head's
            self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        if self._head_done:  # a message after the response, never asked for: nothing of it is taken
            self._keep = False
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interim, self._fields = True, []  # an interim answer: the final one follows
            return
        self._status, self._head_done = status, True
        if self._head_only or status in NO_BODY_STATUS:
            self._done = True
            self._keep = self._parser.should_keep_alive() and not self._head_only
        else:
            self._until_close = _until_close(self._fields)
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._done:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._done:
            return
        assert self._parser is not None
        self._done = True
        self._keep = self._parser.should_keep_alive()
        self._wake()


def _until_close(fields: Fields) -> bool:
    """Does a response's body (one that has a body) run to the close of the connection: no
    Content-Length, and no Transfer-Encoding whose last coding is chunked (RFC 9112 section 6.3)?"""
    length = chunked = False
    for name, value in fields:
        lowered = name.lower()
        if lowered == b"content-length":
            length = True
        elif lowered == b"transfer-encoding":
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
    return not chunked and not length


def _expire(waiter: asyncio.Future[None], error: Exception) -> None:
    if not waiter.done():
        waiter.set_exception(error)
