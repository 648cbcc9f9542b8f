"""edgecache's policy: recency and frequency, their split adapted to the traffic, in bytes.

The shape is ARC's (Megiddo and Modha, "ARC: A Self-Tuning, Low Overhead Replacement
Cache", FAST 2003): objects requested once live in a recency list (T1), objects
requested again in a frequency list (T2), and `target` bytes of the cache are the
recency list's share. What differs, for large objects and byte miss ratio:

- Ghosts are weighed in bytes, and the recency list's ghost (B1) remembers twice the
  cache's bytes: an object requested again while still remembered goes straight to T2.
  That is TinyLFU's lesson (Einziger, Friedman and Manes, "TinyLFU: A Highly Efficient
  Cache Admission Policy", 2017): a first request says little, a second says much, and
  it needs a memory longer than the cache.
- A new object larger than the recency share is not kept when it would take the room of
  others (admission): it is remembered in B1 as if it had passed through T1. With a
  small cache the share tends to nothing, so only objects asked for twice are kept
  (S3-FIFO's quick demotion: Yang et al., "FIFO queues are all you need for cache
  eviction", SOSP 2023). While the cache has room, everything is kept (a cache being
  filled, or warmed, keeps what it is given). A refused block stays on disk a little
  while, in a FIFO that takes LINGER of the capacity (a reader may be about to open it;
  S3-FIFO's small queue): a request for it then is the second one, which keeps it.
- The share adapts from the marginal gain of each list, measured as ARC does but on equal
  footing: the most recent `WINDOW` of the capacity evicted from each list is watched,
  and a request in one window moves the share towards that list (by the object's size
  times capacity/window, the gain per byte of cache). With a large cache the share grows
  until the policy behaves like LRU, which wins there; with a small one it shrinks until
  only repeated objects are kept, which wins there.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from .blocks import BlockCache, Entry, Eviction, Fill, Reason, Refused, Stored

WINDOW = 0.1  # each ghost window watches this share of the capacity
GHOST = 2.0  # the recency ghost remembers this many capacities of bytes
REFUSALS = 4096  # objects whose refused fill may still be going on (their later blocks are refused too)
LINGER = 1 / 64  # share of the capacity where refused blocks stay a while, first in first out (a block at least)


class AdaptivePolicy(BlockCache):
    def __init__(self, capacity: int, block_size: int, max_entries: int) -> None:
        linger = int(capacity * LINGER)
        super().__init__(capacity - linger, block_size, max_entries)
        self.linger = linger  # room for refused blocks: what is kept and what lingers stay within `capacity`
        self.target = 0.0  # bytes of the recency list's share
        self.t1: OrderedDict[Hashable, Entry] = OrderedDict()  # requested once
        self.t2: OrderedDict[Hashable, Entry] = OrderedDict()  # requested again
        self.t1_bytes = 0
        self.t2_bytes = 0
        # Ghosts: object -> size. B1's most recent WINDOW, then the rest of its memory; B2's window.
        self.b1_recent: OrderedDict[Hashable, int] = OrderedDict()
        self.b1_older: OrderedDict[Hashable, int] = OrderedDict()
        self.b2_recent: OrderedDict[Hashable, int] = OrderedDict()
        self.b1_recent_bytes = 0
        self.b1_older_bytes = 0
        self.b2_recent_bytes = 0
        self.window = max(1, int(self.capacity * WINDOW))
        self.step = self.capacity / self.window
        self._refusing: OrderedDict[Hashable, int] = OrderedDict()  # object -> last block refused
        # refused blocks still on disk: object -> (object size, block count, {block: size}), oldest first
        self.refused: OrderedDict[Hashable, tuple[int, int, dict[int, int]]] = OrderedDict()
        self.refused_bytes = 0

    def find(self, key: Hashable) -> Entry | None:
        entry = self.t2.get(key)
        return entry if entry is not None else self.t1.get(key)

    def touch(self, key: Hashable) -> tuple[Eviction, ...]:
        entry = self.t1.pop(key, None)
        if entry is not None:
            self.t1_bytes -= entry.bytes
            self.t2_bytes += entry.bytes
            self.t2[key] = entry
        elif key in self.t2:
            self.t2.move_to_end(key)
        elif key in self.refused:  # a request for refused blocks still on disk: the one that may keep them
            size, count, blocks = self.refused.pop(key)
            self.refused_bytes -= sum(blocks.values())
            return tuple(e for index in sorted(blocks)
                         for e in self.fill(key, index, blocks[index], size, count).evicted)
        return ()

    def held(self, key: Hashable) -> dict[int, int] | None:
        entry = self.find(key)
        if entry is not None:
            return entry.blocks
        refused = self.refused.get(key)
        return refused[2] if refused is not None else None

    def fill(self, key: Hashable, index: int, size: int, object_size: int, object_blocks: int = 0) -> Fill:
        outcome = super().fill(key, index, size, object_size, object_blocks)
        if isinstance(outcome, Stored):
            refused = self.refused.pop(key, None)
            if refused is None:
                return outcome
            # kept now: its blocks still on disk are kept with it
            self.refused_bytes -= sum(refused[2].values())
            evicted = list(outcome.evicted)
            for block, block_size in refused[2].items():
                if block != index:
                    evicted += self.adopt(key, block, block_size, object_size, refused[1]).evicted
            return Stored(tuple(evicted))
        if size > self.linger:
            return outcome
        evicted = list(outcome.evicted)
        _, count, blocks = self.refused.pop(key, (object_size, object_blocks, {}))
        blocks[index] = size
        self.refused[key] = (object_size, count, blocks)
        self.refused_bytes += size
        self._trim_refused(evicted)
        return Refused(tuple(evicted))

    def _trim_refused(self, evicted: list[Eviction]) -> None:
        """Refused blocks beyond the linger room (or of too many objects) go, the oldest first."""
        while self.refused_bytes > self.linger or len(self.refused) > REFUSALS:
            oldest, (_, _, older) = next(iter(self.refused.items()))
            block = max(older)
            self.refused_bytes -= older[block]
            evicted.append(Eviction(oldest, block, older.pop(block), Reason.REFUSED))
            if not older:
                del self.refused[oldest]

    def resize(self, capacity: int) -> tuple[Eviction, ...]:
        """`capacity` for what is kept and what lingers together, as at construction, a whole block
        lingering at least (the store's blocks cost a little more than their bytes), in a quarter
        of the capacity at most."""
        linger = min(max(int(capacity * LINGER), self.block_size), capacity // 4)
        self.linger = linger
        self.window = max(1, int((capacity - linger) * WINDOW))
        self.step = (capacity - linger) / self.window
        self.target = min(self.target, float(capacity - linger))
        evicted = list(super().resize(capacity - linger))
        self._trim_refused(evicted)
        return tuple(evicted)

    def refused_count(self) -> int:
        """Refused blocks still on disk."""
        return sum(len(blocks) for _, _, blocks in self.refused.values())

    def drop(self, key: Hashable, index: int) -> None:
        super().drop(key, index)
        refused = self.refused.get(key)
        if refused is not None and index in refused[2]:
            self.refused_bytes -= refused[2].pop(index)
            if not refused[2]:
                del self.refused[key]

    def _admit(self, key: Hashable, index: int, size: int, count: int, evicted: list[Eviction]) -> Entry | None:
        refused_at = self._refusing.get(key)
        if refused_at is not None:
            if index > refused_at:  # the rest of a fill already refused
                self._refusing[key] = index
                return None
            del self._refusing[key]
        if key in self.b1_recent:
            self.b1_recent_bytes -= self.b1_recent.pop(key)
            self.target = min(float(self.capacity), self.target + size * self.step)
            again = True
        elif key in self.b1_older:
            self.b1_older_bytes -= self.b1_older.pop(key)
            again = True
        else:
            if key in self.b2_recent:
                self.b2_recent_bytes -= self.b2_recent.pop(key)
                self.target = max(0.0, self.target - size * self.step)
            again = False
        self._bound(evicted)
        if not again and size > self.target and self.used + size > self.capacity:
            self._remember_refusal(key, index)
            self._ghost_b1(key, size)
            return None
        entry = (self.t2 if again else self.t1)[key] = Entry(size, count)
        return entry

    def _adopt(self, key: Hashable, size: int, count: int, evicted: list[Eviction]) -> Entry:
        self._bound(evicted)
        entry = self.t1[key] = Entry(size, count)
        return entry

    def _remember_refusal(self, key: Hashable, index: int) -> None:
        self._refusing[key] = index
        if len(self._refusing) > REFUSALS:
            self._refusing.popitem(last=False)

    def _victim(self, exclude: Hashable) -> tuple[Hashable, Entry] | None:
        """ARC's choice: the recency list's oldest while it holds more than its share."""
        order = (self.t1, self.t2) if self.t1_bytes > self.target or not self.t2 else (self.t2, self.t1)
        for queue in order:
            for key, entry in queue.items():  # the head, or the one after it when the head is excluded
                if key != exclude:
                    return key, entry
        return None

    def _resized(self, key: Hashable, entry: Entry, delta: int) -> None:
        if key in self.t2:
            self.t2_bytes += delta
        else:
            self.t1_bytes += delta

    def _emptied(self, key: Hashable, entry: Entry, reason: Reason) -> None:
        size = entry.size
        if self.t1.pop(key, None) is not None:
            self._ghost_b1(key, size)
        else:
            del self.t2[key]
            self.b2_recent[key] = size
            self.b2_recent_bytes += size
            while self.b2_recent_bytes > self.window and len(self.b2_recent) > 1:
                self.b2_recent_bytes -= self.b2_recent.popitem(last=False)[1]
            self._trim_ghosts()

    def _ghost_b1(self, key: Hashable, size: int) -> None:
        self.b1_recent[key] = size
        self.b1_recent_bytes += size
        while self.b1_recent_bytes > self.window and len(self.b1_recent) > 1:  # the newest stays
            old, old_size = self.b1_recent.popitem(last=False)
            self.b1_recent_bytes -= old_size
            self.b1_older[old] = old_size
            self.b1_older_bytes += old_size
        limit = GHOST * self.capacity - self.window
        while self.b1_older_bytes > limit:
            self.b1_older_bytes -= self.b1_older.popitem(last=False)[1]
        self._trim_ghosts()

    def _remembered(self) -> int:
        return len(self.t1) + len(self.t2) + len(self.b1_recent) + len(self.b1_older) + len(self.b2_recent)

    def _drop_ghost(self) -> bool:
        """Forget the oldest ghost (B1's older part first, B2's window, B1's window last)."""
        if self.b1_older:
            self.b1_older_bytes -= self.b1_older.popitem(last=False)[1]
        elif self.b2_recent:
            self.b2_recent_bytes -= self.b2_recent.popitem(last=False)[1]
        elif self.b1_recent:
            self.b1_recent_bytes -= self.b1_recent.popitem(last=False)[1]
        else:
            return False
        return True

    def _trim_ghosts(self) -> None:
        while self._remembered() > self.max_entries and self._drop_ghost():
            pass

    def _bound(self, evicted: list[Eviction]) -> None:
        """Room to remember one more object: ghosts go first, then cached objects, oldest first."""
        while self._remembered() >= self.max_entries:
            if not self._drop_ghost():
                queue = self.t1 if self.t1 else self.t2
                key, entry = next(iter(queue.items()))
                evicted += self._evict_whole(key, entry, Reason.ENTRIES)

    def forget(self, key: Hashable) -> None:
        for queue in (self.t1, self.t2):
            entry = queue.get(key)
            if entry is not None:
                self.used -= entry.bytes
                self.count -= len(entry.blocks)
                self._resized(key, entry, -entry.bytes)
                del queue[key]
        for ghost, total in ((self.b1_recent, "b1_recent_bytes"), (self.b1_older, "b1_older_bytes"),
                             (self.b2_recent, "b2_recent_bytes")):
            size = ghost.pop(key, None)
            if size is not None:
                setattr(self, total, getattr(self, total) - size)
        self._refusing.pop(key, None)
        refused = self.refused.pop(key, None)
        if refused is not None:
            self.refused_bytes -= sum(refused[2].values())

    def figures(self) -> dict[str, float]:
        return {
            "recency_share": self.target / self.capacity,
            "recency_bytes": float(self.t1_bytes),
            "frequency_bytes": float(self.t2_bytes),
            "ghosts": float(len(self.b1_recent) + len(self.b1_older) + len(self.b2_recent)),
            "refused_bytes": float(self.refused_bytes),
        }
