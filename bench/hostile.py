"""Hostile clients, against edgecache and nginx proxy_cache with the same workers, in one run.

    python bench/hostile.py [--workers 2] [--header-timeout 10] [--send-timeout 10]

Both proxies stand in front of the same local origin (bench/origin.py) with the same limits
(edgecache: client_header_timeout, send_timeout; nginx: client_header_timeout, send_timeout).
For each, in turn:

- slowloris: 200 connections send a request head at one byte a second; when each was closed
  by the server (seconds after it opened), and the latency of 50 ordinary requests made
  meanwhile (p50, p99);
- never-reading clients: 100 clients ask for a 256 MiB object (warm in the cache) and read
  nothing; the server's open descriptors (all its processes) before, while they wait, and
  send_timeout + 5 s after they asked;
- floods: one connection sends `GET /x` and then 500 MB of header lines; another pipelines
  10,000 requests without reading an answer; the peak growth of the server's resident memory
  (all its processes) over each.
"""
from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MemorySampler,
    free_port,
    nginx_proxy,
    session_stats,
    start_edgecache,
    stop,
    wait_port,
    write_random_file,
)

BENCH = Path(__file__).resolve().parent
BIG_MIB = 256


def descriptors(session: int) -> int:
    total = 0
    for pid in session_stats(session):
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def fetch(port: int, path: str) -> float:
    """One ordinary GET; its latency in seconds."""
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
        r.read()
    return time.monotonic() - started


def slowloris(port: int, limit: float) -> tuple[float, int, list[float]]:
    """(seconds until the last slow head was closed, how many were still open at `limit` + 5 s,
    latencies of ordinary requests made meanwhile)."""
    opened = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    head = b"GET /small.bin HTTP/1.1\r\nHost: bench\r\n" + b"X-Pad: " + b"a" * 200
    closed: dict[socket.socket, float] = {}
    latencies: list[float] = []
    second = 0
    while len(closed) < len(socks) and time.monotonic() - opened < limit + 5:
        for s in socks:
            if s not in closed:
                try:
                    s.send(head[second % len(head):second % len(head) + 1])
                except OSError:
                    closed[s] = time.monotonic() - opened
        tick = time.monotonic() + 1
        while time.monotonic() < tick:
            if len(latencies) < 50 and time.monotonic() - opened > len(latencies) * (limit / 50):
                latencies.append(fetch(port, "/small.bin"))
            readable = select.select([s for s in socks if s not in closed], [], [], 0.05)[0]
            for s in readable:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    closed[s] = time.monotonic() - opened
        second += 1
    for s in socks:
        s.close()
    return max(closed.values(), default=0.0), len(socks) - len(closed), latencies


def never_reading(port: int, session: int, limit: float) -> tuple[int, int, int]:
    """Descriptors of the server: before, while 100 clients that read nothing wait, and
    `limit` + 5 s after they asked."""
    with ThreadPoolExecutor(64) as pool:  # the servers' own descriptors (threads' connections, open files) first
        list(pool.map(lambda _: fetch(port, "/small.bin"), range(256)))
    time.sleep(1)
    before = descriptors(session)
    clients = []
    for _ in range(100):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: bench\r\n\r\n")
        clients.append(s)
    asked = time.monotonic()
    time.sleep(1)
    during = descriptors(session)
    time.sleep(max(0.0, asked + limit + 5 - time.monotonic()))
    after = descriptors(session)
    for s in clients:
        s.close()
    return before, during, after


def _flood(port: int, first: bytes, more: bytes, total: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(5)
        try:
            s.sendall(first)
            sent = 0
            while sent < total:
                s.sendall(more)
                sent += len(more)
        except OSError:
            pass


def flood_growth(port: int, session: int, first: bytes, more: bytes, total: int) -> int:
    """Peak growth of the server's resident memory (all its processes) while flooded, bytes."""
    sampler = MemorySampler(session).start()
    base = sampler.peak_total
    _flood(port, first, more, total)
    time.sleep(1)
    sampler.stop()
    return sampler.peak_total - base


def measure(name: str, port: int, session: int, args: argparse.Namespace) -> dict[str, str]:
    fetch(port, "/big.bin")  # warm: both serve the big object from their cache
    last, still_open, latencies = slowloris(port, args.header_timeout)
    before, during, after = never_reading(port, session, args.send_timeout)
    headers = flood_growth(port, session, b"GET /x HTTP/1.1\r\nHost: bench\r\nX-Big: ", b"a" * 1024**2, 500 * 1024**2)
    request = b"GET /small.bin HTTP/1.1\r\nHost: bench\r\n\r\n"
    pipelined = flood_growth(port, session, request, request * 1000, 10_000 * len(request))
    latencies.sort()
    return {
        "slowloris: last of 200 closed after, s": f"{last:.1f}" + (f" ({still_open} still open)" if still_open else ""),
        "ordinary requests meanwhile, p50 / p99 ms": f"{statistics.median(latencies) * 1e3:.1f} / "
                                                      f"{latencies[int(len(latencies) * 0.99) - 1] * 1e3:.1f}",
        "100 never-reading clients: descriptors before / during / send_timeout + 5 s after":
            f"{before} / {during} / {after}",
        "500 MB of headers: RSS growth, MiB": f"{headers / 1024**2:.1f}",
        "10,000 pipelined unread: RSS growth, MiB": f"{pipelined / 1024**2:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--send-timeout", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgecache-hostile-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers drop root and must reach their cache
        origin_dir = work / "origin"
        origin_dir.mkdir()
        write_random_file(origin_dir / "big.bin", BIG_MIB)
        (origin_dir / "small.bin").write_bytes(os.urandom(1024))
        origin_port = free_port()
        origin = subprocess.Popen([sys.executable, str(BENCH / "origin.py"), str(origin_dir), str(origin_port)],
                                  start_new_session=True)
        wait_port(origin_port, origin)
        rows: dict[str, dict[str, str]] = {}
        try:
            limits = (f"client_header_timeout {args.header_timeout:g}s; send_timeout {args.send_timeout:g}s; "
                      "keepalive_timeout 5s;")
            started = nginx_proxy(work, origin_port, args.workers, http_extra=limits)
            if started is not None:
                proc, port = started
                try:
                    rows["nginx"] = measure("nginx", port, proc.pid, args)
                finally:
                    stop(proc)
            proc, port = start_edgecache(f"http://127.0.0.1:{origin_port}", work / "cache", args.workers,
                                         client_header_timeout=str(args.header_timeout),
                                         send_timeout=str(args.send_timeout), block_size="4MiB")
            try:
                rows["edgecache"] = measure("edgecache", port, proc.pid, args)
            finally:
                stop(proc)
        finally:
            stop(origin)
    names = list(rows)
    figures = list(next(iter(rows.values())))
    width = max(len(f) for f in figures)
    print(f"\n{args.workers} workers each; client_header_timeout {args.header_timeout:g} s, "
          f"send_timeout {args.send_timeout:g} s\n")
    print(f"| {'':{width}} | " + " | ".join(names) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * (len(n) + 2) for n in names) + "|")
    for figure in figures:
        print(f"| {figure:{width}} | " + " | ".join(rows[n][figure] for n in names) + " |")


if __name__ == "__main__":
    main()
