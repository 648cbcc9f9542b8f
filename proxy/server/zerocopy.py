"""uvicorn's httptools protocol with the ASGI `http.response.zerocopysend` extension.

Stored blocks are regular files: a response can send them with `sendfile(2)`, from
the page cache to the socket, without their bytes passing through Python. uvicorn
implements no zero-copy send on HTTP/1.1 but takes a protocol class (`http=`);
this one advertises the extension in every plain-HTTP request's scope and carries
it out:

- the status line and headers uvicorn has buffered are flushed first, so bytes go
  out in order; the socket stays non-blocking: a call sends what fits, and the event
  loop polls a duplicate of its descriptor for room (it refuses to poll the one the
  transport owns); a wait for room ends when the connection is lost;
- a span whose every page is in memory and up to date (`pagecache.resident`) is sent
  on the event loop itself, at most ON_LOOP bytes a call, with a turn for the other
  connections between calls: the call only copies, and on the loop, while the
  transport is not closing, nothing can close either descriptor under it;
- any other span is sent from a small pool of threads of its own (its pages may have
  to come from the disk, and that wait must not hold the event loop), each call on
  duplicates of both descriptors that it owns and closes (a cancelled wait cannot
  stop a call a thread has begun, and the numbers may meanwhile name another
  client's socket or file);
- Content-Length is accounted as for body messages, chunked framing written around
  the span; a file shorter than announced is an error, never a short response
  presented as complete; a client gone mid-send ends the response as uvicorn does
  for ordinary sends.

Over TLS (the kernel cannot encrypt what sendfile moves) the extension is not
offered, and the app falls back to ordinary sends.

A response head is written by the protocol itself, exactly the bytes uvicorn would write:
from lines checked once and remembered (`encoded_head`: a hit's fields repeat from one
response to the next), or from a block encoded and checked once (under HEAD_KEY: a ready
answer sent again, server/ready.py). Where uvicorn would add anything (its own default
headers, `connection: close`, chunked framing, an access log line), or the headers are not
a list of bytes pairs, the head goes the ordinary way.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import re
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from .. import pagecache

EXTENSION = "http.response.zerocopysend"
HEAD_KEY = "edgecache.head"  # a start message's EncodedHead
SENDFILE_THREADS = 4
MAX_PER_CALL = 8 * 1024**2  # bytes one sendfile call in a thread may move (at most what the socket takes)
ON_LOOP = 1024**2  # ... and one on the event loop: a bound on one turn of the loop
GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN)
_pool = ThreadPoolExecutor(max_workers=SENDFILE_THREADS, thread_name_prefix="edgecache-sendfile")


# RFC 9110 section 5.1 (a field name is a token) and 5.5 (no CTLs but HTAB in a value): what
# uvicorn refuses too. Framing and connection fields are the server's to write.
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
_SERVERS_OWN = frozenset({b"connection", b"transfer-encoding"})


@dataclass(frozen=True)
class EncodedHead:
    block: bytes  # every "name: value\r\n"
    length: int | None  # the Content-Length, if there is one


def encoded_head(headers: list[tuple[bytes, bytes]]) -> EncodedHead | None:
    """The header block as uvicorn writes it, or None for headers it must see itself."""
    lines = []
    length = None
    known = _LINES
    for name, value in headers:
        try:
            line = known.get((name, value))
        except TypeError:  # not bytes (a bytearray, say): uvicorn's own path takes it
            return None
        if line is None:
            line = encoded_line(name, value)
            if line is None:
                return None
            if len(name) + len(value) <= _LINE_KEPT:
                if len(known) >= _LINES_KEPT:
                    known.clear()
                known[name, value] = line
        if len(name) == 14 and line[:16] == b"content-length: ":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        lines.append(line)
    return EncodedHead(b"".join(lines), length)


def encoded_line(name: bytes, value: bytes) -> bytes | None:
    """One field's line, checked as uvicorn checks it; None for a field it must see itself."""
    name = name.lower()
    if not _NAME.fullmatch(name) or not _VALUE.fullmatch(value) or name in _SERVERS_OWN:
        return None
    return b"%s: %s\r\n" % (name, value)


# Checked lines of the fields responses repeat (most of a hit's: its stored fields, Date within a
# second, the edge's own): a dict lookup each instead of two regular expressions. Bounded in entries
# and, through the length of what is kept, in bytes.
_LINES: dict[tuple[bytes, bytes], bytes] = {}
_LINES_KEPT = 4096
_LINE_KEPT = 256


class ShortFile(OSError):
    """The file ended before the bytes the message asked for."""


class ZeroCopyProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose requests may send files with `http.response.zerocopysend`."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.transport.get_extra_info("sslcontext") is None:
            self.scope["extensions"] = {EXTENSION: {}}

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if isinstance(self.cycle, ZeroCopyCycle):
            self.cycle.lost()

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before and type(self.cycle) is RequestResponseCycle:
            # uvicorn builds its own cycle class; ours only adds one message type to `send`.
            self.cycle.__class__ = self.cycle_class

    cycle_class: type[RequestResponseCycle]  # ZeroCopyCycle, or a subclass (below)


