"""Change counters shared by every process that opens one cache directory.

A process may answer from what it remembers of a key's metadata only while the
key's counter is unchanged: every write that can change a lookup's answer (a stored
entry, a Vary index change, a purge, a forgotten version) bumps the counter of the
key's slot after the write is committed. A reader notes the counter *before* it
reads the store, so a write that lands meanwhile always leaves the counter changed:
what it remembers is never older than the store for longer than one read.

Slots are counters in a small memory-mapped file, so checking one costs a memory
read, not a store transaction. Keys share slots (a hash modulo the slot count): a
write to one key makes the others in its slot be read again, never served stale.
One more counter, past the keys' slots (`purges`), counts purges by prefix or tag: they
may remove keys not yet stored, which a store that was under way then checks itself.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import zlib

SLOTS = 4096
_COUNTER = struct.Struct("<Q")


class Epochs:
    def __init__(self, path: str, slots: int = SLOTS) -> None:
        self.slots = slots
        self.purges = slots  # the counter of purges by prefix or tag: no key's slot
        size = (slots + 1) * _COUNTER.size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            with _locked(self._fd):
                if os.fstat(self._fd).st_size < size:
                    os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self._fd)
            raise
        self._lock = threading.Lock()  # flock does not exclude this process's other threads

    def slot(self, key: str) -> int:
        """The slot of a primary key: the same in every process (crc32, not the salted hash())."""
        return zlib.crc32(key.encode("utf-8", "surrogateescape")) % self.slots

    def read(self, slot: int) -> int:
        return int(_COUNTER.unpack_from(self._map, slot * _COUNTER.size)[0])

    def bump(self, slot: int, by: int = 1) -> None:
        """Count `by` changes; a read-modify-write under a lock held by one process at a time,
        so that two writers never both write the same new value."""
        with self._lock, _locked(self._fd):
            self._add(slot, by)

    def bump_all(self) -> None:
        """Count a change of every key at once (what any process remembers of any key is stale)."""
        with self._lock, _locked(self._fd):
            for slot in range(self.slots):
                self._add(slot, 1)

    def _add(self, slot: int, by: int) -> None:
        """(Under the locks.)"""
        value = _COUNTER.unpack_from(self._map, slot * _COUNTER.size)[0]
        _COUNTER.pack_into(self._map, slot * _COUNTER.size, (value + by) % 2**64)

    def settle(self, slot: int, by: int) -> None:
        """Take `by` off the slot's count, never below zero (a count of something owed)."""
        with self._lock, _locked(self._fd):
            value = _COUNTER.unpack_from(self._map, slot * _COUNTER.size)[0]
            _COUNTER.pack_into(self._map, slot * _COUNTER.size, max(0, value - by))

    def set(self, slot: int, value: int) -> None:
        """Start the slot's count again at `value`."""
        with self._lock, _locked(self._fd):
            _COUNTER.pack_into(self._map, slot * _COUNTER.size, value % 2**64)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


class _locked:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

