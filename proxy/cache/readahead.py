"""Read-ahead: while a video is read block after block, the next blocks are filled in the background.

A block served right after the block before it (by any client) marks the object as read
sequentially; then the next `depth` blocks are filled, at most `depth` at a time per object.
A seek (a block whose predecessor was not served lately) starts nothing.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..http.directives import Headers, get
from ..http.headers import content_type_for
from ..origins.base import Target
from ..store.disk import StoreErrors
from ..store.objects import CachedObject
from .fills import FillFailed, Progress, version_id

log = logging.getLogger("edgecache.fill")

TRACKED_OBJECTS = 1024  # objects whose recent reads are remembered, least recently read forgotten first
RECENT_BLOCKS = 16  # served block numbers remembered per object
KNOWN_BLOCKS = 256  # block numbers per object known to be stored or filled, not checked again

_FAILURES: tuple[type[Exception], ...] = (FillFailed, *StoreErrors)

Prefetch = Callable[[CachedObject, Target, Headers, int], Awaitable[Progress | None]]
Spawn = Callable[[Coroutine[Any, Any, None]], object]


class _Reads:
    """What one object's readers did lately."""

    def __init__(self) -> None:
        self.served: deque[int] = deque(maxlen=RECENT_BLOCKS)
        self.known: OrderedDict[int, None] = OrderedDict()
        self.in_flight: set[int] = set()


class ReadAhead:
    def __init__(self, depth: int, prefetch: Prefetch, spawn: Spawn) -> None:
        self.depth = depth
        self.prefetch = prefetch  # starts a block's fill: its Progress, or None if stored or filled elsewhere
        self.spawn = spawn
        self._objects: OrderedDict[str, _Reads] = OrderedDict()

    def in_flight(self) -> int:
        return sum(len(reads.in_flight) for reads in self._objects.values())

    def served(self, obj: CachedObject, target: Target, fields: Callable[[], Headers], index: int) -> None:
        """The read path serves block `index` of `obj`: read ahead if it follows the one before
        (with the request's `fields`, made only then)."""
        if not self.depth or not obj.sliceable or not _is_media(obj, target):
            return
        vid = version_id(obj)
        reads = self._objects.pop(vid, None) or _Reads()
        self._objects[vid] = reads
        while len(self._objects) > TRACKED_OBJECTS:
            self._objects.popitem(last=False)
        sequential = index - 1 in reads.served
        if index not in reads.served:
            reads.served.append(index)
        if not sequential:
            return
        last = (obj.size - 1) // obj.block_size
        for ahead in range(index + 1, min(index + self.depth, last) + 1):
            if len(reads.in_flight) >= self.depth:
                return
            if ahead not in reads.in_flight and ahead not in reads.known:
                reads.in_flight.add(ahead)
                self.spawn(self._fill(reads, obj, target, fields(), ahead))

    async def _fill(self, reads: _Reads, obj: CachedObject, target: Target, headers: Headers, index: int) -> None:
        try:
            progress = await self.prefetch(obj, target, headers, index)
            while progress is not None and not (progress.done or progress.error):
                await progress.wait()
            if progress is None or progress.error is None:
                reads.known[index] = None
                while len(reads.known) > KNOWN_BLOCKS:
                    reads.known.popitem(last=False)
        except _FAILURES as e:
            log.warning("read-ahead of block %d of %s failed: %s", index, obj.key, e)
        finally:
            reads.in_flight.discard(index)


def _is_media(obj: CachedObject, target: Target) -> bool:
    kind = get(obj.headers, "content-type") or content_type_for(target.path)
    return kind.lower().startswith(("video/", "audio/"))
