"""One origin response relayed to the client as it arrives and written beside to a part file.

It becomes a stored response only once complete (the driver's `publish`); however the
relay ends (complete, cut short, client gone, never started), `release` removes what
is left and ends the flight that waits for it, exactly once.
"""
from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Awaitable, Callable

import anyio

from ..files import write_all
from ..origins.base import OriginResponse
from .fills import discard


class Spool:
    def __init__(
        self, response: OriginResponse, fd: int, path: str, limit: int,
        publish: Callable[[str, int], Awaitable[None]], too_large: Callable[[], Awaitable[None]],
        done: Callable[[], None],
    ) -> None:
        self.response = response
        self.fd = fd
        self.path = path
        self.limit = limit  # bytes: past it, the response is relayed but not stored
        self._publish = publish  # (part file path, size): store it
        self._too_large = too_large  # called once the body passes the limit
        self._done = done
        self._released = False
        self.over_limit = False

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        size, complete = 0, False
        try:
            async for chunk in self.response.body:
                size += len(chunk)
                if not self.over_limit and size > self.limit:
                    self.over_limit = True
                    await self.finish()
                    await self._too_large()
                if self.fd >= 0:
                    await anyio.to_thread.run_sync(write_all, self.fd, chunk)
                yield chunk
            complete = True
        finally:
            with anyio.CancelScope(shield=True):
                if complete and self.fd >= 0:
                    os.close(self.fd)
                    self.fd = -1
                    await self._publish(self.path, size)
                await self.finish()

    async def drain(self) -> None:
        """Store a body nobody reads (the client asked for HEAD); stop when it is too large to store."""
        chunks = self.chunks()
        try:
            async for _ in chunks:
                if self.over_limit:
                    break
        finally:
            await chunks.aclose()
            await self.close()

    async def finish(self) -> None:
        """Remove the part file unless published (off the event loop), and end the flight."""
        fd, self.fd = self.fd, -1
        await anyio.to_thread.run_sync(discard, fd, self.path)
        self.release()

    def release(self) -> None:
        """As finish(), on the event loop: only for a relay that never started (idempotent)."""
        discard(self.fd, self.path)
        self.fd = -1
        if not self._released:
            self._released = True
            self._done()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.finish()
            await self.response.close()
