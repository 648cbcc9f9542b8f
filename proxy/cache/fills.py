"""Block fills: each block is written once, from the origin into a part file, then published.

One fill per block at a time, in this process (a registry of fills in progress)
and across worker processes (a lease in the store naming the fill's part file).
A block is published only once complete and length-checked, by renaming its part
file into the store. A whole-body fill (a 200) claims each block as the body
reaches it, and holds a whole-body lease so other workers wait for it.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..files import write_all
from ..http.cache import BlockAnswer, block_answer, fetch_headers
from ..http.directives import Headers, get
from ..origins.base import BodyAborted, Origin, OriginError, OriginResponse, Target
from ..store.checksums import Running
from ..store.disk import Store, StoreErrors
from ..store.objects import CachedObject
from .threads import StoreThreads

log = logging.getLogger("edgecache.fill")

LEASE_TTL = 6.0  # seconds; renewed every 2 s while a fill runs, so only a dead fill's lease expires
WRITE_SIZE = 64 * 1024  # bytes gathered per write to a part file: readers see data this soon


class FillFailed(BodyAborted):
    """The block could not be filled; `changed` when the origin now has another version."""

    def __init__(self, message: str, *, changed: bool = False, local: bool = False,
                 origin: OriginError | None = None) -> None:
        super().__init__(message)
        self.changed = changed
        self.local = local  # our disk failed, not the origin: serve from the origin instead
        self.origin = origin  # the origin failed (unreachable, timeout, invalid): what it did


@dataclass
class Progress:
    """A fill in progress in this process: readers wait on it instead of polling."""

    key: str
    lease: str
    path: str
    fd: int
    length: int
    written: int = 0
    status: int | None = None  # the origin's status, once it answered the fill's request well
    done: bool = False
    checksum: Running = field(default_factory=Running)  # of the bytes written, stored with the block
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

    def answered(self, status: int) -> None:
        self.status = status
        self._wake()

    async def wait(self) -> None:
        with anyio.move_on_after(1.0):
            await self._event.wait()

    async def origin_answer(self) -> int:
        """The origin's status for this fill, once it answered (FillFailed if it could not)."""
        while self.status is None and not self.done and self.error is None:
            await self.wait()
        if self.error is not None:
            raise self.error
        return self.status or 200


def if_range(obj: CachedObject) -> Headers:
    """The strong validator that makes the origin answer 200 instead of 206 if the version changed."""
    etag = get(obj.headers, "etag")
    if etag is not None and not etag.startswith("W/"):
        return [("If-Range", etag)]
    last_modified = get(obj.headers, "last-modified")
    return [("If-Range", last_modified)] if last_modified else []


def block_request(obj: CachedObject, client: Headers, start: int, end: int) -> Headers:
    """Headers for a ranged GET of bytes [start, end) of a sliceable object."""
    return fetch_headers(client, (start, end - 1), if_range(obj))


def version_id(obj: CachedObject) -> str:
    """Names one stored version (its first block's key): fills of two versions never mix."""
    return obj.block_key(0)


def whole_lease(obj: CachedObject) -> str:
    return "w|" + version_id(obj)


ChangedCallback = Callable[[CachedObject], Awaitable[None]]


