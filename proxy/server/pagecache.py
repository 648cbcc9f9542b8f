"""Is every page of a file's span in the page cache? Linux `cachestat(2)` (6.5+) says, without
reading or mapping the pages.

A zero-copy send of a span that is all in memory only copies, so it can run on the event loop
itself; a span with a page on disk would make `sendfile` wait for the disk, and every connection
of the worker with it, so it goes to a thread. Where the call is missing (an older kernel, another
architecture, a seccomp filter that refuses it) no span counts as resident: every send takes a
thread, which is always safe.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import platform
import sys
import threading

# cachestat's number in the generic table, which x86-64 and arm64 share from 6.5 on.
_CACHESTAT = 451
_ARCHITECTURES = frozenset({"x86_64", "aarch64", "arm64"})
_MISSING = (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP)


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


def _syscall() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if sys.platform != "linux" or platform.machine() not in _ARCHITECTURES:
        return None
    call = ctypes.CDLL(None, use_errno=True).syscall
    call.restype = ctypes.c_long
    call.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
    return call


_call = _syscall()


class _Arguments(threading.local):
    """The call's two structures, made once per thread (each event loop has its own thread)."""

    def __init__(self) -> None:
        self.span, self.stat = _Range(), _Stat()
        self.refs = ctypes.byref(self.span), ctypes.byref(self.stat)


_arguments = _Arguments()


def resident(fd: int, offset: int, count: int) -> bool:
    """Are all pages of bytes [offset, offset + count) of `fd` in memory now? False when unknown."""
    global _call
    if _call is None or count <= 0:
        return False
    args = _arguments
    args.span.off, args.span.len = offset, count
    if _call(_CACHESTAT, fd, *args.refs, 0) != 0:
        if ctypes.get_errno() in _MISSING:
            _call = None  # not on this kernel: never asked again
        return False
    pages = (offset + count - 1) // mmap.PAGESIZE - offset // mmap.PAGESIZE + 1
    return bool(args.stat.nr_cache >= pages)
