"""Stored entries by primary key and Vary selection: lookups, writes, invalidation (store I/O only)."""
from __future__ import annotations

import logging

from ..http.cache import Entry, Fwd, PassMarker
from ..http.directives import Headers
from ..http.freshness import vary_fields, vary_key
from ..store.disk import Store, StoreErrors
from ..store.objects import CachedObject, VaryIndex, meta_key, vary_index_key
from .threads import StoreThreads

log = logging.getLogger("edgecache")


class Entries:
    def __init__(self, store: Store, threads: StoreThreads) -> None:
        self.store = store
        self.threads = threads

    async def lookup(self, primary: str, headers: Headers, fresh: bool = False) -> tuple[Entry | None, Fwd]:
        """The entry selected for this request (RFC 9111 section 4.1), and the miss reason if none."""

        def lookup() -> tuple[Entry | None, Fwd]:
            index = self.store.get(vary_index_key(primary), fresh)
            if isinstance(index, VaryIndex):
                return _entry(self.store.get(meta_key(primary, vary_key(index.fields, headers)), fresh)), Fwd.VARY_MISS
            return _entry(self.store.get(meta_key(primary, ""), fresh)), Fwd.URI_MISS

        try:
            return await self.threads.run(lookup)
        except StoreErrors as e:
            log.warning("cache lookup failed, going to the origin: %s", e)
            return None, Fwd.MISS

    async def put(self, primary: str, key: str, entry: Entry, response_headers: Headers) -> bool:
        """Store an entry under its meta key, keeping the Vary index of the primary key right."""
        vary = vary_fields(response_headers)

        def put() -> None:
            if vary:
                index = self.store.get(vary_index_key(primary), fresh=True)
                selections = index.selections if isinstance(index, VaryIndex) and index.fields == vary else frozenset()
                self.store.put(vary_index_key(primary), VaryIndex(vary, selections | {key}))
            elif self.store.get(vary_index_key(primary)) is not None:
                self.store.delete(vary_index_key(primary))  # it no longer varies
            self.store.put(key, entry)

        try:
            await self.threads.run(put)
            return True
        except StoreErrors as e:
            log.warning("metadata not stored: %s", e)
            return False

    async def forget(self, obj: CachedObject) -> None:
        """Forget one stored response and its blocks (its version is gone at the origin)."""
        try:
            await self.threads.run(self.store.delete, obj.key)
            await self.threads.run(self.store.drop_blocks, obj)
        except StoreErrors as e:
            log.warning("%s not forgotten: %s", obj.key, e)

    async def drop_blocks(self, obj: CachedObject) -> None:
        try:
            await self.threads.run(self.store.drop_blocks, obj)
        except StoreErrors as e:
            log.warning("old blocks not dropped: %s", e)

    async def invalidate(self, primary: str) -> int:
        """Forget every stored response for a primary key (RFC 9111 section 4.4); how many."""
        return await self.threads.run(self.store.purge, primary)

    async def purge_prefix(self, prefix: str) -> list[str]:
        return await self.threads.run(self.store.purge_prefix, prefix)


def _entry(value: object) -> Entry | None:
    return value if isinstance(value, (CachedObject, PassMarker)) else None
