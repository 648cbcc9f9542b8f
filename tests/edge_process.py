"""An edge started through the real command line (`python -m proxy serve`), in a process group of
its own: for what only a real process shows (its memory, its descriptors, signals, workers)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EdgeProcess:
    """`edgecache serve` (or `command`) with these settings (EDGECACHE_* variables), on a free port."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None, scheme: str = "http",
                 verify: str | bool = True, command: list[str] | None = None, quiet_start: bool = False) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify
        self.log = cwd / f"edge-{self.port}.log"
        environment = {**os.environ, "EDGECACHE_LOG_LEVEL": "info", "EDGECACHE_ACCESS_LOG": "false", **(env or {})}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*(command or [sys.executable, "-m", "proxy", "serve"]), "--port",
                                          str(self.port), *args],
                                         cwd=cwd, env=environment, start_new_session=True, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:  # quiet_start: no request (it would count in the metrics): listening is enough
                if quiet_start:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                else:
                    httpx.get(self.url + "/_edge/health", timeout=1, verify=verify)
                break
            except (httpx.TransportError, OSError):
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, f"edgecache did not start: {self.output()}"
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The worker processes the first one started (not multiprocessing's own helpers)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        return [pid for pid in pids if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    def rss(self, pid: int | None = None) -> int:
        """Resident memory of a process of the server, in bytes."""
        for line in Path(f"/proc/{pid or self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def descriptors(self, pid: int | None = None) -> int:
        return len(os.listdir(f"/proc/{pid or self.proc.pid}/fd"))

    def send_signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the server; its exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                raise
        return self.proc.returncode

    def __enter__(self) -> EdgeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
