"""Origins as they really are: no validators, no Content-Length, ranges ignored or wrong,
invalid statuses. Everything through a real edgecache in front of a real origin server."""
from __future__ import annotations

import dataclasses
import socketserver
import threading

import anyio
import httpx
import pytest

from proxy.store.objects import CachedObject, meta_key
from tests.conftest import RunningServer, pattern
from tests.upstream import Obj, Upstream

pytestmark = pytest.mark.anyio

BLOCK = 256 * 1024  # http_settings' block size
BIG = pattern(3 * BLOCK + 1234, 5)


@pytest.fixture
def setup(upstream, http_settings, make_server) -> tuple[Upstream, RunningServer]:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    return origin, make_server(http_settings)


def bare(body: bytes, **headers: str) -> Obj:
    """An object the origin serves without ETag or Last-Modified."""
    obj = Obj(body, {k.replace("_", "-"): v for k, v in headers.items()}, etag="", last_modified=None)
    obj.etag = None
    return obj


async def test_no_validators_small_object_is_stored_from_its_first_response(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/api"] = bare(b'{"n": 1}', cache_control="max-age=600", content_type="application/json")
    async with httpx.AsyncClient(base_url=edge.url) as c:
        a = await c.get("/api")
        b = await c.get("/api")
        r = await c.get("/api", headers={"Range": "bytes=1-3"})
    assert (a.status_code, a.content, a.headers["x-cache"]) == (200, b'{"n": 1}', "MISS")
    assert (b.status_code, b.content, b.headers["x-cache"]) == (200, b'{"n": 1}', "HIT")
    assert (r.status_code, r.content, r.headers["content-range"]) == (206, b'"n"', "bytes 1-3/8")
    assert len(origin.gets("/api")) == 1
    assert "etag" not in b.headers and "last-modified" not in b.headers


async def stored(edge: RunningServer, primary: str) -> None:
    """Until the edge's store holds the response for `primary` with every block of it (its one
    whole-body fill goes on after the client that started it had the bytes it asked for)."""
    store = edge.server.config.app.state.service.reads.store
    for _ in range(500):
        obj = store.get_meta(meta_key(primary, ""), store.generation(primary), fresh=True)
        if isinstance(obj, CachedObject) and all(store.has_block(obj.block_key(i)) for i in range(obj.block_count)):
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"{primary} was not stored")


