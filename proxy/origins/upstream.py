"""An upstream HTTP origin, reached with one pooled httpx client; nothing else is ever contacted."""
from __future__ import annotations

import math
from collections.abc import AsyncIterator

import anyio
import h11
import httpx

from ..http.freshness import Headers, get
from ..http.headers import content_type_for, end_to_end
from ..request.paths import origin_path
from .base import OriginError, OriginResponse, Target, Uploaded
from .pool import OriginPool

VIA = "1.1 edgecache"
KEEPALIVE_EXPIRY = 4.0  # seconds an idle origin connection is kept
# What talking to the origin can raise; h11's own errors escape httpx in some cases
# (a request whose framing h11 refuses).
_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, h11.ProtocolError, OSError)


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
        self.base_path = url.raw_path.decode("ascii").split("?")[0].rstrip("/")
        self.response_timeout = response_timeout
        # Idle connections are dropped before the usual 5 s idle timeout of origin servers (Node,
        # uvicorn): reusing one the origin is closing at that moment fails the request.
        self.pool = OriginPool(max_connections, KEEPALIVE_EXPIRY)
        self.client = httpx.AsyncClient(  # builds the requests (URL, fields, timeouts); `send` sends them
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout),
            transport=self.pool,
            follow_redirects=False,  # redirects go back to the client
            trust_env=False,  # no proxy from the environment: only the configured origin
        )
        # No fields of httpx's own (Accept-Encoding: gzip, User-Agent, ...): the origin gets the
        # client's, so a client that accepts no encoding never gets a gzip body (nor stores one).
        self.client.headers.clear()

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

    def _url(self, target: Target) -> httpx.URL:
        # The host is fixed here: no request path or header can steer it elsewhere.
        return httpx.URL(scheme=self.scheme, host=self.host, port=self.port,
                         raw_path=(self.base_path + target.raw).encode("ascii"))

    async def request(
        self, method: str, target: Target, headers: Headers, body: AsyncIterator[bytes] | None = None
    ) -> OriginResponse:
        """Send the request; the response body streams. Raises OriginError."""
        outgoing = [(n, v) for n, v in end_to_end(headers) if n.lower() not in ("host", "content-length")]
        length = get(headers, "content-length")
        if length is not None:
            outgoing.append(("Content-Length", length))
        outgoing.append(("Via", VIA))
        request = self.client.build_request(method, self._url(target), headers=outgoing, content=body)
        response = await send(self.pool, request, self.response_timeout, body is not None)
        if not 200 <= response.status_code <= 599:  # RFC 9110 section 15: a final status is 200-599
            await response.aclose()
            raise OriginError("invalid", f"status {response.status_code}")
        response_headers = end_to_end([(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw])
        response_headers.append(("Via", VIA))
        return OriginResponse(response.status_code, response_headers, body_of(response), response.aclose)

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
        await self.client.aclose()


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
    except TimeoutError:
        raise OriginError("timeout", f"no response within {response_timeout:g}s") from None
    except httpx.TimeoutException as e:
        raise OriginError("timeout", type(e).__name__) from None
    except _TRANSPORT_ERRORS as e:
        raise OriginError("unreachable", f"{request.url.host}: {type(e).__name__}") from None


async def body_of(response: httpx.Response) -> AsyncIterator[bytes]:
    """The raw body bytes, as the origin sent them (no decoding); errors become OriginError."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.TimeoutException as e:
        raise OriginError("timeout", f"body: {type(e).__name__}") from None
    except _TRANSPORT_ERRORS as e:
        raise OriginError("unreachable", f"body: {type(e).__name__}") from None
