"""Stored blocks kept at hand (open files, or the bytes of small ones), so a hot block costs
no store transaction per request."""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import IO


class OpenBlocks:
    """A small LRU of open block files, and of small blocks' bytes (the caller decides which
    are small: at most capacity x that size here).

    Readers get their own duplicate descriptor, so closing an entry never cuts a
    read short. An entry is trusted for `refresh_after` seconds; then the store is
    asked again, which also tells its LRU the block is in use and notices eviction.
    Evicted files stay readable through an open descriptor, and their bytes are
    right (block keys include the version): the bound here bounds that disk use.
    """

    def __init__(self, capacity: int = 64, refresh_after: float = 5.0) -> None:
        self.capacity = capacity
        self.refresh_after = refresh_after
        self._entries: OrderedDict[str, tuple[IO[bytes] | bytes, float]] = OrderedDict()

    def acquire(self, key: str) -> int | bytes | None:
        """A new descriptor for the block (or its bytes), or None when it must be looked up in the store."""
        if not self.holds(key):
            return None
        entry = self._entries[key]
        self._entries.move_to_end(key)
        return entry[0] if isinstance(entry[0], bytes) else os.dup(entry[0].fileno())

    def holds(self, key: str) -> bool:
        """Is the block at hand (and not yet due to be asked about again)?"""
        entry = self._entries.get(key)
        return entry is not None and time.monotonic() - entry[1] <= self.refresh_after

    def adopt(self, key: str, handle: IO[bytes] | bytes) -> int | bytes:
        """Keep `handle` for later readers; a new descriptor (or the bytes) for this one."""
        self.forget(key)
        self._entries[key] = (handle, time.monotonic())
        while len(self._entries) > self.capacity:
            _close(self._entries.popitem(last=False)[1][0])
        return handle if isinstance(handle, bytes) else os.dup(handle.fileno())

    def forget(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            _close(entry[0])

    def close(self) -> None:
        while self._entries:
            _close(self._entries.popitem()[1][0])


def _close(handle: IO[bytes] | bytes) -> None:
    if not isinstance(handle, bytes):
        handle.close()
