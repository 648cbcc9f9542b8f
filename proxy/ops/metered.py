"""An origin that counts its exchanges for the metrics: requests, bytes, errors, latency."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator

from ..http.directives import Headers
from ..origins.base import Origin, OriginError, OriginResponse, Target, Uploaded
from . import metrics


class MeteredOrigin:
    """Wraps any Origin; what it answers is unchanged."""

    def __init__(self, inner: Origin) -> None:
        self.inner = inner
        self.kind = inner.kind

    def cache_key(self, target: Target) -> str:
        return self.inner.cache_key(target)

    def location_key(self, location: str) -> str | None:
        return self.inner.location_key(location)

    async def request(
        self, method: str, target: Target, headers: Headers, body: AsyncIterator[bytes] | None = None
    ) -> OriginResponse:
        started = time.perf_counter()
        try:
            response = await self.inner.request(method, target, headers, body)
        except OriginError as e:
            metrics.ORIGIN_ERRORS.labels(e.kind).inc()
            raise
        metrics.ORIGIN_SECONDS.observe(time.perf_counter() - started)
        metrics.ORIGIN_REQUESTS.labels(str(response.status)).inc()
        return OriginResponse(response.status, response.headers, _counted(response.body), response.close)

    async def upload(
        self, target: Target, chunks: AsyncIterator[bytes], length: int | None
    ) -> Uploaded:
        uploaded = await self.inner.upload(target, chunks, length)
        metrics.UPLOADS.labels(str(uploaded.status)).inc()
        if 200 <= uploaded.status < 300:
            metrics.UPLOAD_BYTES.inc(uploaded.size)
        return uploaded

    async def healthy(self) -> bool:
        return await self.inner.healthy()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _counted(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body as it is, its length added to the origin bytes once it ends; closing this closes
    the origin's body too (a reader that stops early lets go of the origin's connection)."""
    total = 0
    try:
        async for chunk in body:
            total += len(chunk)
            yield chunk
    finally:
        metrics.ORIGIN_BYTES.inc(total)
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
