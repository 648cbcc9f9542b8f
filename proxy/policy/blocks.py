"""A cache of objects stored as fixed-size blocks, whatever decides which objects stay.

An object is cached as some of its blocks. Space is freed a block at a time, from the
object the policy picks, in the order that keeps what a player needs: the middle of a
film goes first from its end backwards, then its last block (where an MP4 not made for
streaming keeps its index), the first block last. A whole-object request touches the
object (a hit for the blocks it has) and fills the blocks it lacks.
"""
from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass


class Reason(enum.Enum):
    """Why a block was evicted."""

    SPACE = "space"  # room for another block
    ENTRIES = "entries"  # the policy's memory bound: too many objects remembered
    REFUSED = "refused"  # a block not kept, once newer refused blocks need its place


@dataclass(frozen=True, slots=True)
class Eviction:
    key: Hashable
    block: int
    size: int
    reason: Reason


@dataclass(frozen=True, slots=True)
class Stored:
    """Keep the block; evict these first."""

    evicted: tuple[Eviction, ...] = ()


@dataclass(frozen=True, slots=True)
class Refused:
    """Do not keep the block (the client still gets it); these were evicted all the same."""

    evicted: tuple[Eviction, ...] = ()


Fill = Stored | Refused
KEPT = Stored()
REFUSED = Refused()


class Entry:
    """An object with blocks in the cache: its size and block count, its cached blocks' sizes
    by index and their sum."""

    __slots__ = ("blocks", "bytes", "count", "size")

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self.count = count
        self.blocks: dict[int, int] = {}
        self.bytes = 0

    def least_worth(self) -> int:
        """The block to evict first: the highest in the middle, then the last, then the first."""
        blocks = self.blocks
        if len(blocks) == 1:
            return next(iter(blocks))
        last = self.count - 1
        middle = max((i for i in blocks if 0 < i < last), default=0)
        return middle or (last if last in blocks else max(blocks))


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


