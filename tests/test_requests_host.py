"""RFC 9112 section 3.2: the Host header field, checked on the wire (httpx always sends one)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.test_server import exchange


def _status_and_body(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body


@pytest.mark.parametrize(
    "request_bytes, reason",
    [
        (b"GET /small.txt HTTP/1.1\r\n\r\n",
         b"Bad Request: an HTTP/1.1 request needs a Host header field (RFC 9112 section 3.2)\n"),
        (b"GET /small.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
         b"Bad Request: more than one Host header field (RFC 9112 section 3.2)\n"),
        (b"GET /small.txt HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
         b"Bad Request: more than one Host header field (RFC 9112 section 3.2)\n"),
        (b"GET /small.txt HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
         b"Bad Request: more than one Host header field (RFC 9112 section 3.2)\n"),
        (b"GET /small.txt HTTP/1.1\r\nHost: user@evil.example\r\n\r\n",
         b"Bad Request: the Host header field is not a valid host[:port] (RFC 9112 section 3.2)\n"),
        (b"PUT /new.mp4 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
         b"Bad Request: an HTTP/1.1 request needs a Host header field (RFC 9112 section 3.2)\n"),
    ],
    ids=["missing", "two", "two-any-case", "two-in-http-1.0", "invalid", "missing-on-upload"],
)
def test_host_missing_repeated_or_invalid_is_400(
    server: RunningServer, origin_dir: Path, request_bytes: bytes, reason: bytes
) -> None:
    raw = exchange(server, request_bytes)
    status, body = _status_and_body(raw)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert body == reason
    head = raw.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert b"connection: close" in head and b"content-type: text/plain; charset=utf-8" in head
    assert f"content-length: {len(reason)}".encode() in head
    assert not (origin_dir / "new.mp4").exists()  # refused before the app saw it


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /small.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n",
        b"GET /small.txt HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
        b"GET /small.txt HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",  # empty: allowed (section 3.2)
        b"GET /small.txt HTTP/1.0\r\n\r\n",  # HTTP/1.0 need not send one
    ],
    ids=["name", "ipv4-port", "ipv6-port", "empty", "http-1.0-without"],
)
def test_one_valid_host_is_served(server: RunningServer, request_bytes: bytes) -> None:
    status, body = _status_and_body(exchange(server, request_bytes))
    assert status.split(b" ", 2)[:2] in ([b"HTTP/1.1", b"200"], [b"HTTP/1.0", b"200"]) and body == b"hello, edge\n"
