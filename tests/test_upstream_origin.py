"""The HTTP origin client, against respx-mocked upstreams."""
from __future__ import annotations

import httpx
import pytest
import respx

from proxy.origins.base import OriginError, Target
from proxy.origins.upstream import UpstreamOrigin

pytestmark = pytest.mark.anyio


def make(base: str = "http://origin.test:8081/base", **kw: float) -> UpstreamOrigin:
    return UpstreamOrigin(base, connect_timeout=kw.get("connect", 1), read_timeout=kw.get("read", 1),
                          response_timeout=kw.get("response", 2))


async def body(response) -> bytes:  # type: ignore[no-untyped-def]
    out = b""
    async for chunk in response.body:
        out += chunk
    await response.close()
    return out


@respx.mock
async def test_request_goes_to_the_configured_origin_only() -> None:
    route = respx.get("http://origin.test:8081/base//evil.example/x").mock(
        return_value=httpx.Response(200, content=b"ok")
    )
    origin = make()
    r = await origin.request("GET", Target("evil.example/x", "//evil.example/x"),
                             [("host", "evil.example"), ("accept", "*/*")])
    assert r.status == 200 and await body(r) == b"ok"
    sent = route.calls.last.request
    assert sent.url.host == "origin.test" and sent.url.port == 8081
    assert sent.headers["host"] == "origin.test:8081"
    await origin.aclose()


@respx.mock
async def test_hop_by_hop_dropped_and_via_added_both_ways() -> None:
    route = respx.get("http://origin.test:8081/base/a").mock(
        return_value=httpx.Response(200, headers={"connection": "x-hop", "x-hop": "1", "keep-alive": "5",
                                                  "x-keep": "yes"}, content=b"")
    )
    origin = make()
    r = await origin.request("GET", Target("a", "/a"), [("connection", "x-drop"), ("x-drop", "1"),
                                                        ("te", "trailers"), ("x-keep", "1")])
    sent = route.calls.last.request.headers
    assert "x-drop" not in sent and "te" not in sent and sent["x-keep"] == "1" and sent["via"] == "1.1 edgecache"
    names = {n.lower() for n, _ in r.headers}
    assert "x-hop" not in names and "keep-alive" not in names and "x-keep" in names and "via" in names
    await r.close()
    await origin.aclose()


@respx.mock
async def test_redirects_are_not_followed() -> None:
    respx.get("http://origin.test:8081/base/old").mock(return_value=httpx.Response(302, headers={"location": "/new"}))
    new = respx.get("http://origin.test:8081/base/new").mock(return_value=httpx.Response(200))
    origin = make()
    r = await origin.request("GET", Target("old", "/old"), [])
    assert r.status == 302 and r.header("location") == "/new"
    assert not new.called
    await r.close()
    await origin.aclose()


@respx.mock
async def test_connect_failure_is_unreachable_502() -> None:
    respx.get("http://origin.test:8081/base/a").mock(side_effect=httpx.ConnectError("refused"))
    origin = make()
    with pytest.raises(OriginError) as e:
        await origin.request("GET", Target("a", "/a"), [])
    assert e.value.kind == "unreachable" and e.value.status == 502
    await origin.aclose()


@respx.mock
async def test_timeouts_are_504() -> None:
    respx.get("http://origin.test:8081/base/a").mock(side_effect=httpx.ReadTimeout("slow"))
    origin = make()
    with pytest.raises(OriginError) as e:
        await origin.request("GET", Target("a", "/a"), [])
    assert e.value.kind == "timeout" and e.value.status == 504
    await origin.aclose()


@respx.mock
async def test_body_errors_become_origin_errors() -> None:
    async def broken():  # type: ignore[no-untyped-def]
        yield b"partial"
        raise httpx.ReadError("reset")

    respx.get("http://origin.test:8081/base/a").mock(return_value=httpx.Response(200, content=broken()))
    origin = make()
    r = await origin.request("GET", Target("a", "/a"), [])
    with pytest.raises(OriginError):
        await body(r)
    await origin.aclose()


@respx.mock
async def test_query_forwarded_unchanged_and_bodies_streamed() -> None:
    route = respx.put("http://origin.test:8081/base/up?x=1&y=%20").mock(return_value=httpx.Response(201))
    origin = make()

    async def chunks():  # type: ignore[no-untyped-def]
        yield b"abc"
        yield b"def"

    r = await origin.request("PUT", Target("up", "/up?x=1&y=%20"), [("content-length", "6")], chunks())
    assert r.status == 201
    assert route.calls.last.request.content == b"abcdef"
    assert route.calls.last.request.headers["content-length"] == "6"
    await r.close()
    await origin.aclose()


def test_environment_proxies_are_ignored(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    origin = make()
    assert origin.client._mounts == {} or all(v is None for v in origin.client._mounts.values())


@pytest.mark.parametrize(
    "base, location, key",
    [
        ("http://o.example:8000/media", "/media/v/b.mp4", "/v/b.mp4"),
        ("http://o.example:8000/media", "http://o.example:8000/media/v/b.mp4", "/v/b.mp4"),
        ("http://o.example:8000/media", "/media/v/a%2fb.mp4?x=1", "/v/a%2Fb.mp4?x=1"),
        ("http://o.example:8000/media", "/other/x.mp4", None),  # the origin's, not served by the edge
        ("http://o.example:8000/media", "http://other.example/media/x.mp4", None),
        ("http://o.example:8000/media", "https://o.example:8000/media/x.mp4", None),
        ("http://o.example:8000/media", "//o.example:8000/media/x.mp4", None),
        ("http://o.example:8000", "/x.mp4", "/x.mp4"),
        ("http://o.example:8000", "relative/x.mp4", None),
    ],
)
def test_location_keys(base: str, location: str, key: str | None) -> None:
    origin = UpstreamOrigin(base, connect_timeout=1, read_timeout=1, response_timeout=1)
    assert origin.location_key(location) == key


def test_the_type_of_an_upload_comes_from_its_name(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    edge = make_server(http_settings)
    form = httpx.post(edge.url + "/films", files={"file": ("clip.mp4", b"<script>", "text/html")})
    assert form.status_code == 201
    assert [h.headers["content-type"] for h in origin.hits if h.method == "PUT"] == ["video/mp4"]


@respx.mock
async def test_the_origin_gets_the_clients_fields_and_none_of_the_http_librarys() -> None:
    """A client that sends no Accept-Encoding must not be answered gzip because the library asked."""
    route = respx.post("http://origin.test:8081/base/form").mock(return_value=httpx.Response(200, content=b"ok"))
    origin = make()
    r = await origin.request("POST", Target("form", "/form"), [("host", "edge.test"), ("x-client", "1")])
    assert r.status == 200 and await body(r) == b"ok"
    sent = route.calls.last.request
    fields = sorted(name.decode().lower() for name, _ in sent.headers.raw)
    assert fields == ["content-length", "host", "via", "x-client"]
    await origin.aclose()
