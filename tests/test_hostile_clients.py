"""Clients as an attacker writes them, against a real edge: slow heads, bodies that drip, responses
nobody reads, floods of headers and pipelined requests, too many connections. The edge cuts each
off on time, keeps its memory and descriptors bounded, and serves everyone else meanwhile."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import resource
import selectors
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from proxy.config import Settings
from tests.conftest import RunningServer, pattern
from tests.edge_process import EdgeProcess

BIG = 32 * 1024 * 1024  # more than the socket buffers of both ends hold
MEDIUM = 256 * 1024  # more than a small object (read whole into memory)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "assets"
    root.mkdir()
    (root / "big.bin").write_bytes(pattern(BIG, 5))
    (root / "cold.bin").write_bytes(pattern(BIG, 6))
    (root / "small.txt").write_bytes(b"hello, edge\n")
    for i in range(32):
        (root / f"m{i}.bin").write_bytes(pattern(MEDIUM, i))  # filled in blocks: leases, not one write
    return tmp_path


def edge_process(site: Path, **settings: object) -> EdgeProcess:
    env = {"EDGECACHE_" + name.upper(): str(value) for name, value in settings.items()}
    return EdgeProcess(site, "--origin", str(site / "assets"), "--cache-dir", str(site / "cache"), env=env)


def refusals(url: str, reason: str) -> float:
    text = httpx.get(url + "/_edge/metrics").text
    match = re.search(rf'^edgecache_client_refusals_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send `data`, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer


def test_slowloris_connections_are_closed_on_time_while_others_are_served(site: Path) -> None:
    timeout = 2.0
    with edge_process(site, client_header_timeout=timeout) as edge:
        opened = time.monotonic()
        loris = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", edge.port))
            s.setblocking(False)
            loris.append(s)
        closed: dict[socket.socket, float] = {}
        answers: dict[socket.socket, bytes] = {s: b"" for s in loris}
        head = b"GET /small.txt HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"a" * 1000
        served = 0
        sent = 0
        while len(closed) < len(loris) and time.monotonic() - opened < timeout + 5:
            for s in loris:  # one byte each, each round
                if s not in closed:
                    try:
                        s.send(head[sent:sent + 1])
                    except OSError:
                        closed[s] = time.monotonic()
            sent += 1
            readable = _readable([s for s in loris if s not in closed], 0.25)
            for s in readable:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                answers[s] += data
                if not data:
                    closed[s] = time.monotonic()
            response = httpx.get(edge.url + "/small.txt", timeout=10)  # an ordinary client meanwhile
            served += response.status_code == 200 and response.content == b"hello, edge\n"
        for s in loris:
            s.close()
        assert len(closed) == len(loris), f"{len(loris) - len(closed)} slow heads still open"
        assert all(answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for answer in answers.values())
        assert served >= timeout / 0.25 - 1  # every round's ordinary request was answered
        assert refusals(edge.url, "head_timeout") == len(loris)


@pytest.mark.parametrize("warm, pipelined", [(True, False), (False, False), (True, True)],
                         ids=["hits", "misses", "hits, another request pipelined"])
def test_clients_that_never_read_give_back_every_descriptor(site: Path, warm: bool, pipelined: bool) -> None:
    """A response the client takes no bytes of for send_timeout is cut, whatever waits behind it on
    the connection (a pipelined request queued behind the one being sent)."""
    with edge_process(site, send_timeout=2) as edge:
        if warm:
            assert httpx.get(edge.url + "/big.bin", timeout=30).content == pattern(BIG, 5)
        with concurrent.futures.ThreadPoolExecutor(32) as pool:  # every store thread opens its connections
            assert list(pool.map(lambda i: httpx.get(f"{edge.url}/m{i}.bin").content, range(32))) == [
                pattern(MEDIUM, i) for i in range(32)]
        time.sleep(0.5)
        baseline = edge.descriptors()
        clients = []
        for _ in range(100):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that takes almost nothing
            s.connect(("127.0.0.1", edge.port))
            s.sendall(f"GET /{'big' if warm else 'cold'}.bin HTTP/1.1\r\nHost: a\r\n\r\n".encode() *
                      (2 if pipelined else 1))
            clients.append(s)
        deadline = time.monotonic() + 10
        while edge.descriptors() < baseline + 2 * len(clients) and time.monotonic() < deadline:
            time.sleep(0.05)  # every response under way, stuck
        assert edge.descriptors() >= baseline + 2 * len(clients)
        deadline = time.monotonic() + 2 + 5  # send_timeout, and then some
        seen = []
        while edge.descriptors() > baseline and time.monotonic() < deadline:
            seen.append(edge.descriptors() - baseline)
            time.sleep(0.2)
        held = edge.descriptors() - baseline
        for s in clients:
            s.close()
        # Three a client while they wait (socket, polled duplicate, block file); after, the blocks of the file
        # kept at hand (server/handles.py, bounded): a few.
        assert held <= 8, f"{held} descriptors still held ({seen})"
        assert refusals(edge.url, "send_timeout") == 100
        assert httpx.get(edge.url + "/small.txt").content == b"hello, edge\n"


def _flood(port: int, first: bytes, more: bytes, total: int) -> bytes:
    """Send `first`, then `more` until `total` bytes went or the server stops taking them; what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(3)
        sent = 0
        try:
            s.sendall(first)
            while sent < total:
                s.sendall(more)
                sent += len(more)
        except OSError:
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer


