"""Reading stored objects: byte spans from stored blocks, from fills in progress, or filled now.

Readers tail a block's part file as it grows, so the first byte reaches every
waiting client as soon as it arrives. A missing block of a sliceable object is
filled by range; an object without a strong validator is never patched from a
second response: a missing block there means the object is gone.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO

import anyio

from ..http.cache import BlockAnswer, block_answer
from ..http.directives import Headers
from ..origins.base import Origin, Target
from ..store.disk import Store, StoreErrors
from ..store.handles import OpenBlocks
from ..store.objects import CachedObject
from ..streaming import Chunk, FileSpan, size_of
from .fills import LEASE_TTL, Filler, FillFailed, Progress, block_request, version_id, whole_lease
from .readahead import ReadAhead
from .threads import StoreThreads

log = logging.getLogger("edgecache.fill")

REMOTE_POLL = 0.005  # seconds between size checks of another process's part file
LEASE_CHECK = 0.5  # seconds between checks that another process's fill is alive
AT_HAND_BLOCKS = 2  # a span over more blocks is read block by block, one descriptor open at a time
IN_MEMORY = 64 * 1024  # blocks up to this size are kept at hand as bytes (OpenBlocks bounds how many)


_FILL_OR_STORE: tuple[type[Exception], ...] = (FillFailed, *StoreErrors)


@dataclass(frozen=True)
class Coming:
    """A block on its way from the origin: the origin's status for its fill, and whether that
    fill was another request's (RFC 9211 section 2.6: this one was collapsed into it)."""

    status: int
    collapsed: bool


class _Abandoned(Exception):
    """Another fill stopped without publishing, or published meanwhile: look again."""


