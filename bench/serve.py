"""Benchmark: edgecache serving an origin directory, against nginx serving the same file.

    python bench/serve.py [--size-mib 256] [--seconds 10] [--workers 2]

Prints full-file throughput and random 1 MiB range throughput / latency with 64
connections, for edgecache and (when installed) nginx, and their ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure_each, start_edgecache, start_nginx, write_random_file  # noqa: E402
from loadgen import Result, run  # noqa: E402


def nginx_static(origin: Path, workdir: Path, workers: int) -> tuple[subprocess.Popen, int] | None:
    return start_nginx(workdir / "nginx", workers, f"server {{ listen 127.0.0.1:{{port}}; root {origin}; }}")


def measure(port: int, path: str, size: int, seconds: float) -> tuple[Result, Result]:
    full = asyncio.run(run(port, path, connections=1, seconds=seconds, size=size, range_size=None))
    ranges = asyncio.run(run(port, path, connections=64, seconds=seconds, size=size, range_size=1 << 20))
    return full, ranges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers drop root and must reach the file
        origin = work / "origin"
        origin.mkdir()
        write_random_file(origin / "movie.mp4", args.size_mib)
        starters = (
            ("edgecache", lambda: start_edgecache(str(origin), work / "cache", args.workers, cache_enabled="false")),
            ("nginx", lambda: nginx_static(origin, work, args.workers)),
        )
        rows: dict[str, tuple[Result, Result]] = measure_each(
            starters, lambda port: measure(port, "/movie.mp4", size, args.seconds))
    print(f"\nfile {args.size_mib} MiB, {args.workers} workers each, {args.seconds:.0f} s per figure, "
          f"{os.cpu_count()} cores")
    print(f"{'server':<10} {'full GET MB/s':>14} {'1MiB ranges MB/s':>17} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, (full, ranges) in rows.items():
        print(f"{name:<10} {full.mb_per_s:>14.0f} {ranges.mb_per_s:>17.0f} {ranges.percentile(0.5) * 1e3:>8.1f}"
              f" {ranges.percentile(0.99) * 1e3:>8.1f} {full.errors + ranges.errors:>7}")
    if len(rows) == 2:
        (ef, er), (nf, nr) = rows["edgecache"], rows["nginx"]
        print(f"{'ratio':<10} {ef.mb_per_s / nf.mb_per_s:>14.2f} {er.mb_per_s / nr.mb_per_s:>17.2f}"
              f" {er.percentile(0.5) / nr.percentile(0.5):>8.2f} {er.percentile(0.99) / nr.percentile(0.99):>8.2f}")


if __name__ == "__main__":
    main()
