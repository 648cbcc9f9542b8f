"""An upstream HTTP origin, reached with one pooled httpx client; nothing else is ever contacted."""
from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator

import anyio
import httpx

from ..http.freshness import Headers, get
from ..http.headers import content_type_for, end_to_end
from ..request.paths import origin_path
from .base import OriginError, OriginResponse, Target, Uploaded
from .pool import OriginPool, Timeouts
from .wire import ResponseTimeout

VIA = "1.1 edgecache"
VIA_BYTES = VIA.encode("ascii")
KEEPALIVE_EXPIRY = 4.0  # seconds an idle origin connection is kept
# What talking to the origin can raise.
_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, OSError)


class UpstreamOrigin:
    kind = "http"

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        response_timeout: float,
        max_connections: int = 100,
    ) -> None:
        url = httpx.URL(base_url)
        self.scheme, self.host, self.port = url.scheme, url.host, url.port
        self.where = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        self.netloc = url.netloc  # the Host field: the host, and the port unless it is the scheme's
        self.base_path = url.raw_path.decode("ascii").split("?")[0].rstrip("/")
        self.response_timeout = response_timeout
        # Idle connections are dropped before the usual 5 s idle timeout of origin servers (Node,
        # uvicorn): reusing one the origin is closing at that moment fails the request. A request
        # is sent with the client's end-to-end fields and none of an HTTP library's own (a client
        # that accepts no encoding is never answered gzip because a library asked), and nothing
        # of one request (a cookie an answer set, a redirect) carries over to another.
        self.pool = OriginPool(max_connections, KEEPALIVE_EXPIRY,
                               Timeouts(connect_timeout, read_timeout, read_timeout, connect_timeout))

    def cache_key(self, target: Target) -> str:
        return target.raw

    def location_key(self, location: str) -> str | None:
        try:
            url = httpx.URL(location)
        except httpx.InvalidURL:
            return None
        if url.is_absolute_url and (url.scheme, url.host, url.port) != (self.scheme, self.host, self.port):
            return None
        if not url.is_absolute_url and not location.startswith("/") or location.startswith("//"):
            return None
        path = url.raw_path.decode("ascii").split("?")[0]
        if self.base_path:
            if not path.startswith(self.base_path + "/"):
                return None  # the origin's, but outside what the edge serves
            path = path[len(self.base_path):]
        query = url.query.decode("ascii")
        return origin_path(path.lstrip("/")) + (f"?{query}" if query else "")

    async def request(
        self, method: str, target: Target, headers: Headers, body: AsyncIterator[bytes] | None = None
    ) -> OriginResponse:
        """Send the request; the response body streams. Raises OriginError. The host is fixed
        here: no request path or field can steer the request elsewhere."""
        outgoing = [(b"Host", self.netloc)]
        outgoing += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in end_to_end(headers)
                     if n.lower() not in ("host", "content-length")]
        length = get(headers, "content-length")
        if length is not None:
            outgoing.append((b"Content-Length", length.encode("latin-1")))
        outgoing.append((b"Via", VIA_BYTES))
        target_bytes = _as_sent(self.base_path + target.raw)
        try:
            answer = await self.pool.exchange(self.where, method, target_bytes, outgoing, body,
                                              None if body is not None else self.response_timeout)
        except BaseException as e:
            raise _origin_error(e, self.host, self.response_timeout) from None
        if not 200 <= answer.status <= 599:  # RFC 9110 section 15: a final status is 200-599
            answer.close()
            raise OriginError("invalid", f"status {answer.status}")
        response_headers = end_to_end([(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.fields])
        response_headers.append(("Via", VIA))
        return OriginResponse(answer.status, response_headers, body_of(answer), answer.aclose)

    async def upload(
        self, target: Target, chunks: AsyncIterator[bytes], length: int | None
    ) -> Uploaded:
        """PUT the body to the origin, streamed; its answer (status, first KiB of the body) comes back."""
        size = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                yield chunk

        media = content_type_for(target.path)
        headers = [("Content-Type", media)] + ([("Content-Length", str(length))] if length is not None else [])
        response = await self.request("PUT", target, headers, counted())
        detail = b""
        try:
            async for chunk in response.body:
                detail += chunk[: 1024 - len(detail)]
        finally:
            await response.close()
        return Uploaded(response.status, size, response.header("etag"), media,
                        detail.decode("utf-8", "replace").strip())

    async def healthy(self) -> bool:
        return True

    async def aclose(self) -> None:
        await self.pool.aclose()


async def send(pool: OriginPool, request: httpx.Request, response_timeout: float,
               has_body: bool) -> httpx.Response:
    """Send a request on the origin's pool and wait for the response head; its body streams. Raises
    OriginError. The response deadline counts from a request without a body; with one, sending it
    may take as long as the client takes (each write and read has its own timeout).
    Not through httpx's client: it would keep the cookies an answer sets and send them with every
    later request, another client's; nor are its redirects or authentication wanted."""
    try:
        with anyio.fail_after(math.inf if has_body else response_timeout):
            return await pool.handle_async_request(request)
    except BaseException as e:
        raise _origin_error(e, request.url.host, response_timeout) from None


def _as_sent(target: str) -> bytes:
    """A request target's bytes: as received (a target's text holds the bytes a client sent, one
    character each), or UTF-8 for text from elsewhere (a manifest's); the wire percent-encodes
    what a request line cannot hold."""
    try:
        return target.encode("latin-1")
    except UnicodeEncodeError:
        return target.encode("utf-8", "surrogateescape")


def _origin_error(error: BaseException, host: str, response_timeout: float) -> BaseException:
    """What an error in asking the origin means (OriginError), or the error itself (a cancellation)."""
    if isinstance(error, (TimeoutError, ResponseTimeout)):
        return OriginError("timeout", f"no response within {response_timeout:g}s")
    if isinstance(error, httpx.TimeoutException):
        return OriginError("timeout", type(error).__name__)
    if isinstance(error, _TRANSPORT_ERRORS):
        return OriginError("unreachable", f"{host}: {type(error).__name__}")
    return error


async def body_of(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The raw body bytes, as the origin sent them (no decoding); errors become OriginError."""
    try:
        async for chunk in chunks:
            yield chunk
    except httpx.TimeoutException as e:
        raise OriginError("timeout", f"body: {type(e).__name__}") from None
    except _TRANSPORT_ERRORS as e:
        raise OriginError("unreachable", f"body: {type(e).__name__}") from None
