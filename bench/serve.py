"""Benchmark: edgecache serving an origin directory, against nginx serving the same file.

    python bench/serve.py [--size-mib 256] [--seconds 10] [--workers 2]

Prints full-file throughput and random 1 MiB range throughput / latency with 64
connections, for edgecache and (when installed) nginx, and their ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Result, run  # noqa: E402

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


def start_edgecache(origin: Path, workdir: Path, workers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "EDGECACHE_ACCESS_LOG": "false", "EDGECACHE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--origin", str(origin), "--port", str(port),
         "--workers", str(workers), "--cache-dir", str(workdir / "cache")],
        cwd=REPO, env=env, start_new_session=True,
    )
    wait_port(port, proc)
    return proc, port


def start_nginx(origin: Path, workdir: Path, workers: int) -> tuple[subprocess.Popen, int] | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not nginx:
        return None
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off; worker_processes {workers}; pid {workdir}/nginx.pid; error_log {workdir}/nginx.err;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  types {{ video/mp4 mp4; }}
  client_body_temp_path {workdir}/nb; proxy_temp_path {workdir}/np; fastcgi_temp_path {workdir}/nf;
  uwsgi_temp_path {workdir}/nu; scgi_temp_path {workdir}/ns;
  server {{ listen 127.0.0.1:{port}; root {origin}; }}
}}
""")
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)], start_new_session=True)
    wait_port(port, proc)
    return proc, port


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
        with open(origin / "movie.mp4", "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        rows: dict[str, tuple[Result, Result]] = {}
        for name, starter in (("edgecache", start_edgecache), ("nginx", start_nginx)):
            started = starter(origin, work, args.workers)
            if started is None:
                print(f"{name}: not installed, skipped")
                continue
            proc, port = started
            try:
                rows[name] = measure(port, "/movie.mp4", size, args.seconds)
            finally:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
    print(f"\nfile {args.size_mib} MiB, {args.workers} workers each, {args.seconds:.0f} s per figure, {os.cpu_count()} cores")
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
