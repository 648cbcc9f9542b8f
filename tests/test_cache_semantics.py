"""RFC 9111 behaviour of the edge as a shared cache, observed through its origin's hit count."""
from __future__ import annotations

import httpx
import pytest

from proxy.store.disk import Store
from tests.conftest import RunningServer
from tests.upstream import Obj, Upstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def setup(upstream, http_settings, make_server) -> tuple[Upstream, RunningServer]:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    return origin, make_server(http_settings)


async def get_twice(edge: RunningServer, path: str, first: dict | None = None, second: dict | None = None):  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=edge.url) as c:
        return await c.get(path, headers=first or {}), await c.get(path, headers=second or {})


@pytest.mark.parametrize(
    "cache_control, reused",
    [
        ("max-age=60", True),
        ("s-maxage=60", True),
        ("public", True),  # heuristic freshness from Last-Modified
        ("no-store", False),
        ("private, max-age=60", False),
        ("no-cache, max-age=60", False),
        ("max-age=0", False),
    ],
)
async def test_response_directives(setup, cache_control: str, reused: bool) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/x"] = Obj(b"payload", {"cache-control": cache_control})
    async with httpx.AsyncClient(base_url=edge.url) as c:
        a = await c.get("/x")
        before = len(origin.gets("/x"))
        b = await c.get("/x")
    assert a.content == b.content == b"payload"
    assert len(origin.gets("/x")) - before == (0 if reused else 1)  # from cache, or one origin request
    if reused:
        assert b.headers["x-cache"] == "HIT"
    elif "no-cache" in cache_control or "max-age=0" in cache_control:  # stored, revalidated
        assert b.headers["x-cache"] == "HIT" and "fwd-status=304" in b.headers["cache-status"]
    else:  # remembered as uncacheable: straight to the origin
        assert b.headers["x-cache"] == "BYPASS" and 'detail="uncacheable"' in b.headers["cache-status"]


