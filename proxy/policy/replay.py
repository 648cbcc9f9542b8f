"""A trace through a policy: what it would have served from the cache."""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from .blocks import BlockCache


@dataclass
class Figures:
    requests: int = 0
    bytes: int = 0  # bytes requested
    hit_requests: int = 0  # requests served wholly from the cache
    hit_bytes: int = 0  # bytes served from the cache (a partial hit counts its cached blocks)

    @property
    def request_hit_ratio(self) -> float:
        return self.hit_requests / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.hit_bytes / self.bytes if self.bytes else 0.0


def replay(requests: Iterable[tuple[Hashable, int, int, int]], policy: BlockCache,
           progress: Callable[[int], None] | None = None, every: int = 1 << 16) -> Figures:
    """Each request (object, object size, bytes [start, end)) through `policy`; `progress(n)`
    after every `every` requests (and for the last ones)."""
    figures = Figures()
    request = policy.request
    count = hit_requests = hit_bytes = total = 0
    for key, size, start, end in requests:
        hit = request(key, size, start, end)
        total += end - start
        if hit:
            hit_bytes += hit
            if hit == end - start:
                hit_requests += 1
        count += 1
        if progress is not None and not count % every:
            progress(every)
    if progress is not None and count % every:
        progress(count % every)
    figures.requests, figures.bytes, figures.hit_requests, figures.hit_bytes = count, total, hit_requests, hit_bytes
    return figures
