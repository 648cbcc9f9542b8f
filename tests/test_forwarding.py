"""Cache poisoning: what the origin hears about the client is set by the edge, never by the client."""
from __future__ import annotations

import ipaddress

import httpx
import pytest

from proxy.forwarded import forwarding_headers
from tests.conftest import RunningServer
from tests.upstream import Obj, Upstream

pytestmark = pytest.mark.anyio

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    "received, peer, public_host, expected",
    [
        (
            [("accept", "*/*"), ("x-forwarded-host", "evil.example"), ("x-forwarded-for", "1.2.3.4"),
             ("forwarded", "for=1.2.3.4;host=evil.example"), ("x-original-url", "/admin"),
             ("x-http-method-override", "DELETE")],
            "192.0.2.7", None,
            [("accept", "*/*"), ("X-Forwarded-For", "192.0.2.7"), ("X-Forwarded-Proto", "http"),
             ("Forwarded", "for=192.0.2.7;proto=http")],
        ),
        (  # a trusted proxy's chain is kept and the peer appended (each Forwarded element is one hop's)
            [("x-forwarded-for", "198.51.100.1"), ("x-forwarded-proto", "https"),
             ("forwarded", "for=198.51.100.1;proto=https")],
            "10.1.2.3", None,
            [("X-Forwarded-For", "198.51.100.1, 10.1.2.3"), ("X-Forwarded-Proto", "https"),
             ("Forwarded", "for=198.51.100.1;proto=https, for=10.1.2.3;proto=http")],
        ),
        (  # the host the origin is told about is only ever the configured one
            [("x-forwarded-host", "evil.example")], "::1", "cdn.example:8443",
            [("X-Forwarded-For", "::1"), ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "cdn.example:8443"),
             ("Forwarded", 'for="[::1]";proto=http;host="cdn.example:8443"')],
        ),
        ([], None, None, [("X-Forwarded-For", "unknown"), ("X-Forwarded-Proto", "http"),
                          ("Forwarded", "for=unknown;proto=http")]),
    ],
)
def test_forwarding_headers(
    received: list[tuple[str, str]], peer: str | None, public_host: str | None, expected: list[tuple[str, str]]
) -> None:
    assert forwarding_headers(received, peer, "http", public_host, TRUSTED) == expected


class Reflecting(Upstream):
    """An origin that writes the X-Forwarded-Host it was sent into a cacheable page."""

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"x-forwarded-host", b"-").decode()
            self.objects[scope["path"]] = Obj(f"<script src=//{host}/a.js>".encode(), {"cache-control": "max-age=600"})
        await super().__call__(scope, receive, send)


@pytest.fixture
def reflecting_edge(settings, make_server) -> RunningServer:  # type: ignore[no-untyped-def]
    import dataclasses

    origin = Reflecting()
    with RunningServer(dataclasses.replace(settings, server_name=""), app=origin) as running:
        yield make_server(dataclasses.replace(settings, origin=running.url))


async def test_a_poisoned_request_cannot_poison_the_next_client(reflecting_edge: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=reflecting_edge.url) as c:
        evil = await c.get("/page", headers={"X-Forwarded-Host": "evil.example", "X-Host": "evil.example"})
        clean = await c.get("/page")
    assert evil.content == b"<script src=//-/a.js>"  # the origin never heard of evil.example
    assert clean.content == b"<script src=//-/a.js>" and clean.headers["x-cache"] == "HIT"


async def test_the_origin_hears_the_client_from_the_edge(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/x"] = Obj(b"x", {"cache-control": "max-age=600"})
    edge = make_server(http_settings)
    httpx.get(edge.url + "/x", headers={"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6"})
    hit = origin.gets("/x")[-1]
    assert hit.headers["x-forwarded-for"] == "127.0.0.1"
    assert hit.headers["forwarded"] == "for=127.0.0.1;proto=http"
    assert "x-forwarded-host" not in hit.headers