def test_floods_of_headers_and_of_pipelined_requests_keep_memory_flat(site: Path) -> None:
    with edge_process(site) as edge:
        for _ in range(50):
            httpx.get(edge.url + "/small.txt")
        before = edge.rss()
        answer = _flood(edge.port, b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: ", b"a" * 1024**2, 500 * 1024**2)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        answer = _flood(edge.port, b"GET /" + b"x" * 100, b"x" * 1024**2, 500 * 1024**2)
        assert answer.startswith(b"HTTP/1.1 414 URI Too Long\r\n")
        grown = edge.rss() - before
        assert grown < 50 * 1024**2, f"RSS grew by {grown / 1024**2:.0f} MiB"
        request = b"GET /small.txt HTTP/1.1\r\nHost: a\r\n\r\n"
        unread = threading.Thread(target=_flood, args=(edge.port, request, request * 1000, 10_000 * len(request)))
        unread.start()
        time.sleep(2)
        grown = edge.rss() - before
        unread.join(30)
        assert grown < 50 * 1024**2, f"RSS grew by {grown / 1024**2:.0f} MiB"
        assert refusals(edge.url, "too_deep_pipeline") == 1


def test_a_body_that_drips_is_answered_408(settings: Settings, make_server) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, client_body_timeout=1.0, client_body_min_rate=256)
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as s:
        s.sendall(b"PUT /drip.txt HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        answer = b""
        while not answer and time.monotonic() - started < 10:
            s.sendall(b"x")  # a byte every 0.1 s: never idle for the timeout, far below the rate
            if _readable([s], 0.1):
                answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nconnection: close\r\n" in answer
    assert answer.endswith(b"Request Timeout: the request body stopped coming (client_body_timeout 1 s, "
                           b"client_body_min_rate 256 B/s)\n")


def test_heads_too_large_or_with_too_many_fields(settings: Settings, make_server) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, max_header_bytes=2048, max_header_count=20)
    long_line = exchange(edge.port, b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert long_line.startswith(b"HTTP/1.1 414 URI Too Long\r\n")
    assert long_line.endswith(b"\r\n\r\nthe request line is over 2048 bytes (max_header_bytes)\n")
    big_head = exchange(edge.port, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 3000 + b"\r\n\r\n")
    assert big_head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert big_head.endswith(b"\r\n\r\nthe request head is over 2048 bytes (max_header_bytes)\n")
    fields = b"".join(b"X-%d: y\r\n" % i for i in range(20))
    many = exchange(edge.port, b"GET /small.txt HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    assert many.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert many.endswith(b"\r\n\r\nthe request has over 20 header fields (max_header_count)\n")
    for answer in (long_line, big_head, many):
        head = answer.split(b"\r\n\r\n")[0].split(b"\r\n")
        assert [line.split(b":")[0] for line in head[1:]] == [
            b"content-type", b"content-length", b"connection", b"date", b"server", b"x-content-type-options"]
    just = b"GET /small.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + fields[:fields.index(b"X-18")] + b"\r\n"
    assert exchange(edge.port, just).endswith(b"\r\n\r\nhello, edge\n")  # 20 fields in all: allowed


def test_a_connection_that_sends_nothing_is_closed_without_a_word(settings: Settings, make_server) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, client_header_timeout=0.5)
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as s:
        assert s.recv(100) == b""


def test_connections_beyond_the_limits_are_refused(settings: Settings) -> None:
    limited = dataclasses.replace(settings, max_connections=16, max_connections_per_client=3)
    with RunningServer(limited) as edge:
        held = [socket.create_connection(("127.0.0.1", edge.port)) for _ in range(3)]
        fourth = exchange(edge.port, b"GET /small.txt HTTP/1.1\r\nHost: a\r\n\r\n")
        assert fourth.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nretry-after: 1\r\n" in fourth
        assert fourth.endswith(b"127.0.0.1 has 3 connections open (max_connections_per_client)\n")
        for s in held:
            s.close()
    trusted = dataclasses.replace(limited, trusted_proxies="127.0.0.1")  # a proxy carries many clients
    with RunningServer(trusted) as edge:
        held = [socket.create_connection(("127.0.0.1", edge.port)) for _ in range(16)]
        answer = exchange(edge.port, b"GET /small.txt HTTP/1.1\r\nHost: a\r\n\r\n")
        assert answer.endswith(b"the edge has 16 connections open (max_connections)\n")
        held.pop().close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the server sees the close when it next reads
            answer = exchange(edge.port, b"GET /small.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            if answer.endswith(b"hello, edge\n"):
                break
        assert answer.endswith(b"\r\n\r\nhello, edge\n")
        for s in held:
            s.close()


def test_an_idle_keep_alive_connection_costs_a_few_kib(site: Path) -> None:
    """Thousands of clients between two requests (browsers keep their connections open): each holds
    nothing of what it asked (its request's scope, fields and cycle), only the connection itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = len(os.listdir("/proc/self/fd"))  # what this test process holds already (earlier tests')
    count = min(4000, hard - held - 300)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + held + 300), hard))
    request = b"GET /small.txt HTTP/1.1\r\nHost: a\r\n\r\n"
    try:
        with edge_process(site, keepalive_timeout=600, client_header_timeout=600, max_connections=count + 500) as edge:
            warm = [socket.create_connection(("127.0.0.1", edge.port)) for _ in range(100)]
            for s in warm:  # the edge's own memory for answering, first
                s.sendall(request)
                assert s.recv(4096).endswith(b"hello, edge\n")
            time.sleep(0.5)
            before = edge.rss()
            idle = []
            for _ in range(count):
                s = socket.create_connection(("127.0.0.1", edge.port))
                s.sendall(request)
                idle.append(s)
            for s in idle:
                assert s.recv(4096).endswith(b"hello, edge\n")
            time.sleep(0.5)
            each = (edge.rss() - before) / count
            for s in warm + idle:
                s.close()
        assert each < 10 * 1024, f"{each:.0f} bytes a connection"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Those of `socks` with bytes (or an end) to read within `timeout` seconds (poll, not select:
    descriptor numbers past 1024 are fine)."""
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        return [key.fileobj for key, _ in sel.select(timeout)]  # type: ignore[misc]
