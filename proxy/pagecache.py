"""Is every page of a file's span in memory, read and up to date? Linux `mincore(2)` on a
transient mapping of the span says, without reading or faulting in the pages.

A zero-copy send of a span whose every page is in memory only copies, so it can run on the
event loop itself; a span with a page still on disk, or still being read from it (pages of a
read-ahead in flight are in the page cache but not yet up to date: `mincore` tells them
apart, `cachestat(2)` does not), would make `sendfile` wait for the disk, and every
connection of the worker with it, so it goes to a thread.

A block at hand is asked about for every request that reads it (`Mapped`): there each run of
TRUSTED_PAGES pages found wholly in memory is taken to stay there for TRUSTED seconds, so a hot
block costs a `mincore` per run and interval instead of one per request (one per 1 MiB range, it
was about 5 % of the CPU such a range costs). The kernel's LRU evicts recently used pages last,
but it may: each send that touches a page evicted within that time waits for the disk, on the
loop, until the run is asked again. A run found partly on disk is remembered as such for as long,
and meanwhile only a span's own pages are asked about, as for a file not at hand.

The kernel reports the page cache only for files the process owns or may write (the cache's
own block files); for others every page reads as absent, so their spans take a thread. Where
the calls are missing (not Linux) no span counts as resident: every send takes a thread,
which is always safe.
"""
from __future__ import annotations

import ctypes
import mmap
import sys
import threading
import time

PAGE = mmap.PAGESIZE
TRUSTED_PAGES = 256  # pages in a run whose residency a Mapped remembers (1 MiB of 4 KiB pages)
TRUSTED = 1.0  # seconds a run found in memory is taken to stay there
_LOW_BIT = bytes(b & 1 for b in range(256))  # mincore: bit 0 of each page's byte says resident


def _functions() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr, ctypes._CFuncPtr] | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    map_, unmap, mincore = libc.mmap, libc.munmap, libc.mincore
    map_.restype = ctypes.c_void_p
    map_.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
    unmap.restype = ctypes.c_int
    unmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    mincore.restype = ctypes.c_int
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return map_, unmap, mincore


_calls = _functions()
_FAILED = ctypes.c_void_p(-1).value  # MAP_FAILED


class _Vector(threading.local):
    """mincore's answer, one byte per page, grown as needed (one per thread: each event loop has its own)."""

    def __init__(self) -> None:
        self.buffer = ctypes.create_string_buffer(0)

    def of(self, pages: int) -> ctypes.Array[ctypes.c_char]:
        if len(self.buffer) < pages:
            self.buffer = ctypes.create_string_buffer(pages)
        return self.buffer


_vector = _Vector()


def resident(fd: int, offset: int, count: int) -> bool:
    """Are all pages of bytes [offset, offset + count) of `fd` in memory and up to date now?
    False when unknown (not Linux, a descriptor that cannot be mapped, pages past the end)."""
    pages = _pages(fd, offset, count)
    return pages is not None and b"\x00" not in pages


def absent(fd: int, offset: int, count: int) -> bool:
    """Is no page of bytes [offset, offset + count) of `fd` in memory now? False when unknown."""
    pages = _pages(fd, offset, count)
    return pages is not None and b"\x01" not in pages


def _pages(fd: int, offset: int, count: int) -> bytes | None:
    """One byte per page of the span, 1 where the page is in memory and up to date; None: unknown."""
    calls = _calls
    if calls is None or count <= 0 or offset < 0:
        return None
    map_, unmap, _ = calls
    start = offset - offset % PAGE  # a mapping starts on a page
    length = offset + count - start
    address = map_(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    if address is None or address == _FAILED:
        return None
    try:
        return _mapped_pages(address, length)
    finally:
        unmap(address, length)


def _mapped_pages(address: int, length: int) -> bytes | None:
    """mincore's answer for `length` bytes of a mapping from `address` (a page's start), as _pages."""
    assert _calls is not None
    pages = (length + PAGE - 1) // PAGE
    vector = _vector.of(pages)
    if _calls[2](address, length, vector) != 0:
        return None
    return ctypes.string_at(vector, pages).translate(_LOW_BIT)


class Mapped:
    """A file's first `length` bytes mapped once, never read through the mapping (no page of it is
    faulted in, nor counted in the process's memory): `resident` asks `mincore` of a span with no
    mapping made and unmade each time, and remembers for TRUSTED seconds which runs of
    TRUSTED_PAGES pages it found wholly in memory and which not. close() unmaps it; after that it
    answers False."""

    def __init__(self, address: int, length: int) -> None:
        self.address: int | None = address
        self.length = length
        self._run = TRUSTED_PAGES * PAGE
        runs = -(-length // self._run)
        self._whole = [0.0] * runs  # until when (monotonic) each run is taken as wholly in memory
        self._partial = [0.0] * runs  # until when each is known to have a page that is not

    def resident(self, offset: int, count: int) -> bool:
        """As resident() for bytes [offset, offset + count) of the file (False past `length`), the
        runs found wholly in memory less than TRUSTED seconds ago taken as still there."""
        address = self.address
        if address is None or count <= 0 or offset < 0 or offset + count > self.length:
            return False
        whole, now, run = self._whole, time.monotonic(), self._run
        first, last = offset // run, (offset + count - 1) // run
        while first <= last and whole[first] > now:
            first += 1
        while last > first and whole[last] > now:
            last -= 1
        if first > last:
            return True
        start, end = first * run, min((last + 1) * run, self.length)  # the runs not trusted
        low, high = max(offset, start), min(offset + count, end)  # the span's bytes in them
        partial = self._partial
        if any(partial[index] > now for index in range(first, last + 1)):  # the span's own pages only
            low -= low % PAGE
            pages = _mapped_pages(address + low, high - low)
            return pages is not None and b"\x00" not in pages
        pages = _mapped_pages(address + start, end - start)
        if pages is None:
            return False
        until, every = now + TRUSTED, run // PAGE
        for index in range(first, last + 1):
            at = (index - first) * every
            if b"\x00" in pages[at:at + every]:
                whole[index], partial[index] = 0.0, until
            else:
                whole[index] = until
        return b"\x00" not in pages[(low - start) // PAGE:(high - 1 - start) // PAGE + 1]

    def close(self) -> None:
        if self.address is not None and _calls is not None:
            _calls[1](self.address, self.length)
        self.address = None


def mapped(fd: int, length: int) -> Mapped | None:
    """The first `length` bytes of `fd` mapped for `Mapped.resident`; None where they cannot be."""
    if _calls is None or length <= 0:
        return None
    address = _calls[0](None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address is None or address == _FAILED:
        return None
    return Mapped(address, length)
