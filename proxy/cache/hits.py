"""Hits per stored response, for the listing: tallied in memory, added to the store in batches
(a hit costs a dict update, never a store write)."""
from __future__ import annotations

MAX_KEYS = 10_000  # distinct responses tallied between two flushes; hits on others then go uncounted
FLUSH_INTERVAL = 2.0  # seconds between flushes to the store


class HitTally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count(self, key: str) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += 1
        elif len(counts) < MAX_KEYS:
            counts[key] = 1

    def take(self) -> dict[str, int]:
        """The counts so far; the tally starts again from nothing."""
        taken, self.counts = self.counts, {}
        return taken
