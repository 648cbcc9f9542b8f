"""The origin's connections, for httpx: a pool whose cost per request does not grow with its size.

httpcore's own pool looks at every connection it holds, and asks the socket of every idle one
whether the origin closed it (a system call each), whenever a request comes and whenever a
response ends: with many connections to a slow origin, that was most of the CPU a cache miss
took. Here idle connections wait in a stack per origin: a request takes the one used last
(checking only that one), a response's end puts it back (and checks only the longest idle).
The connections themselves are httpcore's (HTTP/1.1, keep-alive); httpx's timeouts apply.
"""
from __future__ import annotations

import collections
import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterator

import anyio
import httpcore
import httpx

# httpcore's errors as httpx's, most specific first (what httpx's own transport raises).
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


_Where = tuple[bytes, bytes, int]


def _where(origin: httpcore.Origin) -> _Where:
    """An origin as a dict key (httpcore's Origin is not hashable)."""
    return origin.scheme, origin.host, origin.port


@contextlib.contextmanager
def _as_httpx() -> Iterator[None]:
    try:
        yield
    except Exception as e:
        for theirs, ours in _ERRORS:
            if isinstance(e, theirs):
                raise ours(str(e)) from e
        raise


class OriginPool(httpx.AsyncBaseTransport):
    """At most `max_connections` requests in flight, each on its own connection; a request beyond
    them waits for one to end (httpx's pool timeout). An idle connection is reused while the origin
    keeps it and for `keepalive_expiry` seconds at most; one found closed or expired is dropped when
    the next request comes (so at most `max_connections` idle sockets wait that long)."""

    def __init__(self, max_connections: int, keepalive_expiry: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._slots = anyio.Semaphore(max_connections)
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context or httpx.create_ssl_context(trust_env=False)
        self._idle: dict[_Where, collections.deque[httpcore.AsyncHTTPConnection]] = {}  # by origin
        self._busy: set[httpcore.AsyncHTTPConnection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = httpcore.Origin(url.raw_scheme, url.raw_host, url.port or (443 if url.scheme == "https" else 80))
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions,
        )
        timeout = request.extensions.get("timeout", {}).get("pool")
        with anyio.move_on_after(timeout) as waited:
            await self._slots.acquire()
        if waited.cancelled_caught:
            raise httpx.PoolTimeout(f"no origin connection free within {timeout}s")
        connection = None
        try:
            for _ in range(3):  # a kept connection the origin closed meanwhile: another, or a new one
                connection = await self._take(origin)
                try:
                    with _as_httpx():
                        response = await connection.handle_async_request(core)
                    break
                except httpcore.ConnectionNotAvailable:
                    await connection.aclose()
                    self._busy.discard(connection)
            else:
                raise httpx.ConnectError("no usable origin connection")
        except BaseException:
            with anyio.CancelScope(shield=True):
                if connection is not None:
                    self._busy.discard(connection)
                    await connection.aclose()
                self._slots.release()
            raise
        stream = response.stream
        assert isinstance(stream, AsyncIterable)
        return httpx.Response(status_code=response.status, headers=response.headers, request=request,
                              stream=_Body(self, origin, connection, stream), extensions=response.extensions)

    async def _take(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        """The idle connection used last that is still good, or a new one (connected as it is asked)."""
        idle = self._idle.get(_where(origin))
        while idle:
            connection = idle.pop()
            if connection.is_available() and not connection.has_expired():
                self._busy.add(connection)
                return connection
            await connection.aclose()
        connection = httpcore.AsyncHTTPConnection(origin=origin, ssl_context=self._ssl_context,
                                                  keepalive_expiry=self._keepalive_expiry)
        self._busy.add(connection)
        return connection

    async def returned(self, origin: httpcore.Origin, connection: httpcore.AsyncHTTPConnection) -> None:
        """A response ended: its connection waits for the next request if it may be reused."""
        self._busy.discard(connection)
        try:
            if connection.is_idle() and not connection.is_closed():
                idle = self._idle.setdefault(_where(origin), collections.deque())
                idle.append(connection)
                if idle[0].has_expired():  # the longest idle, so that none is kept long past its expiry
                    await idle.popleft().aclose()
            else:
                await connection.aclose()
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        connections = [*self._busy, *(c for idle in self._idle.values() for c in idle)]
        self._busy.clear()
        self._idle.clear()
        for connection in connections:
            await connection.aclose()


class _Body(httpx.AsyncByteStream):
    def __init__(self, pool: OriginPool, origin: httpcore.Origin, connection: httpcore.AsyncHTTPConnection,
                 stream: AsyncIterable[bytes]) -> None:
        self._pool = pool
        self._origin = origin
        self._connection: httpcore.AsyncHTTPConnection | None = connection
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                close = getattr(self._stream, "aclose", None)
                if close is not None:
                    with _as_httpx():
                        await close()
            finally:
                await self._pool.returned(self._origin, connection)
