"""Benchmark: warm cache hits under wrk, edgecache against nginx proxy_cache + slice 4m, and
the Python ceiling (bench/ceiling.py: a bare ASGI app serving the same files under uvicorn).

    python bench/hits.py [--seconds 5] [--rounds 3] [--workers 2] [--also-one-worker] [--origin-delay-ms 20]
                         [--figures browser revalidations ...] [--nginx-reuseport]

Both proxies run with the same number of workers in front of the same slow local origin
(bench/origin.py: edgecache serving a directory uncached, each request delayed, counting
what it sends), all of them started once, for the whole run. Each proxy has a cache of its
own; each is warmed and checked (every 4 MiB slice of the big object and the small one
answer HIT, the bytes equal the origin's, If-None-Match gets 304) before anything is
measured, and the origin must see no request while they are measured. The machine's speed
drifts over minutes, so the proxies take turns: in each of --rounds rounds, each figure is
measured for each proxy in turn (another proxy first in each round), and the table shows each
figure's median run. The load generator is wrk (never Python), with --timeout 30s so that slow
answers count in the latency instead of being dropped.

Figures, each run over --seconds: a 64 MiB GET on 1 connection (MiB/s); random 1 MiB ranges,
half aligned on 1 MiB and half not, on 64 connections (MiB/s, p99 ms; bench/wrk_ranges.lua);
what browsers' players ask: 1 MiB ranges at any byte, each request with a dozen fields of its
client's (User-Agent, cookie, language, Referer, Sec-Fetch-*: bench/wrk_browser.lua);
1 KiB hits on 64 connections (req/s) and the server CPU per request over that run
(utime+stime of all the server's processes, from /proc, divided by wrk's requests); the same
1 KiB hits with a header field of its own in each request (bench/wrk_distinct.lua: no two
requests identical, but alike in every field the answer depends on); 304
revalidations on 64 connections (If-None-Match: the object's ETag), and with If-Modified-Since
(its Last-Modified); the peak resident
memory of the server's processes over the whole run, per worker and in total.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,
    SLICE,
    MemorySampler,
    WrkResult,
    cpu_seconds,
    cpu_used,
    free_port,
    nginx_proxy,
    nginx_version,
    run_wrk,
    start_ceiling,
    start_edgecache,
    stop,
    wait_port,
    write_random_file,
    wrk_binary,
)

BIG, BIG_MIB = "/video.mp4", 64
SMALL, SMALL_SIZE = "/small.mp4", 1024
RANGE = 1 << 20
BENCH = Path(__file__).resolve().parent


# --- checks with single requests ----------------------------------------------------------

def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def warm_and_check(name: str, port: int, files: dict[str, bytes]) -> tuple[str, str]:
    """Fill the proxy's cache, then check that it is warm and right; the small object's ETag and
    Last-Modified."""
    big, small = files[BIG], files[SMALL]
    for _ in range(2):  # the second full GET must be a hit
        status, headers, body = get(port, BIG)
        if status != 200 or hashlib.sha256(body).digest() != hashlib.sha256(big).digest():
            raise SystemExit(f"{name}: GET {BIG} gave {status}, {len(body)} bytes, not the origin's")
    for first in range(0, len(big), SLICE):  # every slice, so that none is left cold
        get(port, BIG, {"Range": f"bytes={first}-{first + RANGE - 1}"})
    get(port, SMALL)
    cold = []
    for first in range(0, len(big), SLICE):
        status, headers, _ = get(port, BIG, {"Range": f"bytes={first}-{first + RANGE - 1}"})
        if headers.get("x-cache") != "HIT":
            cold.append(f"{BIG} bytes={first}-: {status} x-cache={headers.get('x-cache')}")
    status, headers, body = get(port, SMALL)
    if headers.get("x-cache") != "HIT" or body != small:
        cold.append(f"{SMALL}: {status} x-cache={headers.get('x-cache')}, {len(body)} bytes")
    status, headers, _ = get(port, BIG)
    if headers.get("x-cache") != "HIT":
        cold.append(f"{BIG}: {status} x-cache={headers.get('x-cache')}")
    if cold:
        raise SystemExit(f"{name}: not warm after warming:\n  " + "\n  ".join(cold))
    rng = random.Random(7)
    for aligned in (True, False) * 8:  # the range shapes wrk_ranges.lua asks for
        first = rng.randrange(len(big) // RANGE) * RANGE if aligned else rng.randrange(len(big) - RANGE + 1)
        status, headers, body = get(port, BIG, {"Range": f"bytes={first}-{first + RANGE - 1}"})
        equal = body == big[first:first + RANGE]
        if status != 206 or not equal or headers.get("x-cache") != "HIT":
            raise SystemExit(f"{name}: range bytes={first}-{first + RANGE - 1} gave {status} "
                             f"x-cache={headers.get('x-cache')}, {len(body)} bytes, equal to the origin's: {equal}")
    etag = get(port, SMALL)[1].get("etag")
    if not etag:
        raise SystemExit(f"{name}: {SMALL} has no ETag")
    status, headers, body = get(port, SMALL, {"If-None-Match": etag})
    if status != 304 or body or headers.get("x-cache") != "HIT":
        raise SystemExit(f"{name}: If-None-Match {etag} gave {status} x-cache={headers.get('x-cache')}, "
                         f"{len(body)} bytes (wanted 304 HIT)")
    modified = get(port, SMALL)[1].get("last-modified", "")
    status, headers, body = get(port, SMALL, {"If-Modified-Since": modified})
    if status != 304 or body or headers.get("x-cache") != "HIT":
        raise SystemExit(f"{name}: If-Modified-Since {modified} gave {status} x-cache={headers.get('x-cache')}, "
                         f"{len(body)} bytes (wanted 304 HIT)")
    print(f"  warm: every slice of {BIG} and {SMALL} answer x-cache: HIT, bytes equal the origin's, "
          f"If-None-Match {etag} and If-Modified-Since {modified} -> 304", flush=True)
    return etag, modified


# --- the origin ---------------------------------------------------------------------------

def origin_counts(port: int, reset: bool = False) -> dict[str, int]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/_count", method="POST" if reset else "GET")
    with urllib.request.urlopen(request) as r:
        return json.load(r)


# --- the proxies, measured in turn ----------------------------------------------------------

FIGURES = ("full", "ranges", "browser", "small", "distinct", "revalidations", "since")


@dataclass
class Server:
    """One proxy, running for the whole benchmark, and what was measured of it."""

    name: str
    proc: subprocess.Popen
    port: int
    etag: str = ""
    last_modified: str = ""
    memory: MemorySampler | None = None
    runs: dict[str, list[WrkResult]] = field(default_factory=dict)
    cpu_us: list[float] = field(default_factory=list)  # per request, one per 1 KiB run
    origin_requests: int = 0


def run_figure(server: Server, figure: str, seconds: int, threads: int, origin_port: int, big_size: int) -> None:
    """One wrk run of one figure against one proxy; the origin must see no request meanwhile."""
    base = f"http://127.0.0.1:{server.port}"
    origin_counts(origin_port, reset=True)
    before = cpu_seconds(server.proc.pid)
    if figure == "full":
        result = run_wrk(base + BIG, connections=1, seconds=seconds, threads=threads)
    elif figure == "ranges":
        result = run_wrk(base + BIG, connections=64, seconds=seconds, threads=threads,
                         script=BENCH / "wrk_ranges.lua", script_args=(str(big_size), str(RANGE)))
    elif figure == "small":
        result = run_wrk(base + SMALL, connections=64, seconds=seconds, threads=threads)
    elif figure == "browser":
        result = run_wrk(base + BIG, connections=64, seconds=seconds, threads=threads,
                         script=BENCH / "wrk_browser.lua", script_args=(str(big_size), str(RANGE)))
    elif figure == "distinct":
        result = run_wrk(base + SMALL, connections=64, seconds=seconds, threads=threads,
                         script=BENCH / "wrk_distinct.lua")
    elif figure == "since":
        result = run_wrk(base + SMALL, connections=64, seconds=seconds, threads=threads,
                         headers=(f"If-Modified-Since: {server.last_modified}",))
    else:
        result = run_wrk(base + SMALL, connections=64, seconds=seconds, threads=threads,
                         headers=(f"If-None-Match: {server.etag}",))
    if figure == "small" and result.requests:
        server.cpu_us.append(cpu_used(before, cpu_seconds(server.proc.pid)) / result.requests * 1e6)
    server.origin_requests += origin_counts(origin_port)["requests"]
    server.runs.setdefault(figure, []).append(result)
    errors = result.errors if result.error_count else 0
    print(f"  {server.name:<48} {figure:<13} {result.req_per_s:>10,.0f} req/s, {result.mib_per_s:>8,.0f} MiB/s, "
          f"p50 {result.p50_ms:7.1f} ms, p99 {result.p99_ms:7.1f} ms, errors {errors}", flush=True)
    if result.error_count:
        print("    wrk said:\n      " + "\n      ".join(result.output.strip().splitlines()))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


@dataclass
class Figures:
    """A proxy's figures: for each, the run with the median throughput over the rounds; the
    p99 and the CPU per request are medians of their own."""

    full: WrkResult
    ranges: WrkResult
    browser: WrkResult
    small: WrkResult
    distinct: WrkResult
    revalidations: WrkResult
    since: WrkResult
    ranges_p99_ms: float
    browser_p99_ms: float
    cpu_us_per_request: float
    rss_worker: float  # MiB, the largest worker's peak
    rss_total: float  # MiB, peak of the sum over all the server's processes
    processes: list[str]
    origin_requests: int
    wrk_errors: int  # over every run


def figures_of(server: Server) -> Figures:
    def median_run(figure: str) -> WrkResult:  # (an empty result for a figure not measured)
        runs = sorted(server.runs.get(figure, [WrkResult("", "")]), key=lambda r: r.req_per_s)
        return runs[len(runs) // 2]

    memory = server.memory
    assert memory is not None
    alone = len(memory.peaks) == 1
    workers = [peak for pid, peak in memory.peaks.items()
               if is_worker(memory.cmdlines.get(pid, ""), pid == server.proc.pid, alone)]
    processes = [f"{pid} {memory.peaks[pid] / (1 << 20):.1f} MiB  {memory.cmdlines.get(pid, '')[:90]}"
                 for pid in sorted(memory.peaks)]
    return Figures(
        *(median_run(f) for f in FIGURES),
        ranges_p99_ms=_median([r.p99_ms for r in server.runs.get("ranges", [])]),
        browser_p99_ms=_median([r.p99_ms for r in server.runs.get("browser", [])]),
        cpu_us_per_request=_median(server.cpu_us),
        rss_worker=max(workers, default=0) / (1 << 20),
        rss_total=max(memory.peak_total, *memory.peaks.values()) / (1 << 20),
        processes=processes,
        origin_requests=server.origin_requests,
        wrk_errors=sum(r.error_count for runs in server.runs.values() for r in runs),
    )


def is_worker(cmdline: str, leader: bool, alone: bool) -> bool:
    """nginx: its worker processes (not the master, cache manager or loader); uvicorn: the
    processes under the supervisor (not a multiprocessing resource tracker)."""
    if alone:
        return True
    if cmdline.startswith("nginx:"):
        return "worker process" in cmdline
    return not leader and "resource_tracker" not in cmdline


def measure_all(servers: list[Server], files: dict[str, bytes], origin_port: int, seconds: int, threads: int,
                rounds: int, figures: list[str]) -> dict[str, Figures]:
    """Warm and check every proxy, then measure: in each round, each figure for each proxy in
    turn (another going first each round), so that a change in the machine's speed over the run
    falls on all of them alike."""
    for server in servers:
        print(f"\n{server.name} (port {server.port})", flush=True)
        server.etag, server.last_modified = warm_and_check(server.name, server.port, files)
    time.sleep(0.5)
    for server in servers:
        server.memory = MemorySampler(server.proc.pid).start()
    try:
        for round_ in range(1, rounds + 1):
            print(f"\nround {round_} of {rounds}", flush=True)
            turn = (round_ - 1) % len(servers)  # each round another proxy goes first: no order favours one
            for figure in figures:
                for server in servers[turn:] + servers[:turn]:
                    run_figure(server, figure, seconds, threads, origin_port, len(files[BIG]))
    finally:
        for server in servers:
            if server.memory is not None:
                server.memory.stop()
    rows = {server.name: figures_of(server) for server in servers}
    for server in servers:
        since = "while measured" if server.memory is not None and server.memory.hwm_reset else \
            "since start (VmHWM could not be reset)"
        print(f"\n{server.name}: CPU per 1 KiB request {', '.join(f'{c:.1f}' for c in server.cpu_us)} us; "
              f"origin requests while measured: {server.origin_requests}; peak RSS per process {since}:\n    "
              + "\n    ".join(rows[server.name].processes), flush=True)
    return rows


# --- the servers ------------------------------------------------------------------------------


def edgecache_version() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "proxy")
    return commit + (" + uncommitted changes in proxy/" if dirty else "")


# --- the table ----------------------------------------------------------------------------------

ROWS = (  # label, the figure it comes from (None: the whole run), figure, format
    ("64 MiB GET, 1 connection, MiB/s", "full", lambda f: f.full.mib_per_s, "{:,.0f}"),
    ("random 1 MiB ranges, 64 connections, MiB/s", "ranges", lambda f: f.ranges.mib_per_s, "{:,.0f}"),
    ("... p99 latency, ms", "ranges", lambda f: f.ranges_p99_ms, "{:,.1f}"),
    ("browsers' 1 MiB ranges at any byte, their own fields, MiB/s", "browser", lambda f: f.browser.mib_per_s,
     "{:,.0f}"),
    ("... p99 latency, ms", "browser", lambda f: f.browser_p99_ms, "{:,.1f}"),
    ("1 KiB hits, 64 connections, req/s", "small", lambda f: f.small.req_per_s, "{:,.0f}"),
    ("... server CPU per request, us", "small", lambda f: f.cpu_us_per_request, "{:,.1f}"),
    ("... each request distinct, req/s", "distinct", lambda f: f.distinct.req_per_s, "{:,.0f}"),
    ("304 revalidations, 64 connections, req/s", "revalidations", lambda f: f.revalidations.req_per_s, "{:,.0f}"),
    ("... with If-Modified-Since, req/s", "since", lambda f: f.since.req_per_s, "{:,.0f}"),
    ("peak memory (RSS) per worker, MiB", None, lambda f: f.rss_worker, "{:,.1f}"),
    ("peak memory (RSS) total, MiB", None, lambda f: f.rss_total, "{:,.1f}"),
)


def table(rows: dict[str, Figures], reference: str, figures: list[str]) -> str:
    names = list(rows)
    others = [n for n in names if n != reference]
    head = ["metric", reference]
    for n in others:
        head += [n, "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, measured, figure, fmt in ROWS:
        if measured is not None and measured not in figures:
            continue
        cells = [label, fmt.format(figure(rows[reference]))]
        for n in others:
            e, ref = figure(rows[n]), figure(rows[reference])
            cells += [fmt.format(e), f"{e / ref:.2f}" if ref else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    for label, figure in (("wrk errors and non-2xx/3xx, all runs", lambda f: f.wrk_errors),
                          ("origin requests while measured", lambda f: f.origin_requests)):
        cells = [label, str(figure(rows[reference]))]
        for n in others:
            cells += [str(figure(rows[n])), ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run (wrk -d), whole seconds")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each figure for each proxy; medians are shown")
    parser.add_argument("--workers", type=int, default=2, help="for both edgecache and nginx")
    parser.add_argument("--also-one-worker", action="store_true", help="also measure edgecache with 1 worker")
    parser.add_argument("--origin-delay-ms", type=float, default=20, help="each origin request waits that long")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk -t (1 for the 1-connection run)")
    parser.add_argument("--figures", nargs="+", choices=FIGURES, default=list(FIGURES),
                        help="measure only these figures (the table shows only their rows)")
    parser.add_argument("--nginx-reuseport", action="store_true",
                        help="nginx with a listening socket per worker too (listen ... reuseport), as edgecache "
                             "has on Linux: the kernel spreads connections evenly over the workers")
    args = parser.parse_args()
    wrk_binary()
    command = "python " + shlex.join(sys.argv)
    cores = os.cpu_count()
    nginx = nginx_version()
    caveat = (f"caveat: wrk (-t{args.wrk_threads}), the proxies and the origin share the {cores} cores of this "
              "machine: absolute figures are low and noisy, the ratios are the point.")
    print(f"{command}\n{caveat}", flush=True)

    def interrupted(signum, frame):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    with tempfile.TemporaryDirectory(prefix="edgecache-hits-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers drop root and must reach their cache
        origin_dir = work / "origin"
        origin_dir.mkdir()
        write_random_file(origin_dir / BIG.lstrip("/"), BIG_MIB)
        (origin_dir / SMALL.lstrip("/")).write_bytes(os.urandom(SMALL_SIZE))
        files = {p: (origin_dir / p.lstrip("/")).read_bytes() for p in (BIG, SMALL)}
        origin_port = free_port()
        origin = subprocess.Popen(
            [sys.executable, str(BENCH / "origin.py"), str(origin_dir), str(origin_port),
             "--delay-ms", str(args.origin_delay_ms)],
            cwd=REPO, start_new_session=True,
        )
        try:
            wait_port(origin_port, origin)
            upstream = f"http://127.0.0.1:{origin_port}"
            starters = [  # each proxy has a cache of its own: each starts cold
                (f"{nginx}{' reuseport' if args.nginx_reuseport else ''}, {args.workers} workers",
                 lambda: nginx_proxy(work, origin_port, args.workers, reuseport=args.nginx_reuseport)),
                (f"edgecache, {args.workers} workers",
                 lambda: start_edgecache(upstream, work / "edgecache-cache", args.workers, block_size=str(SLICE))),
                (f"Python ceiling (bench/ceiling.py), {args.workers} workers",
                 lambda: start_ceiling(origin_dir, args.workers)),
            ]
            if args.also_one_worker and args.workers != 1:
                starters.append(("edgecache, 1 worker",
                                 lambda: start_edgecache(upstream, work / "edgecache-cache-1", 1,
                                                         block_size=str(SLICE))))
            servers: list[Server] = []
            try:
                for name, starter in starters:
                    started = starter()
                    if started is None:
                        print(f"{name}: not installed, skipped")
                        continue
                    servers.append(Server(name, *started))
                rows = measure_all(servers, files, origin_port, args.seconds, args.wrk_threads, args.rounds,
                                   args.figures)
            finally:
                for server in servers:
                    stop(server.proc)
        finally:
            stop(origin)
    if not rows:
        raise SystemExit("nothing measured")
    reference = next(iter(rows))
    wrk_version = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"\n## Results\n\n```sh\n{command}\n```\n")
    print(f"{platform.machine()}, {cores} cores, Python {platform.python_version()}, edgecache "
          f"{edgecache_version()}, {nginx} proxy_cache + slice 4m, {wrk_version.split(' [')[0]}; "
          f"origin: bench/origin.py, {args.origin_delay_ms:g} ms per request; objects: {BIG_MIB} MiB and "
          f"{SMALL_SIZE} B, warm; each figure the median of {args.rounds} runs of {args.seconds} s, the "
          "proxies taking turns; ratio = this column / nginx. The Python ceiling "
          "is a bare ASGI app answering the same requests from the same files with no cache logic "
          "(bench/ceiling.py: pread + send, no zero-copy).\n")
    print(table(rows, reference, args.figures))
    print(f"\nwrk -t{args.wrk_threads} (-t1 for the 1 connection) --timeout 30s. MiB/s count the response "
          "bytes, headers included. CPU per request: utime+stime of all the server's processes over a "
          "1 KiB run, divided by wrk's requests (the median of the runs). RSS per worker: the largest "
          "worker's peak (VmHWM, reset before the first figure); total: the peak of the sum over all the "
          "server's processes, sampled every 50 ms (nginx master, cache manager and loader, uvicorn "
          "supervisor included; shared pages count in each process). wrk reads every byte in user space, "
          "in one thread on 1 connection: there it may be the limit rather than the server.")
    print(caveat)
    errors = {n: f.wrk_errors for n, f in rows.items() if f.wrk_errors}
    misses = {n: f.origin_requests for n, f in rows.items() if f.origin_requests}
    if errors:
        print(f"WARNING: wrk reported errors or non-2xx/3xx answers: {errors}")
    if misses:
        print(f"WARNING: the origin was asked while measuring (not all hits): {misses}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped, temporary files removed", file=sys.stderr)
        sys.exit(130)