async def test_expires_in_the_past_is_stale(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/x"] = Obj(b"payload", {"expires": "Thu, 01 Jan 1970 00:00:00 GMT"}, last_modified=None, etag=None)
    await get_twice(edge, "/x")
    assert len(origin.gets("/x")) == 2


@pytest.mark.parametrize(
    "request_headers, reused",
    [
        ({"Cache-Control": "no-cache"}, False),
        ({"Pragma": "no-cache"}, False),
        ({"Cache-Control": "max-age=0"}, False),
        ({"Cache-Control": "max-age=30"}, True),
        ({"Cache-Control": "min-fresh=1000"}, False),
        ({"Cache-Control": "no-store"}, True),  # no-store on a request forbids storing, not reuse
    ],
)
async def test_request_directives(setup, request_headers: dict, reused: bool) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/x"] = Obj(b"payload", {"cache-control": "max-age=600"})
    a, b = await get_twice(edge, "/x", second=request_headers)
    assert b.content == b"payload"
    assert len(origin.gets("/x")) == (1 if reused else 2)
    if not reused:
        assert b.headers["cache-status"].startswith("edgecache; fwd=request")


async def test_request_no_store_is_not_stored(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/x"] = Obj(b"payload", {"cache-control": "max-age=600"})
    a, b = await get_twice(edge, "/x", first={"Cache-Control": "no-store"})
    assert a.headers["x-cache"] == "MISS" and b.headers["x-cache"] == "MISS"
    assert len(origin.gets("/x")) == 2  # forwarded as asked, not stored
    assert "range" not in origin.gets("/x")[0].headers


async def test_only_if_cached(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/x"] = Obj(b"payload", {"cache-control": "max-age=600"})
    async with httpx.AsyncClient(base_url=edge.url) as c:
        miss = await c.get("/x", headers={"Cache-Control": "only-if-cached"})
        assert miss.status_code == 504 and origin.gets("/x") == []
        await c.get("/x")
        hit = await c.get("/x", headers={"Cache-Control": "only-if-cached"})
    assert hit.status_code == 200 and hit.content == b"payload"


async def test_authorization_needs_explicit_permission(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/secret"] = Obj(b"mine", {"cache-control": "max-age=600"})
    origin.objects["/shared"] = Obj(b"ours", {"cache-control": "public, max-age=600"})
    auth = {"Authorization": "Bearer abc"}
    await get_twice(edge, "/secret", first=auth, second=auth)
    assert len(origin.gets("/secret")) == 2  # forwarded as asked each time, never stored
    assert origin.gets("/secret")[0].headers["authorization"] == "Bearer abc"
    # a stored public response may answer an authorized request (RFC 9111 section 3.5)
    await get_twice(edge, "/shared", second=auth)
    assert len(origin.gets("/shared")) == 1


async def test_vary_selects_stored_responses(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/v"] = Obj(b"varied", {"cache-control": "max-age=600", "vary": "Accept-Language"})
    async with httpx.AsyncClient(base_url=edge.url) as c:
        en1 = await c.get("/v", headers={"Accept-Language": "en"})
        fr1 = await c.get("/v", headers={"Accept-Language": "fr"})
        en2 = await c.get("/v", headers={"Accept-Language": "en"})
        fr2 = await c.get("/v", headers={"Accept-Language": "fr"})
    assert fr1.headers["cache-status"].startswith("edgecache; fwd=vary-miss")
    assert en2.headers["x-cache"] == fr2.headers["x-cache"] == "HIT"
    assert len(origin.gets("/v")) == 2
    assert en1.content == fr1.content == b"varied"


async def test_vary_star_is_never_reused(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/v"] = Obj(b"varied", {"cache-control": "max-age=600", "vary": "*"})
    a, b = await get_twice(edge, "/v")
    assert a.content == b.content == b"varied" and b.headers["x-cache"] == "BYPASS"
    assert len(origin.gets("/v")) == 3  # block probe + the request itself, then the request only


async def test_without_etag_the_edge_invents_none_and_answers_if_modified_since(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/n"] = Obj(b"12345", {"cache-control": "max-age=600"}, etag="")
    origin.objects["/n"].etag = None
    a, b = await get_twice(edge, "/n")
    assert "etag" not in a.headers and "etag" not in b.headers  # validators are the origin's to make
    assert b.headers["x-cache"] == "HIT" and b.content == b"12345"
    async with httpx.AsyncClient(base_url=edge.url) as c:
        r = await c.get("/n", headers={"If-Modified-Since": a.headers["last-modified"]})
        assert r.status_code == 304 and r.headers["x-cache"] == "HIT"
        r = await c.get("/n", headers={"If-None-Match": '"anything"'})
        assert r.status_code == 200 and r.content == b"12345"


async def test_edge_answers_conditionals_and_ranges_from_cache(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    body = bytes(range(256)) * 100
    origin.objects["/m"] = Obj(body, {"cache-control": "max-age=600"})
    async with httpx.AsyncClient(base_url=edge.url) as c:
        first = await c.get("/m")
        etag = first.headers["etag"]
        assert (await c.get("/m", headers={"If-None-Match": etag})).status_code == 304
        assert (await c.get("/m", headers={"If-Match": '"other"'})).status_code == 412
        r = await c.get("/m", headers={"Range": "bytes=10-19", "If-Range": etag})
        assert r.status_code == 206 and r.content == body[10:20]
        assert (await c.get("/m", headers={"Range": "bytes=99999-"})).status_code == 416
        head = await c.head("/m")
        assert head.headers["content-length"] == str(len(body)) and head.content == b""
    assert len(origin.gets("/m")) == 1


async def test_zero_length_object(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/empty"] = Obj(b"", {"cache-control": "max-age=600"})
    async with httpx.AsyncClient(base_url=edge.url) as c:
        a = await c.get("/empty")
        b = await c.get("/empty")
        r = await c.get("/empty", headers={"Range": "bytes=0-10"})
    assert a.status_code == b.status_code == 200 and a.content == b""
    assert b.headers["x-cache"] == "HIT" and r.status_code == 416


async def test_unsafe_methods_pass_through_and_invalidate(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/doc"] = Obj(b"old", {"cache-control": "max-age=600"})
    async with httpx.AsyncClient(base_url=edge.url) as c:
        assert (await c.get("/doc")).content == b"old"
        put = await c.put("/doc", content=b"new body")  # proxied to the origin as it is, streamed
        assert put.status_code == 201 and put.content == b""
        assert origin.received["/doc"] == b"new body"
        after = await c.get("/doc")
        assert after.content == b"new body" and after.headers["x-cache"] == "MISS"
        delete = await c.delete("/doc")  # other methods pass through and invalidate
        assert delete.status_code == 204 and delete.headers["cache-status"] == "edgecache; fwd=method; fwd-status=204"
        assert (await c.get("/doc")).status_code == 404
        patch = await c.patch("/doc", content=b"x")
        assert patch.headers["x-cache"] == "BYPASS" and origin.hits[-1].method == "PATCH"


async def test_unsafe_methods_need_authorization(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    edge = make_server(http_settings, write_tokens="s3cret, other")
    async with httpx.AsyncClient(base_url=edge.url) as c:
        assert (await c.put("/doc", content=b"x")).status_code == 401
        assert (await c.put("/doc", content=b"x", headers={"Authorization": "Bearer wrong"})).status_code == 403
        ok = await c.put("/doc", content=b"x", headers={"Authorization": "Bearer other"})
        assert ok.status_code == 201
    assert [h.method for h in origin.hits] == ["PUT"]


async def test_store_failure_degrades_to_the_origin(setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    body = bytes(range(256)) * 4000  # several blocks
    origin.objects["/d"] = Obj(body, {"cache-control": "max-age=600"})

    def disk_full(self, key, path, size):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Store, "publish_block", disk_full)
    async with httpx.AsyncClient(base_url=edge.url) as c:
        a = await c.get("/d")
        b = await c.get("/d", headers={"Range": "bytes=300000-300099"})
    assert a.status_code == 200 and a.content == body
    assert b.status_code == 206 and b.content == body[300000:300100]


async def test_a_set_cookie_is_never_replayed_to_another_client(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/login"] = Obj(b"hello", {"cache-control": "max-age=600", "set-cookie": "session=secret-0"})
    a, b = await get_twice(edge, "/login")
    assert a.headers["set-cookie"] == b.headers["set-cookie"] == "session=secret-0"  # each from the origin
    assert b.headers["x-cache"] == "BYPASS" and len(origin.gets("/login")) == 3  # block probe, relay; relay


@pytest.mark.parametrize("directive", ['private="set-cookie"', 'no-cache="Set-Cookie"'])
async def test_a_response_whose_cookie_may_be_dropped_is_stored_without_it(setup, directive: str) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/page"] = Obj(b"page", {"cache-control": f"max-age=600, {directive}", "set-cookie": "s=1"})
    a, b = await get_twice(edge, "/page")
    assert a.content == b.content == b"page"
    assert a.headers["set-cookie"] == "s=1" and a.headers["x-cache"] == "MISS"  # the origin's answer to a
    assert "set-cookie" not in b.headers and b.headers["x-cache"] == "HIT"


async def test_a_get_racing_an_upload_never_stores_the_old_version(settings, make_server) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import dataclasses
    import threading

    from tests.conftest import RunningServer

    class Racing(Upstream):
        """Reads the object when first asked, then holds that answer until the test lets it go."""

        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()  # set from the test's thread
            self.held = threading.Event()

        async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
            if scope["type"] == "http" and scope["method"] == "GET" and not self.held.is_set():
                snapshot = self.objects["/doc"]
                self.held.set()
                while not self.release.is_set():
                    await asyncio.sleep(0.01)
                current, self.objects["/doc"] = self.objects["/doc"], snapshot
                try:
                    await super().__call__(scope, receive, send)
                finally:
                    self.objects["/doc"] = current
                return
            await super().__call__(scope, receive, send)

    origin = Racing()
    origin.objects["/doc"] = Obj(b"version 1", {"cache-control": "max-age=3600"})
    with RunningServer(dataclasses.replace(settings, server_name=""), app=origin) as running:
        edge = make_server(dataclasses.replace(settings, origin=running.url))
        async with httpx.AsyncClient(base_url=edge.url) as c:
            slow = asyncio.create_task(c.get("/doc"))  # reads version 1 at the origin...
            while not origin.held.is_set():
                await asyncio.sleep(0.01)
            put = await c.put("/doc", content=b"version 2")  # ...version 2 lands and invalidates...
            assert put.status_code == 201
            origin.release.set()
            first = await slow  # ...and only then version 1's answer arrives
            after = await c.get("/doc")
    # The first answer may be either version (its block answer is dropped, the request asked again),
    # but version 1 is never stored after the invalidation.
    assert first.content in (b"version 1", b"version 2")
    assert after.content == b"version 2" and after.headers["x-cache"] == "MISS"