async def test_no_validators_large_object_comes_whole_from_one_response(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/big.bin"] = bare(BIG, cache_control="max-age=600")
    async with httpx.AsyncClient(base_url=edge.url) as c:
        first = await c.get("/big.bin", headers={"Range": f"bytes={BLOCK + 10}-{BLOCK + 19}"})
        assert (first.status_code, first.content) == (206, BIG[BLOCK + 10: BLOCK + 20])
        during = await c.get("/big.bin")  # the fill the first request started may still be under way
        await stored(edge, "/big.bin")
        whole = await c.get("/big.bin")
        tail = await c.get("/big.bin", headers={"Range": "bytes=-100"})
    assert during.content == BIG and during.headers["cache-status"] in (
        "edgecache; hit; ttl=599", "edgecache; hit; ttl=600", "edgecache; fwd=partial; fwd-status=200; collapsed")
    assert whole.content == BIG and whole.headers["x-cache"] == "HIT", whole.headers["cache-status"]
    assert tail.content == BIG[-100:]
    gets = origin.gets("/big.bin")
    # the block probe (a 206 without a validator cannot be stitched), then one whole response
    assert [h.headers.get("range") for h in gets] == [f"bytes={BLOCK}-{2 * BLOCK - 1}", None]


async def test_unknown_length_response_is_stored_once_complete(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/live.m3u8"] = bare(BIG, cache_control="max-age=600", content_type="text/plain")
    origin.objects["/live.m3u8"].chunked = True
    origin.ignore_ranges = True  # a generated body: no ranges, no length
    async with httpx.AsyncClient(base_url=edge.url) as c:
        a = await c.get("/live.m3u8")
        b = await c.get("/live.m3u8")
        r = await c.get("/live.m3u8", headers={"Range": "bytes=100-199"})
    assert a.content == BIG and "content-length" not in a.headers and a.headers["x-cache"] == "MISS"
    assert b.content == BIG and b.headers["content-length"] == str(len(BIG)) and b.headers["x-cache"] == "HIT"
    assert (r.status_code, r.content) == (206, BIG[100:200])
    assert len(origin.gets("/live.m3u8")) == 1


async def test_a_head_miss_stores_the_body_it_did_not_send(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/h"] = bare(b"body of h", cache_control="max-age=600")
    origin.objects["/h"].chunked = True
    async with httpx.AsyncClient(base_url=edge.url) as c:
        head = await c.head("/h")
        assert head.status_code == 200 and head.content == b""
        for _ in range(50):  # the body is stored in the background
            got = await c.get("/h")
            if got.headers["x-cache"] == "HIT":
                break
    assert got.content == b"body of h" and got.headers["x-cache"] == "HIT"


async def test_an_error_page_without_length_is_stored_whole(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/gone"] = bare(b"it is gone", cache_control="max-age=600")
    origin.objects["/gone"].status = 410
    origin.objects["/gone"].chunked = True
    async with httpx.AsyncClient(base_url=edge.url) as c:
        a = await c.get("/gone")
        b = await c.get("/gone", headers={"Range": "bytes=0-1"})
    assert (a.status_code, a.content) == (410, b"it is gone")
    assert (b.status_code, b.content, b.headers["x-cache"]) == (410, b"it is gone", "HIT")
    assert len(origin.gets("/gone")) == 1


async def test_a_wrong_content_range_is_a_bad_gateway_not_a_new_version(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/w.bin"] = Obj(BIG, {"cache-control": "max-age=600"})
    origin.wrong_ranges = True
    async with httpx.AsyncClient(base_url=edge.url) as c:
        r = await c.get("/w.bin")
        assert r.status_code == 502 and "asked for bytes 0-262143, got 1-262143" in r.text
        origin.wrong_ranges = False
        ok = await c.get("/w.bin")
    assert ok.content == BIG and ok.headers["x-cache"] == "MISS"


class RawOrigin(socketserver.ThreadingTCPServer):
    """An origin that answers requests with fixed bytes (what no ASGI server can send), in
    turn, the last one for ever; b"" closes the connection without an answer."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *answers: bytes) -> None:
        queue = list(answers)

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                self.wfile.write(queue.pop(0) if len(queue) > 1 else queue[0])

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


async def test_an_invalid_status_from_the_origin_is_a_bad_gateway(http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    raw = RawOrigin(b"HTTP/1.1 999 Odd\r\nContent-Length: 1\r\nCache-Control: max-age=60\r\n\r\nx")
    try:
        edge = make_server(dataclasses.replace(http_settings, origin=raw.url))
        r = httpx.get(edge.url + "/odd")
        assert r.status_code == 502 and r.text == "Bad Gateway: the origin's answer was not valid HTTP (status 999)\n"
    finally:
        raw.shutdown()
        raw.server_close()


async def test_no_validators_and_a_new_body_each_time_never_mixes_versions(setup) -> None:  # type: ignore[no-untyped-def]
    origin, edge = setup
    origin.objects["/gen"] = bare(pattern(2 * BLOCK + 5, 1), cache_control="max-age=0")
    async with httpx.AsyncClient(base_url=edge.url) as c:
        a = await c.get("/gen")
        origin.objects["/gen"] = bare(pattern(2 * BLOCK + 5, 2), cache_control="max-age=0")
        b = await c.get("/gen")
        c2 = await c.get("/gen", headers={"Range": f"bytes={BLOCK - 5}-{BLOCK + 4}"})
    assert a.content == pattern(2 * BLOCK + 5, 1)
    assert b.content == pattern(2 * BLOCK + 5, 2)
    assert c2.content in (pattern(2 * BLOCK + 5, 2)[BLOCK - 5: BLOCK + 5],)


@pytest.mark.parametrize(
    "cache_control, served",
    [
        ("max-age=0", "stale"),
        ("max-age=0, must-revalidate", "error"),  # section 5.2.2.2: never stale
        ("max-age=0, stale-if-error=60", "stale"),
    ],
)
async def test_an_unreachable_origin_is_met_with_the_stale_copy(  # type: ignore[no-untyped-def]
    http_settings, make_server, cache_control: str, served: str
) -> None:
    ok = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"v1\"\r\nConnection: close\r\n"
          b"Cache-Control: " + cache_control.encode() + b"\r\n\r\nhello")
    raw = RawOrigin(ok, b"")  # then it closes every connection without answering
    try:
        edge = make_server(dataclasses.replace(http_settings, origin=raw.url))
        with httpx.Client(base_url=edge.url) as c:
            assert c.get("/s").content == b"hello"
            again = c.get("/s")
        if served == "stale":
            assert (again.status_code, again.content, again.headers["x-cache"]) == (200, b"hello", "STALE")
            assert again.headers["cache-status"] == 'edgecache; fwd=stale; detail="unreachable"'
        else:
            assert again.status_code == 502
    finally:
        raw.shutdown()
        raw.server_close()


async def test_waiters_of_a_failed_fetch_share_its_failure(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    origin, _ = upstream
    origin.objects["/slow"] = Obj(b"late", {"cache-control": "max-age=600"})
    origin.delay = 1.5
    edge = make_server(dataclasses.replace(http_settings, origin_response_timeout=0.5))
    async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
        answers = await asyncio.gather(*(c.get("/slow") for _ in range(6)))
    assert [a.status_code for a in answers] == [504] * 6
    assert len(origin.gets("/slow")) == 1  # not one timed-out request per waiter