class Filler:
    """Claims blocks and fills them in the background from origin responses."""

    def __init__(self, store: Store, threads: StoreThreads, origin: Origin, on_changed: ChangedCallback) -> None:
        self.store = store
        self.threads = threads
        self.origin = origin
        self.on_changed = on_changed  # the origin has another version: forget the stored one
        self.active: dict[str, Progress] = {}
        self.whole: dict[str, int] = {}  # version_id -> position of a whole-body fill in this process
        self._tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Cancel the fills and wait for them, and for what they start while ending (lease releases)."""
        while self._tasks:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with anyio.CancelScope(shield=True):
                    try:
                        await task
                    except BaseException:  # noqa: BLE001 - shutting down
                        pass
                # Awaiting a task that was already done does not yield, so its done callback
                # has not run yet: without this, the loop above would spin forever.
                self._tasks.discard(task)

    async def settle(self) -> None:
        """Wait until the block fills running in this process have published or failed."""
        while self.active:
            await next(iter(self.active.values())).wait()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run in the background until done or aclose()."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def claim(self, obj: CachedObject, index: int) -> Progress | None:
        """The lease and part file for filling a block; None when another fill has it or it is stored."""
        key = obj.block_key(index)
        if key in self.active:
            return None
        start, end = obj.block_span(index)
        fd, path = await self.threads.run(self.store.new_part)
        lease = "f|" + key
        claimed = False
        try:
            claimed = await self.threads.run(self.store.take_lease, lease, path, LEASE_TTL)
            if claimed and key not in self.active and not await self.threads.run(self.store.has_block, key):
                progress = Progress(key, lease, path, fd, end - start)
                self.active[key] = progress
                return progress
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(discard, fd, path)
                if claimed:  # a lease left behind would make every reader wait for it to expire
                    await self._release(lease, path)
            raise
        await anyio.to_thread.run_sync(discard, fd, path)
        if claimed:
            await self._release(lease, path)
        return None

    async def start(self, obj: CachedObject, target: Target, headers: Headers, index: int) -> Progress | None:
        """Claim one block of a sliceable object and fill it by range; None if another fill has it."""
        progress = await self.claim(obj, index)
        if progress is not None:
            self.fill(obj, target, headers, index, progress, None)
        return progress

    def fill(
        self, obj: CachedObject, target: Target, headers: Headers, index: int, progress: Progress,
        response: OriginResponse | None,
    ) -> None:
        """Fill a claimed block in the background, from `response` if the first one is already open."""
        self.spawn(self._run(obj, target, headers, index, progress, response))

    async def _run(
        self, obj: CachedObject, target: Target, headers: Headers, index: int, progress: Progress,
        response: OriginResponse | None,
    ) -> None:
        owned = {index: progress}
        held: list[tuple[str, str]] = []  # other leases of this fill: the whole-body lease
        renewer = asyncio.get_running_loop().create_task(self._renew(owned, held))
        whole_owner = None
        try:
            start, end = obj.block_span(index)
            if response is None:
                response = await self.origin.request("GET", target, block_request(obj, headers, start, end))
                answer = block_answer(response.status, response.headers, obj.validator, obj.size, start, end - 1)
                if answer is BlockAnswer.CHANGED:
                    raise FillFailed(f"origin has another version (status {response.status})", changed=True)
                if answer is BlockAnswer.BAD:
                    raise FillFailed(f"origin answered {response.status} {get(response.headers, 'content-range')}"
                                     f" for bytes {start}-{end - 1}")
            progress.answered(response.status)
            whole = response.status == 200
            if whole:
                self.whole[version_id(obj)] = 0
                whole_owner = progress.path
                await self.threads.run(self.store.take_lease, whole_lease(obj), whole_owner, LEASE_TTL)
                held.append((whole_lease(obj), whole_owner))
            await self._consume(obj, response, 0 if whole else start, owned, whole=whole)
        # The stored object is forgotten before its readers hear of the failure: a client whose
        # response was cut and asks again must not be served the same version again.
        except FillFailed as e:
            if e.changed or not obj.sliceable:
                with anyio.CancelScope(shield=True):
                    await self.on_changed(obj)
            await self._fail(owned, e)
        except OriginError as e:
            await self._forget_unfinished(obj)
            await self._fail(owned, FillFailed(f"origin: {e}", origin=e))
        except StoreErrors as e:
            await self._forget_unfinished(obj)
            await self._fail(owned, FillFailed(f"store: {e}", local=True))
        except BaseException:
            await self._forget_unfinished(obj)
            await self._fail(owned, FillFailed("fill cancelled"))
            raise
        finally:
            renewer.cancel()
            if whole_owner is not None:
                self.whole.pop(version_id(obj), None)
                with anyio.CancelScope(shield=True):
                    await self._release(whole_lease(obj), whole_owner)
            if response is not None:
                with anyio.CancelScope(shield=True):
                    await response.close()

    async def _forget_unfinished(self, obj: CachedObject) -> None:
        """An object without a strong validator is filled by one response only: if that fill
        fails, the object can never be completed and must not be served cut short."""
        if not obj.sliceable:
            with anyio.CancelScope(shield=True):
                await self.on_changed(obj)

    async def _renew(self, owned: dict[int, Progress], held: list[tuple[str, str]]) -> None:
        """Keep the leases of a live fill from expiring, however slow the origin is."""
        while True:
            await anyio.sleep(LEASE_TTL / 3)
            for lease, owner in [(p.lease, p.path) for p in owned.values()] + held:
                try:
                    await self.threads.run(self.store.renew_lease, lease, owner, LEASE_TTL)
                except StoreErrors as e:
                    log.warning("lease not renewed: %s", e)

    async def _consume(
        self, obj: CachedObject, response: OriginResponse, pos: int, owned: dict[int, Progress], *, whole: bool
    ) -> None:
        """Write the body into the owned blocks; in a whole body, claim later blocks on the way."""
        pending: dict[int, bytearray] = {}
        async for chunk in response.body:
            view = memoryview(chunk)
            while view:
                index = pos // obj.block_size
                if index >= obj.block_count:
                    raise FillFailed(f"origin sent more than {obj.size} bytes")
                block_start, block_end = obj.block_span(index)
                piece = view[: block_end - pos]
                view = view[len(piece):]
                pos += len(piece)
                if index not in owned and whole and pos - len(piece) == block_start:
                    claimed = await self.claim(obj, index)
                    if claimed is not None:
                        owned[index] = claimed
                if whole:
                    self.whole[version_id(obj)] = pos
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
            if not whole and not owned:
                return
        if pos != obj.size and (whole or owned):
            raise FillFailed(f"origin body ended at byte {pos} of {obj.size}")

    async def _write(self, progress: Progress, data: bytes) -> None:
        progress.checksum.update(data)
        await anyio.to_thread.run_sync(write_all, progress.fd, data)
        progress.advance(len(data))

    async def _publish(self, progress: Progress) -> None:
        try:
            fd, progress.fd = progress.fd, -1
            await anyio.to_thread.run_sync(os.close, fd)
            await self.threads.run(self.store.publish_block, progress.key, progress.path, progress.length,
                                   progress.checksum.value())
        except StoreErrors as e:
            log.warning("block %s not stored: %s", progress.key, e)
        finally:
            progress.finish()  # readers holding the part file read it to the end either way
            self.active.pop(progress.key, None)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_unlink, progress.path)
                await self._release(progress.lease, progress.path)

    async def _release(self, lease: str, owner: str) -> None:
        try:
            await self.threads.run(self.store.release_lease, lease, owner)
        except StoreErrors as e:
            log.warning("lease %s not released: %s", lease, e)

    async def abandon(self, progress: Progress) -> None:
        """Give up a claimed block without filling it."""
        await self._fail({0: progress}, FillFailed("fill abandoned", local=True))

    async def _fail(self, owned: dict[int, Progress], error: FillFailed) -> None:
        """Wake the readers, remove the part files and release the leases, even when cancelled:
        a lease left behind would make every other reader wait for it to expire."""
        failed = list(owned.values())
        owned.clear()
        for progress in failed:
            progress.fail(error)
            self.active.pop(progress.key, None)
        with anyio.CancelScope(shield=True):
            for progress in failed:
                fd, progress.fd = progress.fd, -1
                await anyio.to_thread.run_sync(discard, fd, progress.path)
                await self._release(progress.lease, progress.path)


def discard(fd: int, path: str) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
    _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
