"""The scrub: every stored block read again and checked, at a bounded disk rate, by one process
of the cache directory at a time (the one keeping the cache policy), pass after pass.

A block that fails its check is dropped (integrity.py): the next request for it fills it
again from the origin. A pass over B bytes takes B / scrub_rate seconds (plus the time the
reads take), and passes start at least PASS_EVERY seconds apart: damage is found within
max(B / scrub_rate, PASS_EVERY) seconds and a block's read after it happened."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("edgecache.store")

IDLE = 1.0  # seconds between looks, while this process does not keep the policy or the cache is empty
PASS_EVERY = 10.0  # seconds at least from the start of a pass to the start of the next (a small cache)


def rest(elapsed: float) -> float:
    """Seconds to wait after a pass that took `elapsed` seconds, before the next one."""
    return max(0.0, PASS_EVERY - elapsed)


def pause(size: int, spent: float, rate: int) -> float:
    """Seconds to wait after reading `size` bytes in `spent` seconds, so that reads go no faster
    than `rate` bytes a second, block by block (a slow read is not made up for by a burst)."""
    return max(0.0, size / rate - spent)


class Scrub:
    """A thread that checks `blocks()` one by one with `check(key, size)` (it returns the bytes it
    read) while `active()` (this process keeps the policy), `rate` bytes a second at most;
    `passed(blocks, bytes)` after each complete pass."""

    def __init__(self, rate: int, blocks: Callable[[], Iterator[tuple[str, int]]],
                 check: Callable[[str, int], int], active: Callable[[], bool],
                 passed: Callable[[int, int], None]) -> None:
        self.rate = rate
        self._blocks, self._check, self._active, self._passed = blocks, check, active, passed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgecache-scrub", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                started = time.monotonic()
                if self._active() and self._pass():
                    self._stop.wait(rest(time.monotonic() - started))
                else:
                    self._stop.wait(IDLE)
            except Exception as e:  # noqa: BLE001 - the store's troubles must not end the scrub
                log.warning("scrub interrupted: %s", e)
                self._stop.wait(IDLE)

    def _pass(self) -> bool:
        """One pass over the stored blocks (False when it saw none, or stopped: this process no
        longer keeps the policy, or the store closes)."""
        blocks = read = 0
        for key, size in self._blocks():
            if self._stop.is_set() or not self._active():
                return False
            started = time.monotonic()
            read += self._check(key, size)
            blocks += 1
            if self._stop.wait(pause(size, time.monotonic() - started, self.rate)):
                return False
        if blocks:
            self._passed(blocks, read)
        return blocks > 0
