"""Stored blocks kept at hand (open files, or the bytes of small ones), so a hot block costs
no store transaction per request."""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO

from ..pagecache import Mapped, mapped


@dataclass
class _Open:
    handle: IO[bytes]
    since: float  # when it was adopted (monotonic)
    pages: Mapped | None = None  # the file mapped for residency checks, once asked for

    def close(self) -> None:
        if self.pages is not None:
            self.pages.close()
        self.handle.close()


class OpenBlocks:
    """An LRU of open block files (at most `capacity`, a descriptor each), and of small blocks'
    bytes (at most `max_bytes` of them; the caller decides which are small).

    Readers get their own duplicate descriptor, so closing an entry never cuts a
    read short. An entry is trusted for `refresh_after` seconds; then the store is
    asked again, which also tells its LRU the block is in use and notices eviction.
    Evicted files stay readable through an open descriptor, and their bytes are
    right (block keys include the version): the bound here bounds that disk use.
    """

    def __init__(self, capacity: int = 1024, refresh_after: float = 5.0, max_bytes: int = 8 * 1024**2) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.refresh_after = refresh_after
        self._files: OrderedDict[str, _Open] = OrderedDict()  # the least recent first
        self._small: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0  # of the small blocks'

    def acquire(self, key: str) -> int | bytes | None:
        """A new descriptor for the block (or its bytes), or None when it must be looked up in the store."""
        held = self.borrow(key)
        return os.dup(held) if isinstance(held, int) else held

    def borrow(self, key: str) -> int | bytes | None:
        """The block file's own descriptor (or its bytes), or None, as `acquire`: valid only until the
        caller next yields to the event loop (what changes these entries runs on it, as the caller does)."""
        if not self.holds(key):
            return None
        small = self._small.get(key)
        if small is not None:
            self._small.move_to_end(key)
            return small[0]
        self._files.move_to_end(key)
        return self._files[key].handle.fileno()

    def pages(self, key: str) -> Mapped | None:
        """A held block file mapped, to ask which of its pages are in memory (pagecache.Mapped),
        mapped the first time it is asked for; valid as `borrow`'s descriptor is. None for a small
        block's bytes, or where it cannot be mapped."""
        opened = self._files.get(key)
        if opened is None:
            return None
        if opened.pages is None:
            fd = opened.handle.fileno()
            opened.pages = mapped(fd, os.fstat(fd).st_size)
        return opened.pages

    def holds(self, key: str) -> bool:
        """Is the block at hand (and not yet due to be asked about again)?"""
        opened = self._files.get(key)
        if opened is not None:
            return time.monotonic() - opened.since <= self.refresh_after
        small = self._small.get(key)
        return small is not None and time.monotonic() - small[1] <= self.refresh_after

    def adopt(self, key: str, handle: IO[bytes] | bytes) -> int | bytes:
        """Keep `handle` for later readers; a new descriptor (or the bytes) for this one."""
        self.forget(key)
        now = time.monotonic()
        if isinstance(handle, bytes):
            self._small[key] = (handle, now)
            self._bytes += len(handle)
            while self._bytes > self.max_bytes:
                self._bytes -= len(self._small.popitem(last=False)[1][0])
            return handle
        self._files[key] = _Open(handle, now)
        while len(self._files) > self.capacity:
            self._files.popitem(last=False)[1].close()
        return os.dup(handle.fileno())

    def forget(self, key: str) -> None:
        small = self._small.pop(key, None)
        if small is not None:
            self._bytes -= len(small[0])
        opened = self._files.pop(key, None)
        if opened is not None:
            opened.close()

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()
        self._small.clear()
        self._bytes = 0
