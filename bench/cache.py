"""Benchmark: edgecache as a caching proxy in front of a local origin, against nginx
proxy_cache + slice (when nginx is installed) in front of the same origin.

    python bench/cache.py [--size-mib 256] [--seconds 8] [--workers 2]

Figures, for each proxy: hot full-file throughput (1 connection); hot random 1 MiB
ranges with 64 connections (MB/s, p99); a cold mid-file 1 MiB range (time to first
byte, origin bytes); a stampede of 50 concurrent cold full GETs (origin bytes / size).
Both use 4 MiB slices. The origin is edgecache itself serving the directory
uncached, counting the bytes it sends.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,
    SLICE,
    free_port,
    measure_each,
    nginx_proxy,
    start_edgecache,
    stop,
    wait_port,
    write_random_file,
)
from loadgen import run  # noqa: E402


def origin_count(port: int, reset: bool = False) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/_count", method="POST" if reset else "GET")
    with urllib.request.urlopen(request) as r:
        return json.load(r)["bytes"]


async def first_byte(port: int, path: str, headers: str) -> float:
    """Seconds from sending the request to the first body byte; reads the rest."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.perf_counter()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}Connection: close\r\n\r\n".encode())
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(1)
    elapsed = time.perf_counter() - began
    while await reader.read(1 << 20):
        pass
    writer.close()
    return elapsed


async def stampede(port: int, path: str, n: int) -> None:
    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        while await reader.read(1 << 20):
            pass
        writer.close()

    await asyncio.gather(*(one() for _ in range(n)))


def measure(port: int, origin_port: int, size: int, seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    asyncio.run(stampede(port, "/hot.mp4", 1))  # warm
    full = asyncio.run(run(port, "/hot.mp4", connections=1, seconds=seconds, size=size, range_size=None))
    ranges = asyncio.run(run(port, "/hot.mp4", connections=64, seconds=seconds, size=size, range_size=1 << 20))
    out["hot full MB/s"] = full.mb_per_s
    out["hot ranges MB/s"] = ranges.mb_per_s
    out["hot ranges p99 ms"] = ranges.percentile(0.99) * 1e3
    out["errors"] = full.errors + ranges.errors
    time.sleep(1)  # let readahead of the warm-up finish
    origin_count(origin_port, reset=True)
    mid = size // 2 + 12345
    cold_range = f"Range: bytes={mid}-{mid + (1 << 20) - 1}\r\n"
    out["cold range TTFB ms"] = asyncio.run(first_byte(port, "/cold.mp4", cold_range)) * 1e3
    time.sleep(1)
    out["cold range origin MiB"] = origin_count(origin_port) / (1 << 20)
    origin_count(origin_port, reset=True)
    began = time.perf_counter()
    asyncio.run(stampede(port, "/stampede.mp4", 50))
    out["stampede 50x s"] = time.perf_counter() - began
    time.sleep(1)
    out["stampede origin/size"] = origin_count(origin_port) / size
    return out




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        origin_dir = work / "origin"
        origin_dir.mkdir()
        for name in ("hot.mp4", "cold.mp4", "stampede.mp4"):
            write_random_file(origin_dir / name, args.size_mib)
        origin_port = free_port()
        origin = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "origin.py"), str(origin_dir), str(origin_port)],
            cwd=REPO, start_new_session=True,
        )
        wait_port(origin_port, origin)
        try:
            proxies = (  # each proxy has a cache of its own: each starts cold
                ("edgecache", lambda: start_edgecache(f"http://127.0.0.1:{origin_port}", work / "edgecache-cache",
                                                      args.workers, block_size=str(SLICE))),
                ("nginx", lambda: nginx_proxy(work, origin_port, args.workers)),
            )
            rows = measure_each(proxies, lambda port: measure(port, origin_port, size, args.seconds))
        finally:
            stop(origin)
    metrics = list(next(iter(rows.values())))
    print(f"\nfile {args.size_mib} MiB, slices 4 MiB, {args.workers} workers each, {args.seconds:.0f} s per figure")
    print(f"{'metric':<24}" + "".join(f"{n:>12}" for n in rows) + ("       ratio" if len(rows) == 2 else ""))
    for m in metrics:
        line = f"{m:<24}" + "".join(f"{rows[n][m]:>12.2f}" for n in rows)
        if len(rows) == 2:
            e, n = rows["edgecache"][m], rows["nginx"][m]
            line += f"{(e / n if n else float('nan')):>12.2f}"
        print(line)


if __name__ == "__main__":
    main()
