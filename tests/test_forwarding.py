"""Cache poisoning: what the origin hears about the client is set by the edge, never by the client."""
from __future__ import annotations

import ipaddress

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.request.client import Client, base_url, forwarded_elements, forwarding_headers, identify
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


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def _fields(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


@pytest.mark.parametrize(
    "peer, fields, header, expected",
    [
        # no trusted proxy: the peer, whatever the fields say
        ("203.0.113.9", [("x-forwarded-for", "127.0.0.1"), ("host", "edge")], "x-forwarded-for",
         Client("203.0.113.9", "http", "edge")),
        # HAProxy's option forwardfor adds a line of its own after the client's forged one
        ("127.0.0.1", [("x-forwarded-for", "127.0.0.2"), ("x-forwarded-for", "198.51.100.7")], "x-forwarded-for",
         Client("198.51.100.7", "http", None)),
        # the same in one line
        ("127.0.0.1", [("x-forwarded-for", "127.0.0.2, 198.51.100.7")], "x-forwarded-for",
         Client("198.51.100.7", "http", None)),
        # a chain of trusted proxies is passed over, right to left
        ("127.0.0.1", [("x-forwarded-for", "198.51.100.7, 127.0.0.5, 127.0.0.4")], "x-forwarded-for",
         Client("198.51.100.7", "http", None)),
        # every hop trusted: the first of them
        ("127.0.0.1", [("x-forwarded-for", "127.0.0.3, 127.0.0.4")], "x-forwarded-for",
         Client("127.0.0.3", "http", None)),
        # a hop that is not an address: unknown, never the loopback after it
        ("127.0.0.1", [("x-forwarded-for", "evil, 127.0.0.4")], "x-forwarded-for", Client(None, "http", None)),
        # ports on hops
        ("127.0.0.1", [("x-forwarded-for", "198.51.100.7:5555")], "x-forwarded-for",
         Client("198.51.100.7", "http", None)),
        # the scheme and host the nearest proxy names (its line comes last)
        ("127.0.0.1", [("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "http"),
                       ("x-forwarded-proto", "https"), ("x-forwarded-host", "evil.example, cdn.example"),
                       ("host", "edge:8080")], "x-forwarded-for", Client("198.51.100.7", "https", "cdn.example")),
        # the proxies write X-Forwarded-For: a Forwarded the client sent through them is not believed
        ("127.0.0.1", [("forwarded", "for=127.0.0.1"), ("x-forwarded-for", "198.51.100.7")], "x-forwarded-for",
         Client("198.51.100.7", "http", None)),
        # ... and when they write Forwarded, X-Forwarded-For is the client's own
        ("127.0.0.1", [("x-forwarded-for", "127.0.0.2"), ("forwarded", 'for=127.0.0.2;proto=http'),
                       ("forwarded", 'for="[2001:db8::7]:4711";proto=https;host="cdn.example:443"')], "forwarded",
         Client("2001:db8::7", "https", "cdn.example:443")),
        ("127.0.0.1", [("forwarded", "for=198.51.100.7, for=127.0.0.9;proto=https")], "forwarded",
         Client("198.51.100.7", "http", None)),
        ("127.0.0.1", [("forwarded", "for=_hidden, for=127.0.0.9")], "forwarded", Client(None, "http", None)),
        # trusted, but no forwarding field: the peer itself
        ("127.0.0.1", [("host", "edge")], "x-forwarded-for", Client("127.0.0.1", "http", "edge")),
    ],
)
def test_who_the_client_is(peer: str, fields: list[tuple[str, str]], header: str, expected: Client) -> None:
    assert identify(peer, "http", _fields(*fields), LOOPBACK, header) == expected


def test_forwarded_elements() -> None:
    assert forwarded_elements('for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711"') == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}, {"for": "[2001:db8:cafe::17]:4711"}]
    assert forwarded_elements('for="a\\"b";host=x') == [{"for": 'a"b', "host": "x"}]
    assert forwarded_elements("for=1.2.3.4, garbage here, for=5.6.7.8") == [{"for": "1.2.3.4"}]


@given(st.text(max_size=200))
def test_forwarding_fields_never_raise(text: str) -> None:
    value = text.encode("utf-8", "surrogateescape")
    for header in ("x-forwarded-for", "forwarded"):
        client = identify("127.0.0.1", "http", [(b"x-forwarded-for", value), (b"forwarded", value),
                                                (b"x-forwarded-proto", value)], LOOPBACK, header)
        assert client.scheme in ("http", "https")
        assert client.address is None or ipaddress.ip_address(client.address)


@pytest.mark.parametrize("configured, client, expected", [
    ("https://cdn.example/base/", Client(None, "http", "evil"), "https://cdn.example/base"),
    ("", Client(None, "https", "cdn.example:8443"), "https://cdn.example:8443"),
    ("", Client(None, "http", "evil.example/path"), "http://localhost"),
    ("", Client(None, "http", None), "http://localhost"),
])
def test_base_url(configured: str, client: Client, expected: str) -> None:
    assert base_url(configured, client) == expected
