"""Helpers shared by the benchmarks: ports, processes, nginx, test files."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
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


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


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
    wait_port(port, proc)
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
    workdir: Path, workers: int, server_block: str, http_extra: str = ""
) -> tuple[subprocess.Popen, int] | None:
    """nginx with one server block ({port} is filled in); None when nginx is not installed."""
    nginx = nginx_binary()
    if not nginx:
        return None
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off; worker_processes {workers}; pid {workdir}/nginx.pid; error_log {workdir}/nginx.err;
events {{ worker_connections 1024; }}
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
    wait_port(port, proc)
    return proc, port