class BlockSource:
    """Reads byte spans of cached objects, filling missing blocks from the origin."""

    def __init__(
        self, store: Store, threads: StoreThreads, origin: Origin, filler: Filler, chunk_size: int, read_ahead: int = 0
    ) -> None:
        self.store = store
        self.threads = threads
        self.origin = origin
        self.filler = filler
        self.chunk_size = chunk_size
        self.open_blocks = OpenBlocks()
        self.read_ahead = ReadAhead(read_ahead, self.prefetch, filler.spawn)

    def close(self) -> None:
        self.open_blocks.close()

    async def read(
        self, obj: CachedObject, target: Target, headers: Headers, start: int, end: int
    ) -> AsyncIterator[Chunk]:
        """Bytes [start, end) of the object, block by block, prefetching the next block."""
        first, last = start // obj.block_size, (end - 1) // obj.block_size
        for index in range(first, last + 1):
            if index < last and obj.sliceable and not self.open_blocks.holds(obj.block_key(index + 1)):
                self.filler.spawn(self._prefetch_next(obj, target, headers, index + 1))
            self.read_ahead.served(obj, target, lambda: headers, index)
            block_start, block_end = obj.block_span(index)
            lo, hi = max(start, block_start) - block_start, min(end, block_end) - block_start
            async for chunk in self.block(obj, target, headers, index, lo, hi):
                yield chunk

    def at_hand(
        self, obj: CachedObject, target: Target, fields: Callable[[], Headers], start: int, end: int,
        borrow: bool = False
    ) -> list[Chunk] | None:
        """Bytes [start, end) of the object when they lie in at most AT_HAND_BLOCKS stored blocks,
        all kept at hand (a hit), else None: then `read` them. Bytes, or spans of descriptors
        that are the caller's to close; with `borrow`, of the files' own descriptors instead, valid
        until the caller next yields to the event loop (OpenBlocks.borrow), not to be closed."""
        first, last = start // obj.block_size, (end - 1) // obj.block_size
        if last - first >= AT_HAND_BLOCKS:
            return None
        chunks: list[Chunk] = []
        complete = False
        try:
            for index in range(first, last + 1):
                key = obj.block_key(index)
                if key in self.filler.active:
                    return None
                try:
                    held = self.open_blocks.borrow(key) if borrow else self.open_blocks.acquire(key)
                except StoreErrors:  # no descriptor to spare, say: `read` copes with the store's failures
                    return None
                if held is None:
                    return None
                block_start, block_end = obj.block_span(index)
                lo, hi = max(start, block_start) - block_start, min(end, block_end) - block_start
                if isinstance(held, int):
                    chunks.append(FileSpan(held, lo, hi - lo, self.open_blocks.pages(key) if borrow else None))
                else:
                    chunks.append(held[lo:hi] if lo or hi < len(held) else held)
                self.read_ahead.served(obj, target, fields, index)
            complete = True
            return chunks
        finally:
            if not complete and not borrow:
                for chunk in chunks:
                    if isinstance(chunk, FileSpan):
                        os.close(chunk.fd)

    async def _prefetch_next(self, obj: CachedObject, target: Target, headers: Headers, index: int) -> None:
        await self.prefetch(obj, target, headers, index)

    async def prefetch(self, obj: CachedObject, target: Target, headers: Headers, index: int) -> Progress | None:
        """Start filling a block in the background: its fill's Progress, None if stored or filled elsewhere."""
        key = obj.block_key(index)
        if key in self.filler.active or version_id(obj) in self.filler.whole:
            return self.filler.active.get(key)
        if self.open_blocks.holds(key):
            return None  # stored, and open at hand
        try:
            if not await self.threads.run(self.store.has_block, key):
                return await self.filler.start(obj, target, headers, index)
        except StoreErrors as e:
            log.warning("prefetch skipped: %s", e)
        return None

    async def ready(self, obj: CachedObject, target: Target, headers: Headers, index: int) -> Coming | None:
        """Make sure a block is coming: None once it is stored (or its fill has every byte
        already), else how, once the origin has answered its fill: a fill started now, or one
        under way (here, or in another worker whose part file has bytes). FillFailed when it
        cannot be filled (`origin`: what the origin did). An object that is not sliceable comes
        whole from one response or not at all: with none under way, it is gone (changed)."""
        key = obj.block_key(index)
        lease = "f|" + key
        start, end = obj.block_span(index)
        give_up = time.monotonic() + 3 * LEASE_TTL
        while True:
            # A fill that has every byte of the block already (it is being published) brings
            # nothing more from the origin: the block counts as stored.
            progress = self.filler.active.get(key)
            if progress is not None:
                return None if progress.written >= progress.length else \
                    Coming(await progress.origin_answer(), collapsed=True)
            position = self.filler.whole.get(version_id(obj))
            if position is not None:  # our whole-body fill, answered, is on its way to the block
                return None if position >= end else Coming(200, collapsed=True)
            elsewhere = await self.threads.run(self._filled_elsewhere, obj, lease)
            if elsewhere is None:
                if not obj.sliceable:
                    if await self.threads.run(self.store.has_block, key):
                        return None  # its whole-body fill just ended
                    await self.filler.on_changed(obj)
                    raise FillFailed(f"block {index} of {obj.key} is gone", changed=True)
                progress = await self.filler.start(obj, target, headers, index)
                if progress is not None:
                    return Coming(await progress.origin_answer(), collapsed=False)
                if await self.threads.run(self.store.has_block, key):
                    return None
                continue
            written = await anyio.to_thread.run_sync(_written, elsewhere[0])
            if elsewhere[1] == 206 and written >= end - start:  # the block's own part file, whole
                return None
            if written:
                return Coming(elsewhere[1], collapsed=True)
            if time.monotonic() > give_up:
                raise FillFailed(f"block {index} of {obj.key}: another worker's fill is stuck")
            else:
                await anyio.sleep(REMOTE_POLL * 4)

    def _filled_elsewhere(self, obj: CachedObject, lease: str) -> tuple[str, int] | None:
        """On a store thread: the part file of another worker's fill of the block (its own fill by
        range, 206, or a whole-body fill, 200), or None."""
        path = self.store.lease_holder(lease)
        if path is not None:
            return path, 206
        path = self.store.lease_holder(whole_lease(obj))
        return (path, 200) if path is not None else None

    async def block(
        self, obj: CachedObject, target: Target, headers: Headers, index: int, lo: int, hi: int
    ) -> AsyncIterator[Chunk]:
        """Bytes [lo, hi) of one block: stored, being filled (here or elsewhere), or filled now."""
        key = obj.block_key(index)
        block_start, block_end = obj.block_span(index)
        lease = "f|" + key
        pos = lo
        attempts = 0
        give_up = time.monotonic() + 3 * LEASE_TTL
        while pos < hi:
            attempts += 1
            if attempts > 5:
                raise FillFailed(f"block {index} of {obj.key} could not be filled")
            progress: Progress | None = None
            try:
                progress = self.filler.active.get(key)
                if progress is None:
                    stored = await self._stored(key, block_end - block_start)
                    if stored is not None:
                        async for chunk in self._read_stored(stored, pos, hi):
                            pos += size_of(chunk)
                            yield chunk
                        return
                    if await self._wait_for_whole_body(obj, block_start):
                        attempts -= 1
                        continue
                    if obj.sliceable:
                        progress = await self.filler.start(obj, target, headers, index)
                path = progress.path if progress else await self.threads.run(self.store.lease_holder, lease)
                if path is None:
                    if not obj.sliceable:  # evicted, or its one fill failed: the object is gone
                        await self.filler.on_changed(obj)
                        raise FillFailed(f"block {index} of {obj.key} is gone", changed=True)
                    continue  # the other fill just ended: published or failed
                async for chunk in self._tail(path, pos, hi, progress, lease):
                    pos += size_of(chunk)
                    yield chunk
            except _Abandoned:
                attempts -= 1
                if progress is not None:
                    if not (progress.done or progress.error):
                        await progress.wait()
                elif time.monotonic() > give_up:
                    raise FillFailed(f"block {index} of {obj.key}: another worker's fill is stuck") from None
                else:
                    await anyio.sleep(0.05)
                continue
            except _FILL_OR_STORE as e:
                local = not isinstance(e, FillFailed) or e.local
                if not local or (isinstance(e, FillFailed) and e.changed) or not obj.sliceable:
                    raise
                # Our disk failed: serve the rest of this block straight from the origin.
                log.warning("store failed, block %d of %s from the origin: %s", index, obj.key, e)
                async for chunk in self.direct(obj, target, headers, block_start + pos, block_start + hi):
                    pos += size_of(chunk)
                    yield chunk

    async def _wait_for_whole_body(self, obj: CachedObject, block_start: int) -> bool:
        """When a whole-body fill (here or in another worker) will reach the block, wait a moment."""
        position = self.filler.whole.get(version_id(obj))
        if position is not None and position <= block_start:
            await anyio.sleep(0.01)
            return True
        if position is None and await self.threads.run(self.store.lease_holder, whole_lease(obj)) is not None:
            await anyio.sleep(REMOTE_POLL * 4)
            return True
        return False

    async def _stored(self, key: str, length: int) -> int | bytes | None:
        """A stored block: a descriptor of our own (or small bytes), or None if not stored."""
        held = self.open_blocks.acquire(key)
        if held is not None:
            return held
        handle = await self.threads.run(self._open, key, length)
        if handle is None:
            self.open_blocks.forget(key)
            return None
        return self.open_blocks.adopt(key, handle)

    def _open(self, key: str, length: int) -> IO[bytes] | bytes | None:
        """On a store thread: the stored block, checked (a damaged one is dropped: None, and it is
        filled again), small ones read into memory (kept at hand, they are then served with no file
        read at all)."""
        return self.store.read_block(key, length) if length <= IN_MEMORY else self.store.open_block(key, length)

    async def _read_stored(self, stored: int | bytes, pos: int, hi: int) -> AsyncIterator[Chunk]:
        """A stored block's bytes [pos, hi): small ones from memory, else as a span of its file."""
        if isinstance(stored, bytes):
            yield stored[pos:hi] if pos or hi < len(stored) else stored
            return
        try:
            yield FileSpan(stored, pos, hi - pos)
        finally:
            os.close(stored)

    async def _tail(
        self, path: str, pos: int, hi: int, progress: Progress | None, lease: str
    ) -> AsyncIterator[bytes]:
        """Bytes [pos, hi) of a part file that a fill is writing."""
        try:
            fd = await anyio.to_thread.run_sync(_open_read, path)
        except FileNotFoundError:
            raise _Abandoned() from None  # published (renamed) or removed meanwhile: look again
        next_check = time.monotonic() + LEASE_CHECK
        try:
            while pos < hi:
                available = progress.written if progress else await anyio.to_thread.run_sync(_size, fd)
                if available > pos:
                    want = min(self.chunk_size, min(available, hi) - pos)
                    data = await anyio.to_thread.run_sync(os.pread, fd, want, pos)
                    pos += len(data)
                    yield data
                    continue
                if progress is not None:
                    if progress.error is not None:
                        raise progress.error
                    await progress.wait()
                    continue
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + LEASE_CHECK
                    holder = await self.threads.run(self.store.lease_holder, lease)
                    if holder != path and await anyio.to_thread.run_sync(_size, fd) <= pos:
                        raise _Abandoned()
                await anyio.sleep(REMOTE_POLL)
        finally:
            os.close(fd)

    async def direct(
        self, obj: CachedObject, target: Target, headers: Headers, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a sliceable object from the origin, not stored (the store is unusable)."""
        response = await self.origin.request("GET", target, block_request(obj, headers, start, end))
        try:
            answer = block_answer(response.status, response.headers, obj.validator, obj.size, start, end - 1)
            if answer in (BlockAnswer.CHANGED, BlockAnswer.BAD):
                raise FillFailed(f"origin answered {response.status} for bytes {start}-{end - 1}",
                                 changed=answer is BlockAnswer.CHANGED)
            pos = start if answer is BlockAnswer.BODY else 0
            async for chunk in response.body:
                piece = chunk[max(0, start - pos): max(0, end - pos)]
                pos += size_of(chunk)
                if piece:
                    yield piece
                if pos >= end:
                    return
            raise FillFailed("origin body ended early")
        finally:
            await response.close()


def _open_read(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _size(fd: int) -> int:
    return os.fstat(fd).st_size


def _written(path: str) -> int:
    """The bytes in another worker's part file (0: none yet, or gone)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
