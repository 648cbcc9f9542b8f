"""Single flight: one origin exchange per primary key at a time, in this process and across workers.

A request either leads (gets a Flight, asks the origin, stores what it may, then
ends the flight) or waits until the current leader has ended and then looks in
the store again. Across worker processes, leadership is a lease in the store,
renewed while the flight lives, so only a dead worker's lease ever expires.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time

import anyio

from ..ops import metrics
from ..origins.base import OriginError
from ..store.disk import Store, StoreErrors
from .threads import StoreThreads

log = logging.getLogger("edgecache")

POLL = 0.02  # seconds between checks that another worker's flight has ended


class Flight:
    """The lead of one key's exchange with the origin; end() it once the outcome is stored."""

    def __init__(self, flights: Flights, key: str, owner: str | None) -> None:
        self._flights = flights
        self.key = key
        self.owner = owner  # our lease in the store, None when the store could not give one
        self.done = anyio.Event()
        self.failure: OriginError | None = None  # the origin failed: the waiters answer the same
        self._renewer: asyncio.Task[None] | None = None

    def end(self) -> None:
        """Let the waiters look again (idempotent)."""
        if self.done.is_set():
            return
        self.done.set()
        metrics.FILLS.dec()
        if self._flights.local.get(self.key) is self:
            del self._flights.local[self.key]
        if self._renewer is not None:
            self._renewer.cancel()
        if self.owner is not None:
            self._flights.release(self.key, self.owner)


LEASE_TTL = 6.0  # seconds; renewed every 2 s while the flight lives, so only a dead worker's lease expires


class Flights:
    def __init__(self, store: Store, threads: StoreThreads, wait_limit: float) -> None:
        self.store = store
        self.threads = threads
        self.lease_ttl = LEASE_TTL
        self.wait_limit = wait_limit  # longest wait for another request's exchange; then ask the origin too
        self.local: dict[str, Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Wait for the lease releases still under way."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def join(self, key: str) -> Flight | OriginError | None:
        """Lead the exchange for `key` (a Flight), or wait for the leader to end: None, or the
        OriginError it met (so that a failing origin is not asked again by every waiter at once)."""
        current = self.local.get(key)
        if current is not None:
            metrics.COLLAPSED.inc()
            with anyio.move_on_after(self.wait_limit):
                await current.done.wait()
            return current.failure
        flight = Flight(self, key, None)
        self.local[key] = flight
        metrics.FILLS.inc()
        lease, owner = "p|" + key, secrets.token_hex(8)
        try:
            if await self.threads.run(self.store.take_lease, lease, owner, self.lease_ttl):
                flight.owner = owner
                flight._renewer = asyncio.get_running_loop().create_task(self._renew(lease, owner))
                return flight
            metrics.COLLAPSED.inc()
            await self._wait_for_other_worker(lease)
        except StoreErrors as e:
            log.warning("fetch lease unavailable, fetching without it: %s", e)
            return flight
        flight.end()
        return None

    async def _wait_for_other_worker(self, lease: str) -> None:
        deadline = time.monotonic() + self.wait_limit
        while time.monotonic() < deadline and await self.threads.run(self.store.lease_holder, lease) is not None:
            await anyio.sleep(POLL)

    async def _renew(self, lease: str, owner: str) -> None:
        while True:
            await anyio.sleep(self.lease_ttl / 3)
            try:
                await self.threads.run(self.store.renew_lease, lease, owner, self.lease_ttl)
            except StoreErrors as e:
                log.warning("fetch lease not renewed: %s", e)

    def release(self, key: str, owner: str) -> None:
        task = asyncio.get_running_loop().create_task(self._release("p|" + key, owner))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, lease: str, owner: str) -> None:
        try:
            await self.threads.run(self.store.release_lease, lease, owner)
        except StoreErrors as e:
            log.warning("fetch lease not released: %s", e)
