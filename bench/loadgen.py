"""A small HTTP/1.1 load generator on raw asyncio streams (keep-alive, Content-Length bodies)."""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    bytes: int = 0
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def _request(reader, writer, path: str, headers: str) -> tuple[int, int]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    remaining = length
    while remaining:
        chunk = await reader.read(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("short body")
        remaining -= len(chunk)
    return status, length


async def run(
    port: int, path: str, *, connections: int, seconds: float, size: int, range_size: int | None
) -> Result:
    """GET `path` on as many connections for as long; random ranges of range_size if given."""
    result = Result()
    deadline = time.monotonic() + seconds
    rng = random.Random(1)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        try:
            while time.monotonic() < deadline:
                headers = ""
                if range_size:
                    start = rng.randrange(0, size - range_size)
                    headers = f"Range: bytes={start}-{start + range_size - 1}\r\n"
                began = time.perf_counter()
                try:
                    status, length = await _request(reader, writer, path, headers)
                except (ConnectionError, asyncio.IncompleteReadError):
                    result.errors += 1
                    return
                result.latencies.append(time.perf_counter() - began)
                result.requests += 1
                result.bytes += length
                if status not in (200, 206):
                    result.errors += 1
        finally:
            writer.close()

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    result.seconds = time.monotonic() - began
    return result
