"""Behaviour only a real uvicorn shows: framing, disconnects, big files, memory, keep-alive."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer


def exchange(server: RunningServer, request: bytes, *, timeout: float = 3.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /small.txt HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /small.txt HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"GET /small.txt HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        b"GET /small.txt HTTP/1.1\r\nHost: a\r\nX-A: b\r\n folded\r\n\r\n",
        b"GET /small.txt HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"GET /small.txt HTTP/1.1\r\nHost: a\r\nRange: bytes=\x00\r\n\r\n",
        b"GET /small.txt HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /small.txt HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
    ],
    ids=["cl-and-te", "two-lengths", "duplicate-length", "obs-fold", "te-not-chunked-last", "nul",
         "huge-header", "many-headers"],
)
def test_smuggling_and_oversized_requests_are_rejected(server: RunningServer, request_bytes: bytes) -> None:
    status_line = exchange(server, request_bytes).split(b"\r\n", 1)[0]
    assert status_line in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 431 Request Header Fields Too Large")


def test_a_head_refused_while_it_still_comes_is_answered_before_the_close(server: RunningServer) -> None:
    """A 431 goes out as soon as the head passes its limit, while the client is still sending: the
    edge reads and drops what follows for a moment before it closes, so the connection ends with
    the answer and a close, not a reset (closing a socket with bytes unread resets it, and a reset
    can cost the client the answer)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 2_000_000 + b"\r\n\r\n")  # refused at 16 KiB
        data = b""
        while chunk := s.recv(65536):  # to the close: ConnectionResetError on a reset
            data += chunk
        assert data.startswith(b"HTTP/1.1 431 ")


def test_exactly_one_date_and_server_header(server: RunningServer) -> None:
    raw = exchange(server, b"GET /small.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head = raw.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    assert head[0] == b"http/1.1 200 ok"
    assert sum(line.startswith(b"date:") for line in head) == 1
    assert sum(line.startswith(b"server:") for line in head) == 1


def test_idle_keepalive_connection_is_closed(make_server, settings) -> None:
    running = make_server(settings, keepalive_timeout=1)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as s:
        s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        # The server closes it (recv returns b""); were it left open, recv would time out and raise.
        while chunk := s.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK")


def _open_fds_to(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            pass
    return count


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_disconnect_mid_stream_stops_reading_and_closes_the_file(
    make_server, settings, origin_dir: Path, cached: bool
) -> None:
    running = make_server(settings, cache_enabled=cached)
    big = origin_dir / "big.bin"
    with open(big, "wb") as f:
        f.truncate(512 * 1024 * 1024)  # sparse: costs no disk
    s = socket.socket()
    # A small receive buffer, so that what the server sent ahead is bounded by its own send buffer
    # (the kernel grows a receive buffer to tcp_rmem's maximum: 32 MiB on some machines).
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.connect(("127.0.0.1", running.port))
    s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
    received = 0
    while received < 1024 * 1024:
        received += len(s.recv(65536))
    if not cached:  # streamed straight from the file; a fill opens the origin's file per block
        assert _open_fds_to(big) >= 1
    ahead = received + s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) + _max_send_buffer()
    s.close()
    deadline = time.monotonic() + 10
    while _open_fds_to(big) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _open_fds_to(big) == 0
    if cached:  # the fill stopped too: the blocks the server reached, the one prefetched, a part file
        reached = ahead // settings.block_size + 1
        stored = _tree_bytes(Path(settings.cache_dir))
        assert stored < (reached + 1) * settings.block_size + 2 * 1024 * 1024
        time.sleep(0.3)  # and no more blocks come (the store's own files may grow a little meanwhile)
        assert _tree_bytes(Path(settings.cache_dir)) < stored + 1024 * 1024


def _max_send_buffer() -> int:
    """The most a TCP socket's send buffer grows to (tcp_wmem's maximum)."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


def test_file_over_4_gib(server: RunningServer, origin_dir: Path) -> None:
    huge = origin_dir / "huge.bin"
    size = 5 * 1024**3 + 17
    marker_at = 4 * 1024**3 + 1000
    with open(huge, "wb") as f:
        f.truncate(size)
        f.seek(marker_at)
        f.write(b"edgecache-marker")
    r = httpx.get(f"{server.url}/huge.bin", headers={"Range": f"bytes={marker_at - 4}-{marker_at + 19}"})
    assert r.status_code == 206
    assert r.content == b"\0" * 4 + b"edgecache-marker" + b"\0" * 4
    assert r.headers["content-range"] == f"bytes {marker_at - 4}-{marker_at + 19}/{size}"
    r = httpx.head(f"{server.url}/huge.bin")
    assert r.headers["content-length"] == str(size)
    r = httpx.get(f"{server.url}/huge.bin", headers={"Range": "bytes=-3"})
    assert r.content == b"\0\0\0" and r.headers["content-range"] == f"bytes {size - 3}-{size - 1}/{size}"


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_memory_does_not_grow_with_file_size(server: RunningServer, origin_dir: Path) -> None:
    size = 1024**3
    with open(origin_dir / "gig.bin", "wb") as f:
        f.truncate(size)
    before = _rss()
    buffer = bytearray(1024 * 1024)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /gig.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        total = 0
        while n := s.recv_into(buffer):
            total += n
    assert total > size  # headers + the whole body went through
    assert _rss() - before < 64 * 1024 * 1024
