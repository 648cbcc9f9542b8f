"""Stored entries by primary key and Vary selection: lookups, writes, invalidation (store I/O only)."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import anyio

from ..http.cache import Entry, Fwd, PassMarker, as_fetched
from ..http.directives import Headers
from ..http.freshness import vary_key
from ..store.disk import NotRemembered, Put, Store, StoreErrors
from ..store.objects import CachedObject, meta_key
from .threads import StoreThreads

log = logging.getLogger("edgecache")
_NOT_IN_MEMORY: tuple[type[Exception], ...] = (NotRemembered, *StoreErrors)


@dataclass(frozen=True)
class Lookup:
    entry: Entry | None
    miss: Fwd  # the reason to give if nothing usable is stored
    generation: int | None  # None when the store could not be read
    varies_on: tuple[str, ...] = ()  # the request fields that selected the entry (the key's Vary index)


class Entries:
    def __init__(self, store: Store, threads: StoreThreads) -> None:
        self.store = store
        self.threads = threads
        self._queued: list[tuple[Put, asyncio.Future[bool]]] = []  # entries to store, and who waits
        self._writing: asyncio.Task[None] | None = None  # the task handing them to the writer thread
        self.pending = 0  # entries put and not yet answered (stored or not)

    async def lookup(self, primary: str, headers: Headers, fresh: bool = False, epoch: int | None = None) -> Lookup:
        """The entry selected for this request (RFC 9111 section 4.1), the miss reason if none,
        and the key's generation (what a fill started now may store into). `epoch`: the key's
        change count as the caller just read it (Store.change_mark)."""

        def lookup(memo_only: bool) -> Lookup:
            store = self.store
            at = epoch if memo_only else None  # a store read notes the count again, when it reads
            generation = store.generation(primary, fresh, memo_only, at)
            index = store.vary_index(primary, fresh, memo_only, at)
            if index is not None:
                key = meta_key(primary, vary_key(index.fields, as_fetched(headers)))
                return Lookup(_entry(store.get_meta(key, generation, fresh, memo_only, at)), Fwd.VARY_MISS,
                              generation, index.fields)
            entry = store.get_meta(meta_key(primary, ""), generation, fresh, memo_only, at)
            return Lookup(_entry(entry), Fwd.URI_MISS, generation)

        if not fresh:
            try:
                return lookup(True)  # what this process remembers, unchanged since: no thread, no store
            except _NOT_IN_MEMORY:
                pass  # read the store, on a store thread
        try:
            return await self.threads.run(lookup, False)
        except StoreErrors as e:
            log.warning("cache lookup failed, going to the origin: %s", e)
            return Lookup(None, Fwd.MISS, None)

    async def put(self, primary: str, key: str, entry: object, vary: tuple[str, ...] | None,
                  generation: int | None, tags: tuple[str, ...] = (), body: bytes | None = None,
                  purges: int | None = None) -> bool:
        """Store an entry unless the key was invalidated since `generation` (or the store failed).

        `vary`: the request fields the entry's response varies on; None leaves the key's Vary
        index as it is (a pass marker for a response that says nothing about variants).
        `tags`: its cache tags (http/tags.py), for purges by tag. `body`: the object's whole body
        when it is in hand (a small one): stored with it, in the same transaction. `purges`: the
        store's purge_mark() when the request was looked up, for a response stored after it was
        answered: not stored if a purge by prefix or tag came since (Store._purge_begins).

        Entries are stored by the store's writer thread, in batches: every entry that came while
        it stored the previous batch goes in its next transaction (Store.put_all).
        """
        if generation is None:
            return False  # the lookup failed: the store cannot be trusted with it
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queued.append((Put(primary, key, entry, vary, generation, tags, body, purges), done))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write())
        self.pending += 1
        try:
            with anyio.CancelScope(shield=True):  # as a store call: what it did is known before anything else
                stored = await done
        finally:
            self.pending -= 1
        return stored

    async def _write(self) -> None:
        """Hand the queued entries to the writer thread, those queued meanwhile in one call, until
        none is left. Every waiter is answered: what was stored, or the error that stopped it."""
        batch: list[tuple[Put, asyncio.Future[bool]]] = []
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    stored = await self.threads.write(self.store.put_all, [put for put, _ in batch])
                except StoreErrors as e:
                    log.warning("%d responses not stored: %s", len(batch), e)
                    _answer(batch, False)
                    continue
                except Exception as e:  # a fault of this batch: its waiters raise it
                    _answer(batch, e)
                    continue
                for (put, done), result in zip(batch, stored, strict=True):
                    if not result:
                        log.info("%s was invalidated while it was fetched: not stored", put.primary)
                    _answer([(put, done)], result)
        except BaseException as e:  # cancelled: nothing more is stored
            _answer([*batch, *self._queued], e)
            self._queued = []
            raise
        finally:
            self._writing = None

    async def aclose(self) -> None:
        """Wait for the entries still being stored."""
        if self._writing is not None:
            await asyncio.wait([self._writing])

    async def forget(self, obj: CachedObject) -> None:
        """Forget one stored response and its blocks: its version is gone at the origin, or it
        can no longer be read whole. A newer version stored meanwhile stays."""
        try:
            await self.threads.run(self.store.forget_meta, obj.key, obj.validator)
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

    async def purge_key(self, primary: str, stale_at: float | None) -> int:
        """Forget every stored response for a primary key, or with `stale_at` mark them stale from then."""
        return await self.threads.run(self.store.purge_key, primary, stale_at)

    async def purge_prefix(self, prefix: str, stale_at: float | None = None) -> list[str]:
        return await self.threads.run(self.store.purge_prefix, prefix, stale_at)

    async def purge_tag(self, tag: str, stale_at: float | None = None) -> list[str]:
        return await self.threads.run(self.store.purge_tag, tag, stale_at)


def _answer(waiting: list[tuple[Put, asyncio.Future[bool]]], answer: bool | BaseException) -> None:
    """Answer the waiters still waiting (one cancelled by asyncio itself, at shutdown, is gone)."""
    for _, done in waiting:
        if done.done():
            continue
        if isinstance(answer, BaseException):
            done.set_exception(answer)
        else:
            done.set_result(answer)


def _entry(value: object) -> Entry | None:
    return value if isinstance(value, (CachedObject, PassMarker)) else None
