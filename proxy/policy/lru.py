"""Plain least-recently-used: what nginx, Varnish and a diskcache with `least-recently-used`
do, the reference edgecache's policy is measured against."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from .blocks import BlockCache, Entry, Eviction, Reason


class LruPolicy(BlockCache):
    """Admits everything; the least recently requested object gives up its blocks first."""

    def __init__(self, capacity: int, block_size: int, max_entries: int) -> None:
        super().__init__(capacity, block_size, max_entries)
        self._order: OrderedDict[Hashable, Entry] = OrderedDict()

    def find(self, key: Hashable) -> Entry | None:
        return self._order.get(key)

    def touch(self, key: Hashable) -> tuple[Eviction, ...]:
        if key in self._order:
            self._order.move_to_end(key)
        return ()

    def _admit(self, key: Hashable, index: int, size: int, count: int, evicted: list[Eviction]) -> Entry:
        return self._adopt(key, size, count, evicted)

    def _adopt(self, key: Hashable, size: int, count: int, evicted: list[Eviction]) -> Entry:
        while len(self._order) >= self.max_entries:
            oldest, entry = next(iter(self._order.items()))
            evicted += self._evict_whole(oldest, entry, Reason.ENTRIES)
        entry = self._order[key] = Entry(size, count)
        return entry

    def _victim(self, exclude: Hashable) -> tuple[Hashable, Entry] | None:
        for key, entry in self._order.items():
            if key != exclude:
                return key, entry
        return None

    def _resized(self, key: Hashable, entry: Entry, delta: int) -> None:
        pass

    def _emptied(self, key: Hashable, entry: Entry, reason: Reason) -> None:
        del self._order[key]

    def forget(self, key: Hashable) -> None:
        entry = self._order.pop(key, None)
        if entry is not None:
            self.used -= entry.bytes

    def figures(self) -> dict[str, float]:
        return {"objects": len(self._order)}
