"""The origin's connections: a pool whose cost per request does not grow with its size.

Idle connections wait in a stack per origin: a request takes the one used last, a response's
end puts it back (and closes the longest idle one if it outlived `keepalive_expiry`). A
connection the origin closed while idle is known closed from the loop, with no system call to
ask. The exchanges themselves are wire.py's; `exchange` is the pool's own interface (what the
HTTP origin uses, with no request or response objects in between), and the pool is also an
httpx transport (what the S3 origin's signed requests go through).
"""
from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import httpx

from .wire import Connection, Fields, body_framing, request_head

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 section 9.2.2
Where = tuple[str, str, int]  # scheme, host, port


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect, for each wait to read or to write, for a free connection."""

    connect: float
    read: float
    write: float
    pool: float

    @classmethod
    def of(cls, timeout: httpx.Timeout) -> Timeouts:
        return cls(*(t if t is not None else float("inf")
                     for t in (timeout.connect, timeout.read, timeout.write, timeout.pool)))


class Answer:
    """An origin's response: status and fields at once, the body as it comes (`read` until b"").
    `aclose` gives the connection back (reused if the body was read to its end) and the pool's slot."""

    def __init__(self, pool: OriginPool, where: Where, connection: Connection, status: int, fields: Fields,
                 read_timeout: float) -> None:
        self.status = status
        self.fields = fields
        self._pool, self._where, self._read_timeout = pool, where, read_timeout
        self._connection: Connection | None = connection

    async def read(self) -> bytes:
        connection = self._connection
        if connection is None:
            return b""
        try:
            chunk = await connection.read(self._read_timeout)
        except BaseException:
            self.close()
            raise
        if not chunk:
            self.close()  # read to its end: the connection is free at once
        return chunk

    def __aiter__(self) -> Answer:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.returned(self._where, connection)

    async def aclose(self) -> None:
        self.close()


class OriginPool(httpx.AsyncBaseTransport):
    """At most `max_connections` exchanges at once, each on its own connection; one beyond them waits
    for one to end (up to the pool timeout). An idle connection is reused while the origin keeps it
    and for `keepalive_expiry` seconds at most."""

    def __init__(self, max_connections: int, keepalive_expiry: float, timeouts: Timeouts,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._free = max_connections
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._keepalive_expiry = keepalive_expiry
        self.timeouts = timeouts
        self._ssl_context = ssl_context or httpx.create_ssl_context(trust_env=False)
        self._idle: dict[Where, list[Connection]] = {}
        self._busy: set[Connection] = set()

    @property
    def free(self) -> int:
        """Exchanges that may begin at once."""
        return self._free

    async def exchange(self, where: Where, method: str, target: bytes, fields: Fields,
                       body: AsyncIterable[bytes] | None = None, response_timeout: float | None = None) -> Answer:
        """Send a request (`fields` with Host; the framing of its body is added) and wait for the
        response's head. Raises httpx's errors (wire.ResponseTimeout past `response_timeout`, counted
        from now, when the request has no body). A request without a body that fails on a reused
        connection before any answer came is sent again on a new one (RFC 9112 section 9.3.1)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + response_timeout if response_timeout is not None and body is None else None
        fields, chunked = body_framing(method, fields, body is not None)
        head = request_head(method, target, fields)
        await self._acquire()
        connection: Connection | None = None
        try:
            for retry in (True, True, False):
                connection = None
                connection = await self._take(where, fresh=not retry)
                try:
                    connection.start(method, head)
                    if body is not None:
                        try:
                            await _send_body(connection, body, chunked, self.timeouts.write)
                        except httpx.WriteError:
                            if not connection.answered:  # an answer before the whole body: it is the answer
                                raise
                    status, response_fields = await connection.head(self.timeouts.read, deadline)
                    break
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError):
                    if not (retry and body is None and connection.exchanges > 1 and not connection.heard
                            and method in IDEMPOTENT):
                        raise
                    self._busy.discard(connection)
                    connection.abort()
        except BaseException:
            if connection is not None:
                self._busy.discard(connection)
                connection.abort()
            self._release()
            raise
        assert connection is not None
        return Answer(self, where, connection, status, response_fields, self.timeouts.read)

    async def _acquire(self) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(self.timeouts.pool):
                await waiter
        except BaseException as e:
            if waiter.done() and not waiter.cancelled():
                self._release()  # given a slot as it timed out or was cancelled: the next one has it
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            if isinstance(e, TimeoutError):
                raise httpx.PoolTimeout(f"no origin connection free within {self.timeouts.pool:g}s") from None
            raise

    def _release(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on, the count unchanged
                return
        self._free += 1

    async def _take(self, where: Where, fresh: bool = False) -> Connection:
        """The idle connection used last that is still good (none if `fresh`), or a new one."""
        idle = self._idle.get(where)
        now = asyncio.get_running_loop().time()
        while idle and not fresh:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._keepalive_expiry:
                self._busy.add(connection)
                return connection
            connection.close()
        scheme, host, port = where
        connection = await Connection.open(host, port, self._ssl_context if scheme == "https" else None,
                                           self.timeouts.connect)
        self._busy.add(connection)
        return connection

    def returned(self, where: Where, connection: Connection) -> None:
        """An exchange ended (its body read, or given up): its connection waits for the next request
        if it may be reused, and its slot is free."""
        self._busy.discard(connection)
        try:
            if connection.reusable:
                connection.rest()
                connection.idle_since = asyncio.get_running_loop().time()
                idle = self._idle.setdefault(where, [])
                idle.append(connection)
                if connection.idle_since - idle[0].idle_since >= self._keepalive_expiry:
                    idle.pop(0).close()  # the longest idle: none is kept long past its expiry
            elif connection.ended:
                connection.close()
            else:
                connection.abort()  # given up mid-response: what is still coming is not read
        finally:
            self._release()

    # --- as an httpx transport ---------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        where = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        names = {name.lower() for name, _ in request.headers.raw}
        has_body = b"content-length" in names or b"transfer-encoding" in names
        stream = request.stream
        assert isinstance(stream, AsyncIterable)
        answer = await self.exchange(where, request.method, url.raw_path, list(request.headers.raw),
                                     stream if has_body else None)
        return httpx.Response(status_code=answer.status, headers=answer.fields, request=request,
                              stream=_Body(answer))

    async def aclose(self) -> None:
        connections = [*self._busy, *(c for idle in self._idle.values() for c in idle)]
        self._busy.clear()
        self._idle.clear()
        for connection in connections:
            connection.abort()


async def _send_body(connection: Connection, body: AsyncIterable[bytes], chunked: bool, timeout: float) -> None:
    """A request's body, chunked (RFC 9112 section 7.1) or as it is."""
    async for chunk in body:
        if chunk:
            await connection.send([b"%x\r\n" % len(chunk), chunk, b"\r\n"] if chunked else [chunk], timeout)
    if chunked:
        await connection.send([b"0\r\n\r\n"], timeout)


class _Body(httpx.AsyncByteStream):
    def __init__(self, answer: Answer) -> None:
        self._answer = answer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._answer:
            yield chunk

    async def aclose(self) -> None:
        self._answer.close()
