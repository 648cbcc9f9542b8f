"""Helpers shared by the benchmarks: ports, processes, nginx, wrk, test files."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def started(proc: subprocess.Popen, port: int) -> None:
    """wait_port(), but a server that does not come up (or a Ctrl-C meanwhile) is stopped."""
    try:
        wait_port(port, proc)
    except BaseException:
        stop(proc)
        raise


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it after 30 s; then kill what is left of
    its session (a worker that outlived its parent). Safe to call twice."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    for pid in session_stats(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def write_random_file(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def start_edgecache(origin: str, cache_dir: Path, workers: int, **env: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    environ = {**os.environ, "EDGECACHE_ACCESS_LOG": "false", "EDGECACHE_LOG_LEVEL": "warning",
               **{f"EDGECACHE_{k.upper()}": v for k, v in env.items()}}
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--origin", origin, "--port", str(port),
         "--workers", str(workers), "--cache-dir", str(cache_dir)],
        cwd=REPO, env=environ, start_new_session=True,
    )
    started(proc, port)
    return proc, port


def start_ceiling(directory: Path, workers: int) -> tuple[subprocess.Popen, int]:
    """bench/ceiling.py (a bare ASGI app serving the same files) under uvicorn, as edgecache runs."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO / "bench"), "ceiling:app", "--port", str(port),
         "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
         "--log-level", "warning"],
        cwd=REPO, env={**os.environ, "EDGECACHE_CEILING_DIR": str(directory)}, start_new_session=True,
    )
    started(proc, port)
    return proc, port


def measure_each(starters, measure):  # type: ignore[no-untyped-def]
    """Start each (name, starter) server in turn, measure it with measure(port), stop it.

    A starter returning None (nginx not installed) is skipped. Returns {name: figures}.
    """
    rows = {}
    for name, starter in starters:
        started = starter()
        if started is None:
            print(f"{name}: not installed, skipped")
            continue
        proc, port = started
        try:
            rows[name] = measure(port)
        finally:
            stop(proc)
    return rows


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def start_nginx(
    workdir: Path, workers: int, server_block: str, http_extra: str = "", connections: int = 1024
) -> tuple[subprocess.Popen, int] | None:
    """nginx with one server block ({port} is filled in), `connections` per worker; None when nginx
    is not installed."""
    nginx = nginx_binary()
    if not nginx:
        return None
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off; worker_processes {workers}; pid {workdir}/nginx.pid; error_log {workdir}/nginx.err;
worker_rlimit_nofile {connections + 64}; events {{ worker_connections {connections}; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  types {{ video/mp4 mp4; }}
  client_body_temp_path {workdir}/nb; proxy_temp_path {workdir}/np; fastcgi_temp_path {workdir}/nf;
  uwsgi_temp_path {workdir}/nu; scgi_temp_path {workdir}/ns;
  {http_extra}
  {server_block.replace("{port}", str(port))}
}}
""")
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)], start_new_session=True)
    started(proc, port)
    return proc, port


def nginx_version() -> str:
    nginx = nginx_binary()
    if not nginx:
        return "nginx"
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
    return out.strip().rpartition(" ")[2].replace("/", " ") or "nginx"


# --- the processes of a server: CPU time and memory, from /proc ---------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    cpu_seconds: float  # utime + stime
    rss: int  # bytes


def session_stats(session: int) -> dict[int, ProcStat]:
    """Every live process of a session (a server started with start_new_session=True has
    its pid as session id, and its workers inherit it): {pid: ProcStat}."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()  # after "pid (comm) "
        if int(fields[3]) != session or fields[0] == b"Z":
            continue
        out[int(entry)] = ProcStat(int(entry), int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
                                   int(fields[21]) * PAGE_SIZE)
    return out


