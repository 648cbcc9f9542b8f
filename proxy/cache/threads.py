"""A small fixed set of threads for store calls, apart from file reads.

diskcache is synchronous, and each thread that touches it opens its own SQLite
connections: a fixed, small pool keeps those (and file descriptors) bounded, and
lease renewals never queue behind slow disk reads in the general pool.
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, TypeVarTuple

import anyio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class StoreThreads:
    def __init__(self, count: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="edgecache-store")

    async def run(self, func: Callable[[*Ts], T], *args: *Ts) -> T:
        """func(*args) on a store thread. Not cancellable: a cancelled caller still waits for the
        call to finish, so that it knows what the call did (took a lease, made a part file) and
        can undo it; the cancellation arrives at its next await."""
        future = asyncio.wrap_future(self._pool.submit(functools.partial(func, *args)))
        with anyio.CancelScope(shield=True):
            result = await future
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
