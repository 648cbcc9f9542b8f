"""Cross-site writes: a browser page of another site or origin (even one on the edge's own host)
cannot upload, purge or proxy a write through the edge without a bearer token."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from proxy.writes.auth import cross_site_reason, names_this_machine, origin_of, write_denial
from tests.conftest import RunningServer
from tests.upstream import Obj

CROSS = "Forbidden: a cross-site browser request may not write without a bearer token (Sec-Fetch-Site: cross-site)\n"
SAME_SITE = "Forbidden: a same-site browser request may not write without a bearer token (Sec-Fetch-Site: same-site)\n"


def other_origin(value: str) -> str:
    return f"Forbidden: a request from another origin ({value}) may not write without a bearer token\n"


def refusals(server: RunningServer) -> list[tuple[dict[str, str], str]]:
    other_port = server.port + 1 if server.port < 65535 else server.port - 1
    return [
        ({"Sec-Fetch-Site": "cross-site"}, CROSS),
        ({"Sec-Fetch-Site": "same-site"}, SAME_SITE),  # e.g. a page on another port of this host
        ({"Sec-Fetch-Site": "same-site", "Origin": f"http://127.0.0.1:{other_port}"}, SAME_SITE),
        ({"Origin": f"http://127.0.0.1:{other_port}"}, other_origin(f"http://127.0.0.1:{other_port}")),
        ({"Origin": f"http://localhost:{server.port}"}, other_origin(f"http://localhost:{server.port}")),
        ({"Origin": f"https://127.0.0.1:{server.port}"}, other_origin(f"https://127.0.0.1:{server.port}")),
        ({"Origin": "null"}, other_origin("null")),  # a sandboxed page, e.g. an uploaded x.html
        ({"Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"}, other_origin("https://evil.example")),
    ]


def test_cross_site_uploads_are_refused_from_loopback(server: RunningServer, origin_dir: Path) -> None:
    for headers, reason in refusals(server):
        put = httpx.put(server.url + "/x.mp4", content=b"x", headers=headers)
        assert (put.status_code, put.text) == (403, reason), headers
        form = httpx.post(server.url + "/video", files={"file": ("x.html", b"<script>1</script>", "text/html")},
                          headers=headers)
        assert (form.status_code, form.text) == (403, reason), headers
    assert not (origin_dir / "x.mp4").exists() and not (origin_dir / "video" / "x.html").exists()


def test_cross_site_purge_is_refused(server: RunningServer) -> None:
    httpx.get(server.url + "/small.txt")
    for headers, reason in refusals(server):
        r = httpx.post(server.url + "/_edge/purge", params={"prefix": "/"}, headers=headers)
        assert (r.status_code, r.text) == (403, reason), headers
    assert httpx.get(server.url + "/small.txt").headers["x-cache"] == "HIT"  # nothing was purged


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts: not a browser
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed by the user
        {"Origin": "{url}", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "HTTP://127.0.0.1:{port}"},
        {"Origin": "{url}"},
    ],
)
def test_same_origin_writes_from_loopback_stay_allowed(server: RunningServer, headers: dict[str, str]) -> None:
    headers = {k: v.format(url=server.url, port=server.port) for k, v in headers.items()}
    assert httpx.put(server.url + "/same.mp4", content=b"x", headers=headers).status_code in (200, 201)
    form = httpx.post(server.url + "/video", files={"file": ("same.mp4", b"x", "video/mp4")}, headers=headers)
    assert form.status_code in (200, 201)
    assert httpx.post(server.url + "/_edge/purge", params={"prefix": "/"}, headers=headers).status_code == 200


def test_a_valid_token_allows_cross_site_writes(settings, make_server) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, write_tokens="t0ken")
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": "https://app.example"}
    ok = httpx.put(edge.url + "/t.mp4", content=b"x", headers={**cross, "Authorization": "Bearer t0ken"})
    assert ok.status_code == 201
    missing = httpx.put(edge.url + "/t.mp4", content=b"x", headers=cross)
    assert (missing.status_code, missing.text) == (403, CROSS)
    wrong = httpx.put(edge.url + "/t.mp4", content=b"x", headers={**cross, "Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.text) == (403, CROSS)
    no_token = httpx.put(edge.url + "/t.mp4", content=b"x")  # not a browser: as before
    assert no_token.status_code == 401


def test_own_origin_from_public_base_url_or_trusted_proxy(settings, make_server) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, public_base_url="https://cdn.example.com/")
    assert httpx.put(edge.url + "/p.mp4", content=b"x", headers={"Origin": "https://cdn.example.com"}).status_code \
        == 201
    assert httpx.put(edge.url + "/p.mp4", content=b"x",
                     headers={"Origin": "https://cdn.example.com:443"}).status_code == 200
    r = httpx.put(edge.url + "/p.mp4", content=b"x", headers={"Origin": "http://cdn.example.com"})
    assert (r.status_code, r.text) == (403, other_origin("http://cdn.example.com"))
    behind = make_server(settings, trusted_proxies="127.0.0.0/8")
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "videos.example", "X-Forwarded-For": "127.0.0.9"}
    assert httpx.put(behind.url + "/q.mp4", content=b"x",
                     headers={**proxied, "Origin": "https://videos.example"}).status_code == 201
    r = httpx.put(behind.url + "/q.mp4", content=b"x", headers={**proxied, "Origin": "https://evil.example"})
    assert (r.status_code, r.text) == (403, other_origin("https://evil.example"))


def test_cross_site_writes_to_an_http_origin_do_not_reach_it(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/v.mp4"] = Obj(b"video")
    edge = make_server(http_settings)
    r = httpx.delete(edge.url + "/v.mp4", headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert (r.status_code, r.text) == (403, CROSS)
    r = httpx.post(edge.url + "/video", files={"file": ("v.mp4", b"x", "video/mp4")},
                   headers={"Sec-Fetch-Site": "same-site"})
    assert (r.status_code, r.text) == (403, SAME_SITE)
    assert [h.method for h in origin.hits] == []
    assert httpx.delete(edge.url + "/v.mp4", headers={"Origin": edge.url}).status_code == 204


def test_rules_are_pure() -> None:
    own = {"http://127.0.0.1:8080"}
    assert origin_of("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert origin_of("HTTPS://Example.COM") == "https://example.com:443"
    assert origin_of("http://[::1]") == "http://[::1]:80"
    assert origin_of("null") is None and origin_of("http://a:99999") is None and origin_of("ftp://a") is None
    assert cross_site_reason(None, [], own) is None
    assert cross_site_reason("same-origin", ["http://127.0.0.1:8080"], own) is None
    assert cross_site_reason("none", [], own) is None
    assert cross_site_reason("cross-site", [], own) is not None
    assert cross_site_reason(None, ["http://127.0.0.1:8080", "http://evil"], own) is not None
    reason = "a request from another origin (x) may not write without a bearer token"
    assert write_denial((), "127.0.0.1", None, cross_site=reason) == (403, reason)
    assert write_denial(("t",), "203.0.113.1", "Bearer t", cross_site=reason) is None
    assert write_denial(("t",), "127.0.0.1", None, cross_site=reason) == (403, reason)
    assert write_denial((), "127.0.0.1", None) is None


def rebound(host: str) -> str:
    return (f"Forbidden: a browser's write without a bearer token must address this machine as localhost or a "
            f"loopback address, not {host} (a name pointed at 127.0.0.1: DNS rebinding)\n")


def test_a_page_whose_name_was_rebound_to_loopback_cannot_write(server: RunningServer, origin_dir: Path) -> None:
    """DNS rebinding: evil.example first served the page, then its name pointed to 127.0.0.1. The
    page's requests now reach the edge on loopback, same-origin with the page itself: Host and
    Origin both name evil.example. Without a token, a browser's write must name this machine."""
    host = f"rebound.example:{server.port}"
    for browser in ({"Origin": f"http://{host}"}, {"Sec-Fetch-Site": "same-origin"},
                    {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}):
        put = httpx.put(server.url + "/rebound.mp4", content=b"x", headers={"Host": host, **browser})
        assert (put.status_code, put.text) == (403, rebound(host)), browser
        purge = httpx.post(server.url + "/_edge/purge?path=/video/clip.mp4", headers={"Host": host, **browser})
        assert (purge.status_code, purge.text) == (403, rebound(host)), browser
    assert not (origin_dir / "rebound.mp4").exists()
    same_origin = {"Sec-Fetch-Site": "same-origin"}
    for own in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", f"[::1]:{server.port}", "edge.localhost"):
        put = httpx.put(server.url + "/rebound.mp4", content=own.encode(), headers={"Host": own, **same_origin})
        assert put.status_code in (200, 201), own
    # Not a browser (no Origin, no Sec-Fetch-Site): a local process, trusted on loopback whatever it names.
    assert httpx.put(server.url + "/rebound.mp4", content=b"curl", headers={"Host": host}).status_code == 200
    assert (origin_dir / "rebound.mp4").read_bytes() == b"curl"


def test_what_names_this_machine_is_pure() -> None:
    for host in (None, "", "localhost", "LocalHost:8080", "edge.localhost", "127.0.0.1", "127.9.9.9:80", "[::1]",
                 "[::1]:8080"):
        assert names_this_machine(host, None), host
    for host in ("evil.example", "evil.example:8080", "192.168.1.5", "[::ffff:c0a8:105]", "localhost.evil.example",
                 "[bad", "10.0.0.1:80"):
        assert not names_this_machine(host, None), host
    assert names_this_machine("Edge.Example.COM:443", "edge.example.com")
    assert not names_this_machine("other.example.com", "edge.example.com")
    reason, elsewhere = "x", rebound("evil.example").removeprefix("Forbidden: ").rstrip("\n")
    assert write_denial((), "127.0.0.1", None, browser_elsewhere="evil.example") == (403, elsewhere)
    assert write_denial(("t",), "127.0.0.1", "Bearer t", browser_elsewhere="evil.example") is None  # a token decides
    assert write_denial((), "127.0.0.1", None, cross_site=reason, browser_elsewhere="evil.example") == (403, reason)