class BlockCache(ABC):
    """Blocks of objects within `capacity` bytes; at most `max_entries` objects remembered
    (cached or not: a policy's ghosts count). Subclasses say where objects go and which one
    gives up a block."""

    def __init__(self, capacity: int, block_size: int, max_entries: int) -> None:
        if capacity <= 0 or block_size <= 0 or max_entries <= 0:
            raise ValueError("capacity, block size and entry bound must be positive")
        self.capacity = capacity
        self.block_size = block_size
        self.max_entries = max_entries
        self.used = 0
        self.count = 0  # blocks kept

    # --- what a policy decides ------------------------------------------------
    @abstractmethod
    def find(self, key: Hashable) -> Entry | None:
        """The object's entry when some of its blocks are cached."""

    @abstractmethod
    def touch(self, key: Hashable) -> tuple[Eviction, ...]:
        """A request for an object with blocks at hand (a hit, whole or partial); what that
        evicted (a refused object's blocks may be kept now)."""

    def held(self, key: Hashable) -> dict[int, int] | None:
        """The object's blocks the store has (by index: their sizes), kept or not."""
        entry = self.find(key)
        return entry.blocks if entry is not None else None

    @abstractmethod
    def _admit(self, key: Hashable, index: int, size: int, count: int, evicted: list[Eviction]) -> Entry | None:
        """Block `index` of an object of `size` bytes in `count` blocks, none cached: its new
        entry, or None to refuse it; what making room for one more entry evicted goes in `evicted`."""

    @abstractmethod
    def _victim(self, exclude: Hashable) -> tuple[Hashable, Entry] | None:
        """The object to give up a block (never `exclude`, the one being filled)."""

    @abstractmethod
    def _resized(self, key: Hashable, entry: Entry, delta: int) -> None:
        """The entry's cached bytes changed by `delta` (already applied to it)."""

    @abstractmethod
    def _emptied(self, key: Hashable, entry: Entry, reason: Reason) -> None:
        """The entry's last block was evicted: forget it (or remember it as a ghost)."""

    @abstractmethod
    def forget(self, key: Hashable) -> None:
        """The object is gone from the store (purged, replaced): drop everything about it."""

    # --- shared mechanics -----------------------------------------------------
    @abstractmethod
    def _adopt(self, key: Hashable, size: int, count: int, evicted: list[Eviction]) -> Entry:
        """A new entry for an object found cached with no decision about it (see adopt)."""

    def fill(self, key: Hashable, index: int, size: int, object_size: int, object_blocks: int = 0) -> Fill:
        """Block `index` (`size` bytes) of an object of `object_size` bytes, fetched from the
        origin: keep it, or not, and what to evict for it. `object_blocks`: the object's block
        count, when its blocks are not of this cache's block size."""
        return self._place(key, index, size, object_size, object_blocks, admit=True)

    def adopt(self, key: Hashable, index: int, size: int, object_size: int, object_blocks: int = 0) -> Fill:
        """A block the store holds that the policy knows nothing of (found at a start without
        the policy's saved state): kept as a newcomer, without asking admission."""
        return self._place(key, index, size, object_size, object_blocks, admit=False)

    def _place(self, key: Hashable, index: int, size: int, object_size: int, object_blocks: int,
               admit: bool) -> Fill:
        evicted: list[Eviction] = []
        entry = self.find(key)
        if entry is None:
            if size > self.capacity:
                return REFUSED
            count = object_blocks or block_count(object_size, self.block_size)
            entry = self._admit(key, index, object_size, count, evicted) if admit else \
                self._adopt(key, object_size, count, evicted)
            if entry is None:
                return Refused(tuple(evicted)) if evicted else REFUSED
        elif index in entry.blocks:
            return KEPT
        self._make_room(size, key, evicted)
        if self.used + size > self.capacity:
            if not entry.blocks:
                self._emptied(key, entry, Reason.SPACE)
            return Refused(tuple(evicted))
        entry.blocks[index] = size
        entry.bytes += size
        self.used += size
        self.count += 1
        self._resized(key, entry, size)
        return Stored(tuple(evicted)) if evicted else KEPT

    def resize(self, capacity: int) -> tuple[Eviction, ...]:
        """A new capacity (the store measured what the rest of its directory takes): what fitting
        the blocks into it evicts."""
        self.capacity = capacity
        evicted: list[Eviction] = []
        self._make_room(0, None, evicted)
        return tuple(evicted)

    def drop(self, key: Hashable, index: int) -> None:
        """A block the store no longer has (removed behind the policy's back)."""
        entry = self.find(key)
        if entry is not None and index in entry.blocks:
            self._take(key, entry, index, Reason.SPACE)

    def _make_room(self, size: int, exclude: Hashable, evicted: list[Eviction]) -> None:
        while self.used + size > self.capacity:
            victim = self._victim(exclude)
            if victim is None:
                break
            key, entry = victim
            evicted.append(self._take(key, entry, entry.least_worth(), Reason.SPACE))

    def _take(self, key: Hashable, entry: Entry, index: int, reason: Reason) -> Eviction:
        size = entry.blocks.pop(index)
        entry.bytes -= size
        self.used -= size
        self.count -= 1
        self._resized(key, entry, -size)
        if not entry.blocks:
            self._emptied(key, entry, reason)
        return Eviction(key, index, size, reason)

    def _evict_whole(self, key: Hashable, entry: Entry, reason: Reason) -> list[Eviction]:
        """Every cached block of an object (to stay within the entry bound)."""
        return [self._take(key, entry, entry.least_worth(), reason) for _ in range(len(entry.blocks))]

    def request(self, key: Hashable, size: int, start: int = 0, end: int = -1) -> int:
        """A request for bytes [start, end) of an object of `size` bytes (the whole object when
        `end` is -1): how many of them were cached (hits); the blocks it lacked are filled."""
        end = size if end < 0 else min(end, size)
        if start >= end:
            return 0
        block_size = self.block_size
        first, last = start // block_size, (end - 1) // block_size
        blocks = self.held(key)
        cached = 0
        if blocks is not None:
            if start == 0 and end == size:
                cached = sum(blocks.values())
            else:
                for index in blocks.keys() & range(first, last + 1):
                    low = index * block_size
                    cached += min(end, low + block_size) - max(start, low)
            self.touch(key)
            if cached == end - start:
                return cached
            blocks = self.held(key)
        fill = self.fill
        for index in range(first, last + 1):
            if blocks is None or index not in blocks:
                low = index * block_size
                fill(key, index, min(block_size, size - low), size)
                if blocks is None:
                    blocks = self.held(key)
        return cached

    @abstractmethod
    def figures(self) -> dict[str, float]:
        """The policy's own figures (for metrics)."""


ENTRY_BYTES = 256  # memory one remembered object takes, roughly (its key, its entry, its place in a list)


def entries_within(memory: int) -> int:
    """How many objects a policy may remember (cached or ghosts) within `memory` bytes."""
    return max(1, memory // ENTRY_BYTES)
