"""X-Content-Type-Options: nosniff on every response, whoever produced it."""
from __future__ import annotations

import httpx
import pytest

from tests.conftest import RunningServer
from tests.test_server import exchange
from tests.upstream import Obj


def _nosniff_lines(raw: bytes) -> list[bytes]:
    head = raw.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    return [line for line in head if line.startswith(b"x-content-type-options:")]


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/small.txt", 200),
        ("GET", "/video/clip.mp4", 200),
        ("GET", "/missing.mp4", 404),
        ("GET", "/a/%2e%2e/b", 400),
        ("GET", "/", 200),
        ("GET", "/_edge/health", 200),
        ("GET", "/_edge/nothing", 404),
        ("DELETE", "/small.txt", 405),
        ("PUT", "/n.mp4", 201),
        ("POST", "/_edge/purge", 400),
    ],
)
def test_nosniff_on_every_response(server: RunningServer, method: str, path: str, status: int) -> None:
    r = httpx.request(method, server.url + path, content=b"x" if method == "PUT" else None)
    assert r.status_code == status
    assert r.headers.get_list("x-content-type-options") == ["nosniff"]


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /small.txt HTTP/1.1\r\n\r\n", b"400"),
        (b"GET /small.txt HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
         b"431"),
    ],
)
def test_nosniff_on_refusals_before_the_app(server: RunningServer, request_bytes: bytes, status: bytes) -> None:
    raw = exchange(server, request_bytes)
    assert raw.split(b" ", 2)[1] == status
    assert _nosniff_lines(raw) == [b"x-content-type-options: nosniff"]


def test_nosniff_through_an_http_origin_once(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/plain.mp4"] = Obj(b"abc", {"cache-control": "max-age=60"})
    origin.objects["/own.mp4"] = Obj(b"abc", {"cache-control": "max-age=60", "x-content-type-options": "nosniff"})
    edge = make_server(http_settings)
    for path in ("/plain.mp4", "/own.mp4", "/plain.mp4", "/own.mp4", "/absent.mp4"):
        raw = exchange(edge, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        assert _nosniff_lines(raw) == [b"x-content-type-options: nosniff"], path
