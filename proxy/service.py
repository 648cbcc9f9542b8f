"""The edge service: reads through the cache, writes to the origin, and what writes invalidate."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from .cache.hits import FLUSH_INTERVAL
from .cache.reads import ProxyRequest, ReadPath
from .cache.replies import Reply, Twin, relay, relay_forwarded, text_reply
from .config import Settings
from .http import freshness as fr
from .http.cache import Fwd, invalidated
from .http.cachestatus import cache_status
from .http.lifetimes import StreamTtls
from .http.tags import without_tags
from .ops import metrics
from .origins.base import Origin, OriginError, Target, Uploaded
from .store.disk import Store, StoreErrors

log = logging.getLogger("edgecache")
INVALIDATION_RETRIES = 40  # about three minutes of retries after a write whose invalidation failed

__all__ = ["EdgeService", "ProxyRequest", "Reply", "Twin"]


def policy_of(settings: Settings) -> fr.Policy:
    return fr.Policy(
        heuristic_fraction=settings.heuristic_fraction,
        heuristic_max=settings.heuristic_max_ttl,
        default_ttls=settings.ttl_rules,
        stale_while_revalidate=settings.stale_while_revalidate,
        stale_if_error=settings.stale_if_error,
        stale_if_unreachable=settings.stale_if_unreachable,
        cdn_fields=settings.cdn_fields,
        streams=StreamTtls(manifest=settings.manifest_ttl, segment=settings.segment_ttl),
    )


class EdgeService:
    def __init__(self, settings: Settings, origin: Origin, store: Store | None) -> None:
        self.settings = settings
        self.origin = origin
        self.store = store
        self.reads = ReadPath(settings, origin, store, policy_of(settings)) if store is not None else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: set[str] = set()  # keys whose invalidation after a write is still owed

    def start(self) -> None:
        """Begin the background upkeep (call from the running event loop)."""
        if self.reads is not None:
            self.reads.start()
            task = asyncio.get_running_loop().create_task(self._flush_hits_every(FLUSH_INTERVAL))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush_hits_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.flush_hits()

    async def flush_hits(self) -> None:
        """Add the hits tallied since the last flush to the store (lost if the store fails)."""
        if self.reads is None or self.store is None:
            return
        counts = self.reads.hits.take()
        if counts:
            try:
                await self.reads.threads.run(self.store.add_hits, counts)
            except StoreErrors as e:
                log.warning("hit counts of %d responses not stored: %s", len(counts), e)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for primary in sorted(self._pending):  # a last try, and a word for the operator
            try:
                await self.invalidate(primary)
            except StoreErrors as e:
                log.error("invalidation of %s still failing at shutdown, purge it by hand: %s", primary, e)
        await self.flush_hits()
        if self.reads is not None:
            await self.reads.aclose()
        await self.origin.aclose()
        if self.store is not None:
            self.store.close()

    async def settle(self) -> None:
        """Wait for the block fills and small stores in progress to end (before a warmer stops its app)."""
        if self.reads is not None:
            await self.reads.filler.settle()
            await self.reads.settled()

    async def handle(self, req: ProxyRequest) -> Reply:
        try:
            reply = await self._handle(req)
        except OriginError as e:
            return self._origin_failed(e)
        if not self.settings.forward_cache_tags:  # the origin's cache tags are for this cache (http/tags.py)
            reply.headers = without_tags(reply.headers)
        return reply

    async def _handle(self, req: ProxyRequest) -> Reply:
        if req.method not in ("GET", "HEAD"):
            return await self._forward_unsafe(req)
        if self.reads is None:
            response = await self.origin.request(req.method, req.target, req.headers, req.body)
            return relay_forwarded(response, req.method, Fwd.BYPASS)
        return await self.reads.read(req)

    def _origin_failed(self, e: OriginError) -> Reply:
        log.warning("origin failed: %s", e)
        message = {
            "timeout": "Gateway Timeout: the origin did not answer in time",
            "invalid": f"Bad Gateway: the origin's answer was not valid HTTP ({e.detail})",
        }.get(e.kind, "Bad Gateway: the origin could not be reached")
        return text_reply(e.status, message, [("Cache-Status", cache_status(fwd="miss", detail=e.kind)),
                                              ("X-Cache", "MISS")])

    async def _forward_unsafe(self, req: ProxyRequest) -> Reply:
        """Other methods go to the origin uncached; success invalidates the target (RFC 9111 section 4.4)."""
        response = await self.origin.request(req.method, req.target, req.headers, req.body)
        others = [self.origin.location_key(v) for v in (response.header("location"),
                                                         response.header("content-location")) if v]
        targets = invalidated(req.method, response.status, self.origin.cache_key(req.target), others)
        for target in targets:
            await self._invalidate_after_write(target)
        status = cache_status(fwd=Fwd.METHOD.value, fwd_status=response.status)
        return relay(response, req.method, status, "BYPASS")

    async def _invalidate_after_write(self, primary: str) -> None:
        """Invalidate what a write changed; if the store fails now, keep trying in the background
        (the write happened: the old bytes must go)."""
        try:
            await self.invalidate(primary)
        except StoreErrors as e:
            log.warning("invalidation of %s failed, retrying: %s", primary, e)
            self._pending.add(primary)
            task = asyncio.get_running_loop().create_task(self._retry_invalidation(primary))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _retry_invalidation(self, primary: str) -> None:
        for attempt in range(INVALIDATION_RETRIES):
            await asyncio.sleep(min(2.0**attempt / 4, 5.0))
            try:
                await self.invalidate(primary)
                self._pending.discard(primary)
                return
            except StoreErrors as e:
                error = e
        self._pending.discard(primary)
        log.error("invalidation of %s failed for good, purge it by hand: %s", primary, error)

    async def invalidate(self, primary: str) -> int:
        """Forget every stored response for a primary key (RFC 9111 section 4.4); count them."""
        return 0 if self.reads is None else await self.reads.entries.invalidate(primary)

    async def purge(self, path: str | None = None, prefix: str | None = None, tag: str | None = None,
                    soft: bool = False) -> list[str]:
        """Purge one cache key, all under a prefix, or all stored with a cache tag; the keys that
        held something. `soft`: mark them stale instead (the next request revalidates them, and
        they may still answer stale, as when they expire)."""
        if self.reads is None:
            return []
        await self.reads.settled()  # the small answers this worker gave are in the store, to be purged
        entries = self.reads.entries
        stale_at = time.time() if soft else None
        if prefix is not None:
            purged = await entries.purge_prefix(prefix, stale_at)
        elif tag is not None:
            purged = await entries.purge_tag(tag, stale_at)
        else:
            assert path is not None
            purged = [path] if await entries.purge_key(path, stale_at) else []
        metrics.PURGES.inc(len(purged))
        return purged

    async def upload(
        self, target: Target, chunks: AsyncIterator[bytes], length: int | None = None
    ) -> Uploaded:
        """Store a file at the origin (streamed), then forget what the edge cached for it."""
        uploaded = await self.origin.upload(target, chunks, length)
        if 200 <= uploaded.status < 300:
            await self._invalidate_after_write(self.origin.cache_key(target))
        return uploaded
