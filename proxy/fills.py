"""Cache blocks: read from the store, or filled from the origin once and shared while filling.

One fill per block at a time, in this process (a registry of fills in progress)
and across worker processes (a lease in the store naming the fill's part file).
Readers tail the part file as it grows, so the first byte reaches every waiting
client as soon as it arrives; the block is published only once complete and
length-checked, by renaming the part file into the store.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
import anyio

from .http.freshness import Headers, get
from .http.ranges import content_range
from .origins.base import BodyAborted, Origin, OriginError, OriginResponse, Target
from .store.disk import Store, StoreErrors
from .store.handles import OpenBlocks
from .store.objects import CachedObject

log = logging.getLogger("edgecache.fill")

LEASE_TTL = 6.0  # seconds; renewed every 2 s while a fill runs, so only a dead fill's lease expires
REMOTE_POLL = 0.005  # seconds between size checks of another process's part file
LEASE_CHECK = 0.5  # seconds between checks that another process's fill is alive
WRITE_SIZE = 64 * 1024  # bytes gathered per write to a part file: readers see data this soon


class FillFailed(BodyAborted):
    """The block could not be filled; `changed` when the origin now has another version."""

    def __init__(self, message: str, *, changed: bool = False, local: bool = False) -> None:
        super().__init__(message)
        self.changed = changed
        self.local = local  # our disk failed, not the origin: serve from the origin instead


class _Abandoned(Exception):
    """Another process's fill stopped without publishing: look again."""


def _thread(func, *args):  # type: ignore[no-untyped-def]
    return anyio.to_thread.run_sync(func, *args)


@dataclass
class Progress:
    """A fill in progress in this process: readers wait on it instead of polling."""

    key: str
    lease: str
    path: str
    fd: int
    length: int
    written: int = 0
    done: bool = False
    error: FillFailed | None = None
    _event: anyio.Event = field(default_factory=anyio.Event)

    def _wake(self) -> None:
        event, self._event = self._event, anyio.Event()
        event.set()

    def advance(self, n: int) -> None:
        self.written += n
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, error: FillFailed) -> None:
        self.error = error
        self._wake()

    async def wait(self) -> None:
        with anyio.move_on_after(1.0):
            await self._event.wait()


def if_range(obj: CachedObject) -> Headers:
    """A validator that makes the origin answer 200 instead of 206 if the version changed."""
    if obj.origin_etag and not obj.origin_etag.startswith("W/"):
        return [("If-Range", obj.origin_etag)]
    last_modified = get(obj.headers, "last-modified")
    return [("If-Range", last_modified)] if last_modified else []


def same_version(obj: CachedObject, response: OriginResponse, size: int | None) -> bool:
    """Does the response carry the same validator (and size) as the stored object?"""
    if size is not None and size != obj.size:
        return False
    if obj.origin_etag is not None:
        return response.header("etag") == obj.origin_etag
    last_modified = get(obj.headers, "last-modified")
    return last_modified is not None and response.header("last-modified") == last_modified


def block_request_headers(headers: Headers, first: int, last: int, obj: CachedObject | None) -> Headers:
    """Headers for a ranged GET to the origin: the client's end-to-end fields, our Range."""
    dropped = {"range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since",
               "accept-encoding", "cache-control", "pragma"}
    kept = [(n, v) for n, v in headers if n.lower() not in dropped]
    kept += [("Range", f"bytes={first}-{last}"), ("Accept-Encoding", "identity")]
    return kept + (if_range(obj) if obj is not None else [])