def cpu_seconds(session: int) -> dict[int, float]:
    return {pid: s.cpu_seconds for pid, s in session_stats(session).items()}


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the session's processes used between two cpu_seconds() snapshots."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def process_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def peak_rss_of(pid: int) -> int:
    """The process's high-water mark of resident memory (VmHWM), bytes; 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class MemorySampler:
    """Samples the resident memory of a session's processes every `interval` seconds in a
    thread: the peak of their sum, and each process's own peak (the larger of the sampled
    RSS and the kernel's VmHWM, read at stop())."""

    def __init__(self, session: int, interval: float = 0.05) -> None:
        self.session = session
        self.interval = interval
        self.peak_total = 0
        self.peaks: dict[int, int] = {}
        self.cmdlines: dict[int, str] = {}
        self.hwm_reset = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        stats = session_stats(self.session)
        self.peak_total = max(self.peak_total, sum(s.rss for s in stats.values()))
        for pid, s in stats.items():
            self.peaks[pid] = max(self.peaks.get(pid, 0), s.rss)
            if pid not in self.cmdlines:
                self.cmdlines[pid] = process_cmdline(pid)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self._sample()

    def start(self) -> MemorySampler:
        """Resets each process's VmHWM first (clear_refs, needs the right to write it), so
        that the peaks are those of what follows; self.hwm_reset says whether that worked."""
        self.hwm_reset = True
        for pid in session_stats(self.session):
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.hwm_reset = False
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self._sample()
        for pid in self.peaks:
            self.peaks[pid] = max(self.peaks[pid], peak_rss_of(pid))


# --- wrk ----------------------------------------------------------------------------------

WRK_REPORT = Path(__file__).resolve().parent / "wrk_report.lua"


@dataclass
class WrkResult:
    command: str
    output: str
    requests: int = 0
    bytes: int = 0  # response bytes read, headers included
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # connect, read, write, timeout, status (>= 400)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.seconds / (1 << 20) if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def wrk_binary() -> str:
    wrk = shutil.which("wrk") or ("/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None)
    if not wrk:
        raise SystemExit("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    return wrk


def run_wrk(
    url: str, *, connections: int, seconds: int, threads: int = 2, script: Path | None = None,
    script_args: tuple[str, ...] = (), headers: tuple[str, ...] = (), timeout_s: int = 30,
    latency: bool = True,
) -> WrkResult:
    """Run wrk against url and read its figures from the JSON line that wrk_report.lua's
    done() prints (a script given here must define done() the same way, or load that file).
    The timeout is long so that slow answers count in the latency instead of as errors."""
    threads = min(threads, connections)  # wrk needs at least one connection per thread
    command = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s"]
    if latency:
        command.append("--latency")
    for header in headers:
        command += ["-H", header]
    command += ["-s", str(script or WRK_REPORT), url]
    if script_args:
        command += ["--", *script_args]
    shown = shlex.join(command).replace(str(Path(__file__).resolve().parent) + "/", "bench/")
    print(f"  $ {shown}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    result = WrkResult(shown, output)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed (exit {done.returncode}):\n{output}")
    figures = json.loads(line.removeprefix("WRK_JSON "))
    result.requests, result.bytes = figures["requests"], figures["bytes"]
    result.seconds = figures["duration_us"] / 1e6
    result.errors = {k: figures[k] for k in ("connect", "read", "write", "timeout", "status")}
    result.p50_ms, result.p99_ms, result.max_ms = (figures[k] / 1e3 for k in ("p50_us", "p99_us", "max_us"))
    return result


SLICE = 4 << 20  # bytes: the slice size of nginx and the block size of edgecache in the benchmarks


def nginx_proxy(workdir: Path, origin_port: int, workers: int, http_extra: str = "",
                tls: tuple[Path, Path] | None = None, max_size: str = "20g",
                connections: int = 1024, reuseport: bool = False) -> tuple[subprocess.Popen, int] | None:
    """nginx proxy_cache + slice (4 MiB, with a cache lock) in front of the origin; X-Cache says HIT or MISS.
    `http_extra`: more directives for its http block; `tls`: (certificate, key) to serve HTTPS;
    `max_size`: its cache's limit (proxy_cache_path max_size, nginx's units); `connections` per worker;
    `reuseport`: a listening socket per worker (`listen ... reuseport`), as edgecache has on Linux."""
    cache = workdir / "nginx-cache"
    http_extra = (f"proxy_cache_path {cache} levels=1:2 keys_zone=edge:32m max_size={max_size} inactive=1h "
                  f"use_temp_path=off; {http_extra}")
    each = " reuseport" if reuseport else ""
    listen = f"listen 127.0.0.1:{{port}} ssl{each}; ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]};" if tls \
        else f"listen 127.0.0.1:{{port}}{each};"
    server = f"""server {{
    {listen}
    location / {{
      slice {SLICE};
      proxy_cache edge;
      proxy_cache_key $uri$is_args$args$slice_range;
      proxy_set_header Range $slice_range;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache_valid 200 206 1h;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 60s;
      add_header X-Cache $upstream_cache_status always;
      proxy_pass http://127.0.0.1:{origin_port};
    }}
  }}"""
    return start_nginx(workdir / "nginx", workers, server, http_extra, connections)
