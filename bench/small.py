"""Benchmark: many distinct small objects, cold, from a slow origin: edgecache against nginx proxy_cache.

    python bench/small.py [--seconds 8] [--rounds 3] [--workers 2] [--objects 20000] [--size 8192]
                          [--origin-delay-ms 20] [--cache-size-limit 128MiB] [--block-size 2MiB]
                          [--max-object-size 64MiB] [--du-every 0]

The origin (bench/origin.py: edgecache serving a directory uncached, each request delayed)
holds --objects files of --size bytes under /s/. wrk asks for them on 64 connections, each
thread counting up through the catalogue from its own start, a quarter of the requests asking
again for an object asked before (bench/wrk_small.lua): most requests are misses, each for
an object nobody asked yet. Both proxies run with the same workers; edgecache with the cache
limit and block size of the kit that found the problem (issue 24), nginx with the same limit
(proxy_cache_path max_size, which its cache manager keeps). Each run starts the proxy
with an empty cache (cold), and the load begins once every worker accepts connections (wrk
connects all of its connections at once, and keeps them: those made while the other workers
start would all go to the first one up); the proxies take turns, --rounds times; each figure
is the median run. After each run a sample of the objects is checked through the proxy: the bytes
are the origin's, and asked again they are a hit.

--du-every S (seconds, 0: off) also measures each proxy's cache directory on disk as `du` counts
it (the allocated blocks of every file and folder in it) every S seconds during each run and for
DU_AFTER seconds after the load, while the edge still runs: the peak, and the last figure. Each
look walks the whole directory (a system call a file), in this process, on the cores the servers
share: the rates of such a run are a little lower. Run long enough for the objects asked to pass
the limit (`--seconds 40` does at this rate, for 20,000 objects of 8 KiB and 128 MiB).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (  # noqa: E402
    REPO,
    WrkResult,
    cpu_seconds,
    cpu_used,
    free_port,
    nginx_proxy,
    nginx_version,
    run_wrk,
    session_stats,
    start_edgecache,
    stop,
    wait_port,
    wrk_binary,
)

from proxy.config import parse_size  # noqa: E402

BENCH = Path(__file__).resolve().parent
CHECKED = 50  # objects checked after each run
DU_AFTER = 10.0  # seconds the cache directory is measured after the load


@dataclass
class Runs:
    name: str
    results: list[WrkResult] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU per request, each run
    origin_share: list[float] = field(default_factory=list)  # origin requests per proxy request, each run
    rss_growth: list[float] = field(default_factory=list)  # MiB, each run
    du_peak: list[float] = field(default_factory=list)  # MiB on disk, each run (--du-every)
    du_after: list[float] = field(default_factory=list)  # MiB on disk DU_AFTER seconds after the load


def allocated(directory: Path) -> int:
    """Bytes a directory takes on disk, as `du` counts them: the allocated blocks of everything in it."""
    total = 0
    for root, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # removed meanwhile (an eviction, a renamed part)
                pass
    return total


class DiskWatch(threading.Thread):
    """The peak and the last of `allocated(directory)`, looked at every `every` seconds until stopped."""

    def __init__(self, directory: Path, every: float) -> None:
        super().__init__(daemon=True)
        self.directory, self.every = directory, every
        self.peak = self.last = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.last = allocated(self.directory)
            self.peak = max(self.peak, self.last)
            self.done.wait(self.every)

    def stop(self) -> tuple[float, float]:
        """(peak, last) in MiB, the last looked at now."""
        self.done.set()
        self.join()
        self.last = allocated(self.directory)
        return max(self.peak, self.last) / (1 << 20), self.last / (1 << 20)


def get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        # the proxy's own X-Cache, the last one (an origin may send one too)
        return r.status, (r.getheader("x-cache") or "").rpartition(",")[2].strip(), r.read()
    finally:
        conn.close()


def check(name: str, port: int, origin_dir: Path, objects: int) -> None:
    """Objects asked during the run (and a few not asked): the origin's bytes, and then a hit."""
    for n in range(0, objects, max(1, objects // CHECKED)):
        path = f"/s/{n}.bin"
        want = (origin_dir / path.lstrip("/")).read_bytes()
        status, _, body = get(port, path)
        again, xcache, body2 = get(port, path)
        if (status, body, again, body2, xcache) != (200, want, 200, want, "HIT"):
            raise SystemExit(f"{name}: {path} answered {status} ({len(body)} bytes), then {again} {xcache!r} "
                             f"({len(body2)} bytes): not the origin's {len(want)} bytes, then a hit")


def origin_requests(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/_count")
        return int(json.loads(conn.getresponse().read())["requests"])
    finally:
        conn.close()


def _links(pid: int) -> dict[int, str]:
    """The process's descriptors: {fd: what it is, as /proc shows it}."""
    links = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            links[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return links


def accepting(pid: int, listening: set[str]) -> bool:
    """Does the process wait for connections on one of the `listening` sockets (its event loop's
    epoll watches one)?"""
    try:
        links = _links(pid)
        watched = set()
        for fd, link in links.items():
            if link == "anon_inode:[eventpoll]":
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    watched |= {int(line.split()[1]) for line in f if line.startswith("tfd:")}
    except OSError:
        return False
    return any(links.get(fd) in listening for fd in watched)


def all_accepting(proc: subprocess.Popen, workers: int) -> None:
    """Wait until `workers` processes of the server's session accept on its listening sockets."""
    listening = {link for link in _links(proc.pid).values() if link.startswith("socket:")}
    deadline = time.monotonic() + 60
    while sum(accepting(pid, listening) for pid in session_stats(proc.pid) if pid != proc.pid) < workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"the workers of {proc.args} did not all start")
        time.sleep(0.1)


def measure(runs: Runs, start: Callable[[], tuple[subprocess.Popen, int] | None], origin_port: int,
            origin_dir: Path, args: argparse.Namespace, watched: Path | None = None) -> bool:
    """One cold run: start the proxy on an empty cache, load it, check it, stop it. False: not installed.
    `watched`: a directory measured on disk during the run and DU_AFTER seconds after (--du-every)."""
    started = start()
    if started is None:
        return False
    proc, port = started
    watch = DiskWatch(watched, args.du_every) if watched is not None and args.du_every > 0 else None
    try:
        if watch is not None:
            watch.start()
        before_cpu = cpu_seconds(proc.pid)
        before_rss = sum(s.rss for s in session_stats(proc.pid).values())
        before_origin = origin_requests(origin_port)
        result = run_wrk(f"http://127.0.0.1:{port}/", connections=64, seconds=args.seconds,
                         script=BENCH / "wrk_small.lua", script_args=(str(args.objects),))
        cpu = cpu_used(before_cpu, cpu_seconds(proc.pid))
        rss = sum(s.rss for s in session_stats(proc.pid).values())
        asked = origin_requests(origin_port) - before_origin
        if watch is not None:
            time.sleep(DU_AFTER)
            peak, last = watch.stop()
            runs.du_peak.append(peak)
            runs.du_after.append(last)
        check(runs.name, port, origin_dir, args.objects)
    finally:
        if watch is not None and watch.is_alive():
            watch.stop()
        stop(proc)
    runs.results.append(result)
    runs.cpu_us.append(cpu / max(result.requests, 1) * 1e6)
    runs.origin_share.append(asked / max(result.requests, 1))
    runs.rss_growth.append((rss - before_rss) / (1 << 20))
    errors = result.errors if result.error_count else 0
    print(f"  {runs.name:<28} {result.req_per_s:>8,.0f} req/s, p50 {result.p50_ms:7.1f} ms, p99 "
          f"{result.p99_ms:7.1f} ms, CPU {runs.cpu_us[-1]:7.0f} us/request, origin requests/request "
          f"{runs.origin_share[-1]:.2f}, errors {errors}", flush=True)
    return True


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def median_run(runs: Runs) -> WrkResult:
    return sorted(runs.results, key=lambda r: r.req_per_s)[len(runs.results) // 2]


ROWS: tuple[tuple[str, Callable[[Runs], float], str], ...] = (
    ("requests per second (64 connections, mostly misses)", lambda r: median_run(r).req_per_s, "{:,.0f}"),
    ("... p50 latency, ms", lambda r: median_run(r).p50_ms, "{:,.1f}"),
    ("... p99 latency, ms", lambda r: median_run(r).p99_ms, "{:,.1f}"),
    ("server CPU per request, us", lambda r: median(r.cpu_us), "{:,.0f}"),
    ("origin requests per request", lambda r: median(r.origin_share), "{:.2f}"),
    ("RSS growth over a run, MiB", lambda r: median(r.rss_growth), "{:,.1f}"),
)
DISK_ROWS: tuple[tuple[str, Callable[[Runs], float], str], ...] = (
    ("cache directory on disk (du), peak during the run, MiB", lambda r: median(r.du_peak), "{:,.1f}"),
    (f"... {DU_AFTER:g} s after the load, MiB", lambda r: median(r.du_after), "{:,.1f}"),
)


def table(rows: list[Runs]) -> str:
    reference, others = rows[0], rows[1:]
    head = ["metric", reference.name] + [c for r in others for c in (r.name, "ratio")]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, figure, fmt in ROWS:
        cells = [label, fmt.format(figure(reference))]
        for r in others:
            value, ref = figure(r), figure(reference)
            cells += [fmt.format(value), f"{value / ref:.2f}" if ref else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    for label, figure, fmt in DISK_ROWS:
        if any(r.du_peak for r in rows):
            shown = [fmt.format(figure(r)) if r.du_peak else "-" for r in rows]
            cells = [label, shown[0]] + [c for value in shown[1:] for c in (value, "")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run (wrk -d), whole seconds")
    parser.add_argument("--rounds", type=int, default=3, help="cold runs of each proxy; medians are shown")
    parser.add_argument("--workers", type=int, default=2, help="for both edgecache and nginx")
    parser.add_argument("--objects", type=int, default=20_000, help="distinct objects at the origin")
    parser.add_argument("--size", type=int, default=8192, help="bytes of each object")
    parser.add_argument("--origin-delay-ms", type=float, default=20, help="each origin request waits that long")
    parser.add_argument("--cache-size-limit", default="128MiB", help="edgecache's cache_size_limit")
    parser.add_argument("--block-size", default="2MiB", help="edgecache's block_size")
    parser.add_argument("--max-object-size", default="64MiB",
                        help="edgecache's max_object_size (half the limit at most)")
    parser.add_argument("--du-every", type=float, default=0,
                        help="seconds between looks at edgecache's cache directory on disk (0: none)")
    args = parser.parse_args()
    wrk_binary()
    command = "python " + shlex.join(sys.argv)
    print(command, flush=True)

    def interrupted(signum, frame):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="edgecache-small-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers drop root and must reach their cache
        origin_dir = work / "origin"
        (origin_dir / "s").mkdir(parents=True)
        for n in range(args.objects):
            (origin_dir / "s" / f"{n}.bin").write_bytes(os.urandom(args.size))
        origin_port = free_port()
        origin = subprocess.Popen([sys.executable, str(BENCH / "origin.py"), str(origin_dir), str(origin_port),
                                   "--delay-ms", str(args.origin_delay_ms)], cwd=REPO, start_new_session=True)
        nginx = nginx_version()
        upstream = f"http://127.0.0.1:{origin_port}"
        rows = [Runs(f"{nginx}, {args.workers} workers"), Runs(f"edgecache, {args.workers} workers")]

        def fresh(name: str) -> Path:
            path = work / name
            shutil.rmtree(path, ignore_errors=True)
            return path

        def edgecache() -> tuple[subprocess.Popen, int]:
            proc, port = start_edgecache(upstream, fresh("edgecache-cache"), args.workers,
                                         cache_size_limit=args.cache_size_limit, block_size=args.block_size,
                                         max_object_size=args.max_object_size)
            try:
                all_accepting(proc, args.workers)
            except BaseException:
                stop(proc)
                raise
            return proc, port

        nginx_limit = f"{parse_size(args.cache_size_limit) // 1024}k"  # the same limit for nginx's cache
        starters: list[Callable[[], tuple[subprocess.Popen, int] | None]] = [
            lambda: nginx_proxy(fresh("nginx"), origin_port, args.workers, max_size=nginx_limit), edgecache,
        ]
        try:
            wait_port(origin_port, origin)
            for round_ in range(args.rounds):
                print(f"round {round_ + 1} of {args.rounds}", flush=True)
                watch_dirs = (work / "nginx" / "nginx-cache", work / "edgecache-cache")
                for runs, start, watched in zip(rows, starters, watch_dirs, strict=True):
                    if not measure(runs, start, origin_port, origin_dir, args, watched):
                        print(f"{runs.name}: not installed, skipped")
        finally:
            stop(origin)
    rows = [r for r in rows if r.results]
    if not rows:
        raise SystemExit("nothing measured")
    print(f"\n## Results\n\n```sh\n{command}\n```\n")
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; origin: "
          f"bench/origin.py, {args.origin_delay_ms:g} ms per request, {args.objects:,} objects of {args.size:,} B; "
          f"edgecache cache_size_limit {args.cache_size_limit}, block_size {args.block_size}; each proxy cold "
          f"(an empty cache) in each of {args.rounds} runs of {args.seconds} s, taking turns; each figure the "
          "median run; ratio = this column / the first. wrk, the proxies and the origin share the machine's "
          "cores: the ratios are the point.\n")
    print(table(rows))
    if args.du_every > 0:
        print(f"\nOn disk: each proxy's cache directory as du counts it, every {args.du_every:g} s during the load "
              f"and for {DU_AFTER:g} s after it (the limit: {args.cache_size_limit}).")
    errors = {r.name: sum(x.error_count for x in r.results) for r in rows if any(x.error_count for x in r.results)}
    if errors:
        print(f"WARNING: wrk reported errors or non-2xx/3xx answers: {errors}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped, temporary files removed", file=sys.stderr)
        sys.exit(130)