class BlockSource:
    """Reads byte spans of cached objects, filling missing blocks from the origin."""

    def __init__(self, store: Store, origin: Origin, chunk_size: int) -> None:
        self.store = store
        self.origin = origin
        self.chunk_size = chunk_size
        self._active: dict[str, Progress] = {}
        self._full_body: dict[str, int] = {}  # object key -> position of a whole-body fill
        self._tasks: set[asyncio.Task] = set()
        self.open_blocks = OpenBlocks()
        self.on_changed = None  # called with the object when the origin's version changed

    async def aclose(self) -> None:
        self.open_blocks.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with anyio.CancelScope(shield=True):
                try:
                    await task
                except BaseException:  # noqa: BLE001 - shutting down
                    pass

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- reading ---------------------------------------------------------------
    async def read(
        self, obj: CachedObject, target: Target, headers: Headers, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the object, block by block, prefetching the next block."""
        first, last = start // obj.block_size, (end - 1) // obj.block_size
        for index in range(first, last + 1):
            if index < last:
                self._spawn(self.prefetch(obj, target, headers, index + 1))
            block_start, block_end = obj.block_span(index)
            lo, hi = max(start, block_start) - block_start, min(end, block_end) - block_start
            async for chunk in self.block(obj, target, headers, index, lo, hi):
                yield chunk

    async def prefetch(self, obj: CachedObject, target: Target, headers: Headers, index: int) -> None:
        key = obj.block_key(index)
        if key in self._active or obj.key in self._full_body:
            return
        try:
            if not await _thread(self.store.has_block, key):
                await self._start_fill(obj, target, headers, index)
        except StoreErrors as e:
            log.warning("prefetch skipped: %s", e)

    async def block(
        self, obj: CachedObject, target: Target, headers: Headers, index: int, lo: int, hi: int
    ) -> AsyncIterator[bytes]:
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
            try:
                progress = self._active.get(key)
                if progress is None:
                    stored = await self._stored(key, block_end - block_start)
                    if stored is not None:
                        async for chunk in self._read_stored(stored, pos, hi):
                            pos += len(chunk)
                            yield chunk
                        return
                    if await self._wait_for_full_body(obj, block_start):
                        attempts -= 1
                        continue
                    progress = await self._start_fill(obj, target, headers, index)
                path = progress.path if progress else await _thread(self.store.lease_holder, lease)
                if path is None:
                    continue  # the other fill just ended: published or failed
                async for chunk in self._tail(path, pos, hi, progress, lease, key):
                    pos += len(chunk)
                    yield chunk
            except _Abandoned:
                # Not a failure of ours: our own fill is renaming its part into the store,
                # or another process's fill ended (or died, and its lease will expire).
                attempts -= 1
                if progress is not None:
                    if not (progress.done or progress.error):
                        await progress.wait()
                elif time.monotonic() > give_up:
                    raise FillFailed(f"block {index} of {obj.key}: another worker's fill is stuck") from None
                else:
                    await anyio.sleep(0.05)
                continue
            except StoreErrors as e:
                raise FillFailed(f"store: {e}", local=True) from None
            except FillFailed as e:
                if e.changed or not e.local:
                    raise
                # Our disk failed: serve the rest of this block straight from the origin.
                async for chunk in self.direct(obj, target, headers, block_start + pos, block_start + hi):
                    pos += len(chunk)
                    yield chunk

    async def _wait_for_full_body(self, obj: CachedObject, block_start: int) -> bool:
        """When a whole-body fill of this object will reach the block, wait for it to start it."""
        position = self._full_body.get(obj.key)
        if position is None or position > block_start:
            return False
        await anyio.sleep(0.01)
        return True

    async def _stored(self, key: str, length: int) -> int | bytes | None:
        """A stored block: a descriptor of our own (or small bytes), or None if not stored."""
        fd = self.open_blocks.acquire(key)
        if fd is not None:
            return fd
        handle = await _thread(self.store.open_block, key, length)
        if handle is None:
            self.open_blocks.forget(key)
            return None
        return handle if isinstance(handle, bytes) else self.open_blocks.adopt(key, handle)

    async def _read_stored(self, stored: int | bytes, pos: int, hi: int) -> AsyncIterator[bytes]:
        if isinstance(stored, bytes):
            yield stored[pos:hi]
            return
        try:
            while pos < hi:
                data = await _thread(os.pread, stored, min(self.chunk_size, hi - pos), pos)
                if not data:
                    raise FillFailed("stored block shorter than its length", local=True)
                pos += len(data)
                yield data
        finally:
            os.close(stored)

    async def _tail(
        self, path: str, pos: int, hi: int, progress: Progress | None, lease: str, key: str
    ) -> AsyncIterator[bytes]:
        """Bytes [pos, hi) of a part file that a fill is writing."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _Abandoned() from None  # published (renamed) or removed meanwhile: look again
        next_check = time.monotonic() + LEASE_CHECK
        try:
            while pos < hi:
                available = progress.written if progress else os.fstat(fd).st_size
                if available > pos:
                    data = await _thread(os.pread, fd, min(self.chunk_size, min(available, hi) - pos), pos)
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
                    if await _thread(self.store.lease_holder, lease) != path and os.fstat(fd).st_size <= pos:
                        raise _Abandoned()
                await anyio.sleep(REMOTE_POLL)
        finally:
            os.close(fd)

    # --- filling -------------------------------------------------------------
    async def _start_fill(self, obj: CachedObject, target: Target, headers: Headers, index: int) -> Progress | None:
        """Take the block's lease and start filling it in the background; None if another fill has it."""
        progress = await self.claim(obj, index)
        if progress is not None:
            self.fill(obj, target, headers, index, progress)
        return progress

    def fill(
        self,
        obj: CachedObject,
        target: Target,
        headers: Headers,
        index: int,
        progress: Progress,
        response: OriginResponse | None = None,
    ) -> None:
        """Fill a claimed block in the background, from `response` if one is already open."""
        self._spawn(self._run_fill(obj, target, headers, index, progress, response))

    async def claim(self, obj: CachedObject, index: int) -> Progress | None:
        """The lease and part file for filling a block; None when another fill has it or it is stored."""
        key = obj.block_key(index)
        if key in self._active:
            return None
        start, end = obj.block_span(index)
        fd, path = await _thread(self.store.new_part)
        lease = "f|" + key
        claimed = await _thread(self.store.take_lease, lease, path, LEASE_TTL)
        if claimed and key not in self._active and not await _thread(self.store.has_block, key):
            progress = Progress(key, lease, path, fd, end - start)
            self._active[key] = progress
            return progress
        if claimed:
            await _thread(self.store.release_lease, lease, path)
        os.close(fd)
        os.unlink(path)
        return None

    async def _run_fill(
        self,
        obj: CachedObject,
        target: Target,
        headers: Headers,
        index: int,
        progress: Progress,
        response: OriginResponse | None,
    ) -> None:
        owned = {index: progress}
        renewer = asyncio.get_running_loop().create_task(self._renew(owned))
        try:
            start, end = obj.block_span(index)
            if response is None:
                response = await self.origin.request(
                    "GET", target, block_request_headers(headers, start, end - 1, obj)
                )
            body_start = self._check(obj, response, start, end)
            whole = response.status == 200
            if whole:
                self._full_body[obj.key] = 0
            await self._consume(obj, response, body_start, owned, whole=whole)
        except FillFailed as e:
            self._fail(owned, e)
            if e.changed and self.on_changed is not None:
                await self.on_changed(obj)
        except OriginError as e:
            self._fail(owned, FillFailed(f"origin: {e}"))
        except StoreErrors as e:
            self._fail(owned, FillFailed(f"store: {e}", local=True))
        except BaseException:
            self._fail(owned, FillFailed("fill cancelled"))
            raise
        finally:
            renewer.cancel()
            self._full_body.pop(obj.key, None)
            if response is not None:
                with anyio.CancelScope(shield=True):
                    await response.close()

    async def _renew(self, owned: dict[int, Progress]) -> None:
        """Keep the leases of a live fill from expiring, however slow the origin is."""
        while True:
            await anyio.sleep(LEASE_TTL / 3)
            for progress in list(owned.values()):
                try:
                    await _thread(self.store.renew_lease, progress.lease, progress.path, LEASE_TTL)
                except StoreErrors as e:
                    log.warning("lease not renewed: %s", e)

    def _check(self, obj: CachedObject, response: OriginResponse, start: int, end: int) -> int:
        """Where the response body starts in the object; FillFailed if it is not our version."""
        if response.status == 206:
            expected = content_range(start, end - 1, obj.size)
            if response.header("content-range") != expected or not same_version(obj, response, None):
                raise FillFailed(f"origin answered {response.header('content-range')!r}, expected {expected!r}",
                                 changed=True)
            return start
        if response.status == 200:
            if not same_version(obj, response, response.content_length):
                raise FillFailed("origin has a new version", changed=True)
            return 0  # the origin ignores Range: take the blocks from the whole body
        raise FillFailed(f"origin answered {response.status} for a block", changed=response.status in (412, 416))

    async def _consume(
        self, obj: CachedObject, response: OriginResponse, pos: int, owned: dict[int, Progress], *, whole: bool
    ) -> None:
        """Write the body into the owned blocks; in a whole body, claim later blocks on the way."""
        pending: dict[int, bytearray] = {}
        async for chunk in response.body:
            view = memoryview(chunk)
            while view:
                index = pos // obj.block_size
                block_start, block_end = obj.block_span(index)
                piece = view[: block_end - pos]
                view = view[len(piece):]
                pos += len(piece)
                if index not in owned and whole and pos - len(piece) == block_start:
                    claimed = await self.claim(obj, index)
                    if claimed is not None:
                        owned[index] = claimed
                if whole:
                    self._full_body[obj.key] = pos
                progress = owned.get(index)
                if progress is None:
                    continue
                buffer = pending.setdefault(index, bytearray())
                buffer += piece
                if len(buffer) >= WRITE_SIZE or pos == block_end:
                    await self._write(progress, bytes(buffer))
                    buffer.clear()
                if pos == block_end:
                    await self._publish(owned.pop(index))
                    pending.pop(index, None)
            if not owned and not whole:
                return
        if owned:
            raise FillFailed(f"origin body ended at byte {pos} of {obj.size}")

    async def _write(self, progress: Progress, data: bytes) -> None:
        await _thread(os.write, progress.fd, data)
        progress.advance(len(data))

    async def _publish(self, progress: Progress) -> None:
        try:
            os.close(progress.fd)
            await _thread(self.store.publish_block, progress.key, progress.path, progress.length)
        except StoreErrors as e:
            log.warning("block %s not stored: %s", progress.key, e)
        finally:
            progress.finish()  # readers holding the part file read it to the end either way
            self._active.pop(progress.key, None)
            await _thread(self.store.release_lease, progress.lease, progress.path)
            _unlink(progress.path)

    def abandon(self, progress: Progress) -> None:
        """Give up a claimed block without filling it."""
        self._fail({0: progress}, FillFailed("fill abandoned", local=True))

    def _fail(self, owned: dict[int, Progress], error: FillFailed) -> None:
        for progress in owned.values():
            progress.fail(error)
            self._active.pop(progress.key, None)
            try:
                os.close(progress.fd)
            except OSError:
                pass
            _unlink(progress.path)
            self._spawn(_thread(self.store.release_lease, progress.lease, progress.path))
        owned.clear()

    # --- straight from the origin -------------------------------------------
    async def direct(
        self, obj: CachedObject, target: Target, headers: Headers, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) from the origin without storing them (the store is unusable)."""
        response = await self.origin.request("GET", target, block_request_headers(headers, start, end - 1, obj))
        try:
            pos = self._check(obj, response, start, end)
            async for chunk in response.body:
                piece = chunk[max(0, start - pos): max(0, end - pos)]
                pos += len(chunk)
                if piece:
                    yield piece
                if pos >= end:
                    return
            raise FillFailed("origin body ended early")
        finally:
            await response.close()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