class ZeroCopyCycle(RequestResponseCycle):
    _head = b""  # the status line and headers, held until the first body bytes
    _waiting: asyncio.Future[None] | None = None  # a wait for the socket to take more bytes
    rooms = 0  # waits for room that ended: progress, as a send timeout sees it

    async def send(self, message: Any) -> None:
        if not self.disconnected and self.transport.is_closing():
            # Closed by the server (a response before it that ended the connection, a refusal, a
            # time-out), and not yet reported lost: uvloop refuses any write now. This response ends
            # as for a client gone, not as an exception in the app.
            self.disconnected = True
        kind = message["type"]
        if kind == "http.response.start" and self._start_encoded(message):
            return
        if kind == "http.response.start" and not self.response_started and \
                has_body(self.scope["method"], message["status"]):
            # Held, to go out with the first body bytes in one write: one segment and one
            # wake-up of the client instead of two, which is most of a small response's cost.
            # (A head that is the whole response, HEAD, 204, 304, goes at once, as uvicorn sends it.)
            real, self.transport = self.transport, _Holding(self.transport)  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self._head, self.transport = b"".join(self.transport.held), real  # type: ignore[attr-defined]
            return
        if kind == "http.response.body" and self._head and message.get("body") and self.scope["method"] != "HEAD":
            real, self.transport = self.transport, _Prefixed(self.transport, self._head)  # type: ignore[assignment]
            self._head = b""
            try:
                await super().send(message)
            finally:
                self.transport = real
            return
        if self._head:  # anything else (no body bytes, a file) goes after the head
            head, self._head = self._head, b""
            if not self.disconnected:
                self.transport.write(head)
        if kind != EXTENSION:
            await super().send(message)
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started or self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{EXTENSION}' before the response start or after its end.")
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        offset = message.get("offset")
        count = message.get("count")
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        if count is None:
            count = max(os.fstat(fd).st_size - offset, 0)
        more_body = bool(message.get("more_body", False))
        if self.scope["method"] != "HEAD" and count:
            if self.chunked_encoding:
                self.transport.write(b"%x\r\n" % count)
            elif count > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            else:
                self.expected_content_length -= count
            if not await self._sendfile(fd, offset, count):
                return  # the client went away: nothing more is sent
            if message.get("offset") is None:
                os.lseek(fd, offset + count, os.SEEK_SET)
            if self.chunked_encoding:
                self.transport.write(b"\r\n")
        # The end of the body (and of chunked framing) as an ordinary empty body message.
        await super().send({"type": "http.response.body", "body": b"", "more_body": more_body})

    def _start_encoded(self, message: Any) -> bool:
        """Start the response with its encoded head, as uvicorn would; False when uvicorn must."""
        if self.disconnected:
            return True  # dropped, as uvicorn drops every send once the client is gone
        if self.response_started or self.default_headers or not self.keep_alive or self.access_log or \
                self.flow.write_paused:
            return False
        head: EncodedHead | None = message.get(HEAD_KEY)
        if head is None:
            headers = message.get("headers", [])
            # Only a list: another iterable would be consumed here, and uvicorn would get the rest.
            head = encoded_head(headers) if type(headers) is list else None
        body = has_body(self.scope["method"], message["status"])
        if head is None or (head.length is None and body):
            return False
        self.response_started = True
        self.waiting_for_100_continue = False
        if head.length is not None:
            self.expected_content_length = head.length
            self.chunked_encoding = False
        data = STATUS_LINE[message["status"]] + head.block + b"\r\n"
        if body:
            self._head = data  # goes out with the first body bytes, as below
        else:
            self.transport.write(data)
        return True

    async def _sendfile(self, fd: int, offset: int, count: int) -> bool:
        """Send bytes [offset, offset + count) of `fd`; False when the client went away."""
        sock: _Socket | None = None  # a descriptor to poll for room, made at the first wait
        try:
            while count:
                if self.disconnected or self.transport.is_closing():
                    self._gone()
                    return False
                if self.transport.get_write_buffer_size():
                    # What the transport holds (headers, chunk framing) goes first.
                    sock = sock or _Socket(self._socket())
                    await self._room(sock)
                    await asyncio.sleep(0)  # let the transport write what it holds
                    continue
                part = min(count, ON_LOOP)
                try:
                    if pagecache.resident(fd, offset, part):
                        # Only a copy from memory: done here, on the loop, where nothing can close
                        # either descriptor during the call (no thread hand-off, no duplicates).
                        sent = os.sendfile(self._socket(), fd, offset, part)
                        waited = False
                    else:
                        sent = await _in_thread(self._socket(), fd, offset, min(count, MAX_PER_CALL))
                        waited = True
                except BlockingIOError:
                    if self.disconnected or self.transport.is_closing():  # gone while a thread sent
                        self._gone()
                        return False
                    sock = sock or _Socket(self._socket())
                    await self._room(sock)
                    continue
                except OSError as e:
                    if e.errno in GONE:
                        self._gone()
                        return False
                    raise
                if sent == 0:
                    raise ShortFile(errno.EIO, f"file ended {count} bytes before the end of the span")
                offset += sent
                count -= sent
                if count and not waited:
                    await asyncio.sleep(0)  # the other connections' turn: one client never holds the loop
            return True
        finally:
            if sock is not None:
                sock.close()

    def _socket(self) -> int:
        """The connection's descriptor (open: asked on the loop while the transport is not closing)."""
        return int(self.transport.get_extra_info("socket").fileno())

    async def _room(self, sock: _Socket) -> None:
        """Until the socket takes more bytes, or the connection is lost (a client that closed
        only its sending side makes the socket neither writable nor errored)."""
        ready = asyncio.get_running_loop().create_future()
        self._waiting = ready
        try:
            await sock.writable(ready)
        finally:
            self._waiting = None
            self.rooms += 1

    @property
    def waiting(self) -> bool:
        """Is a zero-copy send waiting for the client to take bytes?"""
        return self._waiting is not None

    def lost(self) -> None:
        """The connection is gone: a wait for room ends now."""
        if self._waiting is not None:
            _settle(self._waiting)

    def _gone(self) -> None:
        """The client is gone: later sends are dropped and `receive` says http.disconnect."""
        self.disconnected = True
        self.message_event.set()
        self.transport.close()


