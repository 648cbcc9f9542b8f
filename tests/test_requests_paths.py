"""Paths reach an HTTP origin exactly as received (and are cached under that form): an encoded
slash stays encoded, %FF and %FE stay apart, a trailing slash stays; the safety checks hold."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import pytest

from proxy.request.paths import origin_path
from tests.conftest import RunningServer
from tests.test_server import exchange
from tests.upstream import Obj, Upstream


class RawPathOrigin:
    """The test upstream, keyed by the raw path it receives: uvicorn's decoded `path` would
    make /dir%2Fa.mp4 and /dir/a.mp4 (or %FF and %FE) look the same."""

    def __init__(self) -> None:
        self.upstream = Upstream()

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            scope = {**scope, "path": scope["raw_path"].decode("ascii")}
        await self.upstream(scope, receive, send)


@pytest.fixture
def raw_origin(settings) -> Iterator[tuple[Upstream, RunningServer]]:  # type: ignore[no-untyped-def]
    app = RawPathOrigin()
    with RunningServer(dataclasses.replace(settings, server_name=""), app=app) as running:
        yield app.upstream, running


@pytest.fixture
def edge(settings, raw_origin, make_server) -> RunningServer:  # type: ignore[no-untyped-def]
    _, running = raw_origin
    return make_server(settings, origin=running.url, block_size=256 * 1024, cache_size_limit=64 * 1024 * 1024,
                       max_object_size=32 * 1024 * 1024, origin_response_timeout=3.0)


def asked(origin: Upstream) -> list[str]:
    return [h.path for h in origin.hits]


def get(edge: RunningServer, path: str) -> httpx.Response:
    url = httpx.URL(edge.url).copy_with(raw_path=path.encode("ascii"))
    return httpx.get(url)


def test_an_encoded_slash_stays_encoded(edge: RunningServer, raw_origin) -> None:  # type: ignore[no-untyped-def]
    origin, _ = raw_origin
    origin.objects["/dir%2Fa.mp4"] = Obj(b"one name", {"cache-control": "max-age=60"})
    origin.objects["/dir/a.mp4"] = Obj(b"a file in a folder", {"cache-control": "max-age=60"})
    r = get(edge, "/dir%2Fa.mp4")
    assert (r.status_code, r.content) == (200, b"one name")
    assert asked(origin) == ["/dir%2Fa.mp4"]
    r = get(edge, "/dir/a.mp4")  # another resource, another key
    assert (r.status_code, r.content, r.headers["x-cache"]) == (200, b"a file in a folder", "MISS")
    assert get(edge, "/dir%2Fa.mp4").headers["x-cache"] == "HIT"
    assert asked(origin) == ["/dir%2Fa.mp4", "/dir/a.mp4"]


def test_ff_and_fe_are_different_keys(edge: RunningServer, raw_origin) -> None:  # type: ignore[no-untyped-def]
    origin, _ = raw_origin
    origin.objects["/x%FF.mp4"] = Obj(b"ff", {"cache-control": "max-age=60"})
    origin.objects["/x%FE.mp4"] = Obj(b"fe", {"cache-control": "max-age=60"})
    assert get(edge, "/x%FF.mp4").content == b"ff"
    second = get(edge, "/x%FE.mp4")
    assert (second.content, second.headers["x-cache"]) == (b"fe", "MISS")
    assert asked(origin) == ["/x%FF.mp4", "/x%FE.mp4"]
    purged = httpx.post(edge.url + "/_edge/purge", params={"path": "/x%FF.mp4"})
    assert purged.json() == {"purged": ["/x%FF.mp4"], "count": 1}
    assert get(edge, "/x%FE.mp4").headers["x-cache"] == "HIT"
    origin.objects["/%C3%A9t%C3%A9%201.mp4"] = Obj(b"v1", {"cache-control": "max-age=60"})
    assert get(edge, "/%C3%A9t%C3%A9%201.mp4").content == b"v1"
    origin.objects["/%C3%A9t%C3%A9%201.mp4"] = Obj(b"v2", {"cache-control": "max-age=60"})
    assert get(edge, "/%C3%A9t%C3%A9%201.mp4").content == b"v1"  # stored
    # the query value is percent-decoded as a URI's ('+' is a '+', not a space), then spelled as the keys are
    purged = httpx.post(edge.url + "/_edge/purge?path=/%C3%A9t%C3%A9%201.mp4")
    assert purged.json() == {"purged": ["/%C3%A9t%C3%A9%201.mp4"], "count": 1}
    plus = httpx.post(edge.url + "/_edge/purge?path=/a+b.mp4")
    assert plus.json() == {"purged": [], "count": 0}  # the key /a+b.mp4, which nothing filled
    assert get(edge, "/%C3%A9t%C3%A9%201.mp4").content == b"v2"


def test_a_trailing_slash_is_kept(edge: RunningServer, raw_origin) -> None:  # type: ignore[no-untyped-def]
    origin, _ = raw_origin
    origin.objects["/media/"] = Obj(b"the folder's page", {"cache-control": "max-age=60"})
    origin.objects["/media"] = Obj(b"", {"location": "/media/"}, status=301)
    r = get(edge, "/media/")
    assert (r.status_code, r.content) == (200, b"the folder's page")
    assert asked(origin) == ["/media/"]
    r = get(edge, "/media")
    assert (r.status_code, r.headers["location"]) == (301, "/media/")
    assert asked(origin) == ["/media/", "/media"]
    assert get(edge, "/media/").headers["x-cache"] == "HIT"


def test_the_path_is_otherwise_as_received(edge: RunningServer, raw_origin) -> None:  # type: ignore[no-untyped-def]
    origin, _ = raw_origin
    for path in ("/a%20b.mp4", "/a%2Fb.mp4", "/~user/v.mp4", "/q.mp4?b=2&a=1&a=%2F", "/video/x%2Fy.mp4",
                 "/v;p=1.mp4"):
        origin.objects[path] = Obj(path.encode())
        r = get(edge, path)
        assert (r.status_code, r.content) == (200, path.encode()), path
        assert asked(origin)[-1] == path
    # RFC 3986 section 6.2.2: spellings of one path are one path (and one key): hex in upper
    # case, unreserved characters decoded; %2F stays %2F.
    for path, expected in (("/b%2fc.mp4", "/b%2Fc.mp4"), ("/%7Eme/v.mp4", "/~me/v.mp4"),
                           ("/a%2e%2e.mp4", "/a...mp4"), ("/v/a[1].mp4", "/v/a%5B1%5D.mp4")):
        origin.objects[expected] = Obj(expected.encode())
        assert get(edge, path).content == expected.encode(), path
        assert asked(origin)[-1] == expected
    again = get(edge, "/a%2fb.mp4")  # one key for both spellings
    assert again.content == b"/a%2Fb.mp4" and again.headers["x-cache"] == "HIT"
    for path, expected in (("//a//b.mp4", "/a/b.mp4"), ("/a//", "/a/")):  # runs of '/' merged, as keys always were
        origin.objects[expected] = Obj(b"merged")
        assert get(edge, path).content == b"merged"
        assert asked(origin)[-1] == expected


def test_compatibility_routes_keep_the_raw_rest(edge: RunningServer, raw_origin) -> None:  # type: ignore[no-untyped-def]
    origin, _ = raw_origin
    origin.objects["/video/a%2Fb.mp4"] = Obj(b"compat")
    origin.objects["/x%FF.mp4"] = Obj(b"assets")
    assert get(edge, "/get_video_by_name/a%2Fb.mp4").content == b"compat"
    assert get(edge, "/assets/x%FF.mp4").content == b"assets"
    assert asked(origin) == ["/video/a%2Fb.mp4", "/x%FF.mp4"]


def test_writes_are_proxied_with_the_raw_path(edge: RunningServer, raw_origin) -> None:  # type: ignore[no-untyped-def]
    origin, _ = raw_origin
    origin.objects["/up%2Fx.mp4"] = Obj(b"old", {"cache-control": "max-age=60"})
    assert get(edge, "/up%2Fx.mp4").content == b"old"
    url = httpx.URL(edge.url).copy_with(raw_path=b"/up%2Fx.mp4")
    assert httpx.put(url, content=b"new").status_code == 201
    assert origin.received["/up%2Fx.mp4"] == b"new"
    again = get(edge, "/up%2Fx.mp4")  # the write invalidated the raw key
    assert (again.content, again.headers["x-cache"]) == (b"new", "MISS")


@pytest.mark.parametrize(
    "path",
    ["/a/%2e%2e/b.mp4", "/a%2F..%2Fb.mp4", "/a%2F%2E%2E%2F..%2Fb", "/a%5Cb.mp4", "/a%00b.mp4", "/%2e/a.mp4"],
)
def test_safety_checks_hold(edge: RunningServer, raw_origin, path: str) -> None:  # type: ignore[no-untyped-def]
    origin, _ = raw_origin
    raw = exchange(edge, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert origin.hits == []


def test_the_directory_origin_still_decodes(server: RunningServer) -> None:
    r = get(server, "/dir%2Fa%20b.webm")  # a directory has no names with '/': the decoded, cleaned path
    assert r.status_code == 200 and len(r.content) == 1000
    assert get(server, "/video/").status_code == 404  # a folder, not a file


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("/dir%2Fa.mp4", "/dir%2Fa.mp4"),
        ("/media/", "/media/"),
        ("//a///b//", "/a/b/"),
        ("", "/"),
        ("a", "/a"),
        ("/a b\x7f\xff", "/a%20b%7F%FF"),
        ("/a#b", "/a%23b"),
    ],
)
def test_origin_path(raw: str, expected: str) -> None:
    assert origin_path(raw) == expected


def test_a_file_named_with_a_question_mark_is_purged_by_its_path(settings, make_server, origin_dir) -> None:  # type: ignore[no-untyped-def]
    (origin_dir / "what?.mp4").write_bytes(b"q")
    edge = make_server(settings)
    assert httpx.get(edge.url + "/what%3F.mp4").content == b"q"
    listed = [item["key"] for item in httpx.get(edge.url + "/_edge/objects").json()["items"]]
    assert listed == ["/what?.mp4"]
    # The page's purge button sends the listed key as ?path=, encoded as a query value.
    purged = httpx.post(edge.url + "/_edge/purge", params={"path": "/what?.mp4"})
    assert purged.json() == {"purged": ["/what?.mp4"], "count": 1}


def test_a_prefix_with_other_characters_is_their_utf8(http_settings, upstream, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/vid/é/a.mp4"] = Obj(b"accent", {"cache-control": "max-age=600"})
    edge = make_server(http_settings)
    assert httpx.get(edge.url + "/vid/%C3%A9/a.mp4").content == b"accent"
    for prefix in ("/vid/é/", "/vid/%C3%A9/"):  # typed, or spelled as requested
        httpx.get(edge.url + "/vid/%C3%A9/a.mp4")
        purged = httpx.post(edge.url + "/_edge/purge", params={"prefix": prefix})
        assert purged.json() == {"purged": ["/vid/%C3%A9/a.mp4"], "count": 1}, prefix
