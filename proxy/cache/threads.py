"""A small fixed set of threads for store calls, apart from file reads.

diskcache is synchronous, and each thread that touches it opens its own SQLite
connections: a fixed, small pool keeps those (and file descriptors) bounded, and
lease renewals never queue behind slow disk reads in the general pool.
"""
from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, TypeVarTuple

import anyio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class StoreThreads:
    """`connect`: run by each thread as it starts, and they all start at once: it opens their
    connections to the store, so that the descriptors they hold do not grow later, with the load."""

    def __init__(self, count: int, connect: Callable[[], None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="edgecache-store")
        # Responses are stored by a thread of their own: two storing at once would only wait for
        # each other's write lock (SQLite's wait sleeps), and a lookup never waits behind them.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecache-store-write")
        if connect is not None:
            _start(self._pool, count, connect)
            _start(self._writer, 1, connect)

    async def run(self, func: Callable[[*Ts], T], *args: *Ts) -> T:
        """func(*args) on a store thread. Not cancellable: a cancelled caller still waits for the
        call to finish, so that it knows what the call did (took a lease, made a part file) and
        can undo it; the cancellation arrives at its next await."""
        return await _shielded(self._pool, func, *args)

    async def write(self, func: Callable[[*Ts], T], *args: *Ts) -> T:
        """As run(), on the thread that stores responses."""
        return await _shielded(self._writer, func, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True, cancel_futures=True)


def _start(pool: ThreadPoolExecutor, count: int, connect: Callable[[], None]) -> None:
    """Start the pool's `count` threads now (a pool starts one only when no other is free: these
    wait for each other), each running `connect`."""
    started = threading.Barrier(count)

    def start() -> None:
        try:
            connect()
        finally:
            started.wait()

    try:
        for _ in range(count):
            pool.submit(start)
    except BaseException:
        started.abort()  # no thread left waiting for one that did not start
        raise


async def _shielded(pool: ThreadPoolExecutor, func: Callable[[*Ts], T], *args: *Ts) -> T:
    future = asyncio.wrap_future(pool.submit(functools.partial(func, *args)))
    with anyio.CancelScope(shield=True):
        result = await future
    return result
