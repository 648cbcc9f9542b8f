"""Benchmark: memory per idle keep-alive connection, edgecache against nginx proxy_cache.

    python bench/idle.py [--connections 10000] [--workers 1] [--size 1024]

Each server (one worker by default: what one worker holds per connection) is warmed with a
first hundred connections, each asking for the same small object (a hit) and then kept open,
idle; its resident memory (every process of the server, as /proc counts it) is read; then
--connections more do the same, and stay open. The figure is the growth of the resident memory
divided by those connections: what an idle keep-alive connection costs, once it has been
answered. At the end a sample of the connections asks again (all must still be open and
answered: none was dropped or timed out). Both servers get a keep-alive timeout of 10 minutes
and room for the connections (edgecache max_connections, nginx worker_connections, an eighth
more: it closes idle keep-alive connections when a sixteenth is left); the load
generator is this script (it only opens connections, one after another: no rate is measured).
"""
from __future__ import annotations

import argparse
import platform
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (  # noqa: E402
    free_port,
    nginx_proxy,
    nginx_version,
    session_stats,
    start_edgecache,
    stop,
    wait_port,
)

WARM = 100  # connections opened before the first reading
PATH = "/idle.bin"
KEEPALIVE = 600  # seconds, both servers


def exchange(sock: socket.socket, port: int) -> bytes:
    """One GET of the object on an open connection; the body (the response must be a 200 that
    keeps the connection)."""
    sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise SystemExit(f"the server closed a connection: {data[:200]!r}")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200"):
        raise SystemExit(f"not a 200: {lines[0]}")
    fields = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if fields.get("connection", "").lower() == "close":
        raise SystemExit("the server closes the connection")
    length = int(fields["content-length"])
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            raise SystemExit("the server closed a connection mid-body")
        body += more
    return body


def rss(session: int) -> int:
    """Resident bytes of every process of the server's session."""
    return sum(s.rss for s in session_stats(session).values())


def measure(name: str, proc: subprocess.Popen, port: int, count: int, expected: bytes) -> dict[str, float]:
    opened: list[socket.socket] = []
    try:
        def open_more(n: int) -> None:
            for _ in range(n):
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                if exchange(sock, port) != expected:
                    raise SystemExit(f"{name}: wrong bytes")
                opened.append(sock)

        open_more(WARM)
        time.sleep(1)
        before = rss(proc.pid)
        started = time.monotonic()
        open_more(count)
        took = time.monotonic() - started
        time.sleep(2)  # what a connection's answer left behind is settled
        after = rss(proc.pid)
        sample = opened[:: max(1, len(opened) // 100)]
        for sock in sample:  # still open, still answered
            if exchange(sock, port) != expected:
                raise SystemExit(f"{name}: wrong bytes")
        per = (after - before) / count
        print(f"  {name}: {before / 2**20:.1f} MiB with {WARM} connections, {after / 2**20:.1f} MiB with "
              f"{WARM + count}: {per / 1024:.2f} KiB per idle connection ({count} opened in {took:.1f} s; "
              f"{len(sample)} asked again, all answered)", flush=True)
        return {"before": before, "after": after, "per": per}
    finally:
        for sock in opened:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000, help="idle connections measured")
    parser.add_argument("--workers", type=int, default=1, help="for both servers")
    parser.add_argument("--size", type=int, default=1024, help="bytes of the object each connection asks for")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.connections + WARM + 200
    if hard < needed:
        raise SystemExit(f"this process may open {hard} files; {needed} needed (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    command = "python " + shlex.join(sys.argv)
    print(command, flush=True)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="edgecache-idle-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers drop root and must reach their cache
        origin_dir = work / "origin"
        origin_dir.mkdir()
        expected = bytes(range(256)) * (args.size // 256) + bytes(args.size % 256)
        (origin_dir / PATH.lstrip("/")).write_bytes(expected)
        origin_port = free_port()
        origin = subprocess.Popen([sys.executable, str(Path(__file__).parent / "origin.py"), str(origin_dir),
                                   str(origin_port)], start_new_session=True)
        try:
            wait_port(origin_port, origin)
            starters = [
                (f"edgecache, {args.workers} worker(s)",
                 lambda: start_edgecache(f"http://127.0.0.1:{origin_port}", work / "edgecache-cache", args.workers,
                                         max_connections=str(needed), keepalive_timeout=str(KEEPALIVE))),
                (f"{nginx_version()}, {args.workers} worker(s)",
                 lambda: nginx_proxy(work, origin_port, args.workers, http_extra=f"keepalive_timeout {KEEPALIVE}s;",
                                     connections=needed + needed // 8)),  # it drains keep-alives with 1/16 left
            ]
            for name, starter in starters:
                started = starter()
                if started is None:
                    print(f"{name}: not installed, skipped")
                    continue
                proc, port = started
                try:
                    rows[name] = measure(name, proc, port, args.connections, expected)
                finally:
                    stop(proc)
        finally:
            stop(origin)
    print(f"\n## Results\n\n```sh\n{command}\n```\n")
    print(f"{platform.machine()}, Python {platform.python_version()}; each connection asked for one "
          f"{args.size} B object (a hit) and stayed open.\n")
    print("| server | RSS with 100 connections, MiB | with all open, MiB | per idle connection, KiB |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['before'] / 2**20:,.1f} | {row['after'] / 2**20:,.1f} | {row['per'] / 1024:.2f} |")


if __name__ == "__main__":
    main()