ZeroCopyProtocol.cycle_class = ZeroCopyCycle


def _send_call() -> Callable[[int, bytes, int, int], int] | None:
    if not hasattr(socket, "MSG_MORE"):
        return None
    call = ctypes.CDLL(None, use_errno=True).send
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    call.restype = ctypes.c_ssize_t
    return call


_send = _send_call()


def send_more(sock: int, data: bytes) -> int:
    """send(2) of `data` with MSG_MORE on a non-blocking socket: the kernel holds the bytes to go
    out with what is sent next (a sendfile's); how many it took (0 when none: the socket is full,
    it failed, or the call is missing: then the caller's transport writes them, and sees why)."""
    if _send is None:
        return 0
    return max(_send(sock, data, len(data), _MORE), 0)


_MORE = getattr(socket, "MSG_MORE", 0) | getattr(socket, "MSG_NOSIGNAL", 0)  # (Linux's: elsewhere _send is None)


def _retrieved(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()


async def _in_thread(sock: int, fd: int, offset: int, count: int) -> int:
    """os.sendfile in one of the pool's threads, on duplicates of both descriptors that the call
    owns and closes: a cancelled wait here cannot stop a call a thread has begun, and by then this
    side's descriptors may be closed and their numbers reused for another client's socket or file."""
    owned = _duplicates(sock, fd)
    try:
        job = _pool.submit(_sendfile_owned, *owned, offset, count)
    except BaseException:  # no thread will take them (the pool is shut down)
        for copy in owned:
            os.close(copy)
        raise
    # Shielded: cancelling the wait must not cancel a job no thread has taken yet, or the
    # duplicates it owns would never be closed.
    waited = asyncio.wrap_future(job)
    waited.add_done_callback(_retrieved)  # its error may come when nobody awaits it
    return await asyncio.shield(waited)


def _duplicates(out_fd: int, in_fd: int) -> tuple[int, int]:
    out_copy = os.dup(out_fd)
    try:
        return out_copy, os.dup(in_fd)
    except BaseException:
        os.close(out_copy)
        raise


def _sendfile_owned(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    """os.sendfile on descriptors this call owns and closes, whatever happens."""
    try:
        return os.sendfile(out_fd, in_fd, offset, count)
    finally:
        os.close(out_fd)
        os.close(in_fd)


def has_body(method: str, status: int) -> bool:
    """May the response of this status to this method carry body bytes? (RFC 9110 sections
    9.3.2, 15.3.5, 15.4.5)"""
    return method != "HEAD" and status not in (204, 304)


class _Holding:
    """Stands in for the transport while uvicorn writes a response head: keeps what is written
    (in order: a 100 Continue written meanwhile goes before the head); the rest is the transport's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.held: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.held.append(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Prefixed:
    """Stands in for the transport for one body message: its one write goes out after `head`,
    in the same call; anything else is the transport's."""

    def __init__(self, transport: asyncio.Transport, head: bytes) -> None:
        self._transport = transport
        self._head: bytes | None = head

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Socket:
    """A duplicate descriptor of the connection's socket, for the loop to poll for room (it
    refuses to poll a descriptor a transport owns). A reset or closed peer counts as
    writable: the next send reports it."""

    def __init__(self, sock: int) -> None:
        self.fd = os.dup(sock)
        self.loop = asyncio.get_running_loop()

    async def writable(self, ready: asyncio.Future[None]) -> None:
        """Until the socket takes more bytes, or `ready` is settled by someone else."""
        self.loop.add_writer(self.fd, _settle, ready)
        try:
            await ready
        finally:
            self.loop.remove_writer(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
