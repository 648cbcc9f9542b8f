"""Single flight: one origin exchange per primary key at a time, in this process and across workers.

A request either leads (gets a Flight, asks the origin, stores what it may, then
ends the flight) or waits until the current leader has ended and then looks in
the store again. Across worker processes, leadership is a lock on one byte of the
cache directory's `flights` file, the byte chosen by the key's hash (KeyLocks): taken
and given back on the event loop with one system call, no store transaction, no
thread, and released by the kernel the moment the process holding it dies (kill -9
included). Keys share bytes: a key whose byte another process holds waits for that
exchange, then looks again, never served stale.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import time
import zlib

import anyio

from ..ops import metrics
from ..origins.base import OriginError
from ..store.disk import Store

log = logging.getLogger("edgecache")

POLL = 0.02  # seconds between checks that another worker's flight has ended
SLOTS = 1 << 16  # bytes of the flights file, each the lock of the keys whose hash it is
_FLOCK = struct.Struct("hhqqi4x")  # struct flock of 64-bit Linux: type, whence, start, length, pid
_BUSY = (errno.EAGAIN, errno.EACCES)


class KeyLocks:
    """Exclusive locks on the bytes of one file, shared by every process (and every store) that
    opens the cache directory. They are open file description locks (Linux): held by this open
    of the file, so two opens in one process exclude each other as two processes do, and they go
    when the file is closed, by close() or by the death of the process."""

    def __init__(self, path: str) -> None:
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._held: dict[int, int] = {}  # slot -> flights of this process that hold it (keys share slots)

    @staticmethod
    def slot(key: str) -> int:
        """The same in every process (crc32, not the salted hash())."""
        return zlib.crc32(key.encode("utf-8", "surrogateescape")) % SLOTS

    def acquire(self, slot: int) -> bool:
        """Take the slot unless another holder has it; never blocks. OSError: no lock to be had."""
        count = self._held.get(slot, 0)
        if not count and not self._lock(fcntl.F_WRLCK, slot):
            return False
        self._held[slot] = count + 1
        return True

    def release(self, slot: int) -> None:
        count = self._held.pop(slot, 1) - 1  # not held: the file was closed (shutdown) and gave it back
        if count:
            self._held[slot] = count
        else:
            self._lock(fcntl.F_UNLCK, slot)

    def held_elsewhere(self, slot: int) -> bool:
        """Does another holder have the slot now?"""
        if self._held.get(slot):
            return False
        if not self._lock(fcntl.F_WRLCK, slot):
            return True
        self._lock(fcntl.F_UNLCK, slot)
        return False

    def _lock(self, kind: int, slot: int) -> bool:
        if self._fd is None:  # closed: every slot was given back
            if kind == fcntl.F_UNLCK:
                return True
            raise OSError(errno.EBADF, "the flights file is closed")
        try:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, slot, 1, 0))
        except OSError as e:
            if e.errno in _BUSY:
                return False
            raise
        return True

    def close(self) -> None:
        """Gives back every slot this open holds."""
        fd, self._fd = self._fd, None
        self._held.clear()
        if fd is not None:
            os.close(fd)


class Flight:
    """The lead of one key's exchange with the origin; end() it once the outcome is stored."""

    def __init__(self, flights: Flights, key: str, slot: int | None) -> None:
        self._flights = flights
        self.key = key
        self.slot = slot  # the slot we hold for the key, None when no lock could be had
        self.done = anyio.Event()
        self.failure: OriginError | None = None  # the origin failed: the waiters answer the same

    def end(self) -> None:
        """Let the waiters look again (idempotent)."""
        if self.done.is_set():
            return
        self.done.set()
        metrics.FILLS.dec()
        if self._flights.local.get(self.key) is self:
            del self._flights.local[self.key]
        if self.slot is not None:
            self._flights.locks.release(self.slot)


class Flights:
    def __init__(self, store: Store, wait_limit: float) -> None:
        self.locks = KeyLocks(os.path.join(store.directory, "flights"))
        self.wait_limit = wait_limit  # longest wait for another request's exchange; then ask the origin too
        self.local: dict[str, Flight] = {}

    def close(self) -> None:
        self.locks.close()

    async def join(self, key: str) -> Flight | OriginError | None:
        """Lead the exchange for `key` (a Flight), or wait for the leader to end: None, or the
        OriginError it met (so that a failing origin is not asked again by every waiter at once)."""
        current = self.local.get(key)
        if current is not None:
            metrics.COLLAPSED.inc()
            with anyio.move_on_after(self.wait_limit):
                await current.done.wait()
            return current.failure
        slot = self.locks.slot(key)
        try:
            leading = self.locks.acquire(slot)
        except OSError as e:
            log.warning("fetch lock unavailable, fetching without it: %s", e)
            return self._lead(key, None)
        if leading:
            return self._lead(key, slot)
        metrics.COLLAPSED.inc()
        flight = self.local[key] = Flight(self, key, None)  # the requests of this process wait with us
        metrics.FILLS.inc()
        try:
            await self._wait_for_other_worker(slot)
        except OSError as e:
            log.warning("fetch lock unavailable, fetching without it: %s", e)
        finally:
            flight.end()
        return None

    def _lead(self, key: str, slot: int | None) -> Flight:
        flight = self.local[key] = Flight(self, key, slot)
        metrics.FILLS.inc()
        return flight

    async def _wait_for_other_worker(self, slot: int) -> None:
        deadline = time.monotonic() + self.wait_limit
        while time.monotonic() < deadline and self.locks.held_elsewhere(slot):
            await anyio.sleep(POLL)
