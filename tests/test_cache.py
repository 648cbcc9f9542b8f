"""The edge cache in front of a real upstream origin (uvicorn on loopback), end to end."""
from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from tests.conftest import RunningServer, pattern
from tests.upstream import Obj, Upstream

pytestmark = pytest.mark.anyio

BLOCK = 256 * 1024
MOVIE = pattern(10 * BLOCK + 12345, seed=5)  # 11 blocks, the last one short


@pytest.fixture
def edge_server(http_settings, make_server) -> RunningServer:  # type: ignore[no-untyped-def]
    return make_server(http_settings)


@pytest.fixture
def origin(upstream) -> Upstream:  # type: ignore[no-untyped-def]
    o, _ = upstream
    o.objects["/movie.mp4"] = Obj(MOVIE, {"cache-control": "public, max-age=600"})
    return o


async def test_cold_then_warm_full_get_is_byte_exact(origin: Upstream, edge_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        cold = await c.get("/movie.mp4")
        assert cold.status_code == 200 and cold.content == MOVIE
        assert cold.headers["x-cache"] == "MISS"
        assert cold.headers["cache-status"] == "edgecache; fwd=uri-miss; fwd-status=206; stored"
        assert cold.headers["content-length"] == str(len(MOVIE))
        assert cold.headers["etag"] == origin.objects["/movie.mp4"].etag
        assert cold.headers["cache-control"] == "public, max-age=600"
        origin_hits = len(origin.hits)
        assert origin.bytes_sent == len(MOVIE)  # every byte fetched once
        warm = await c.get("/movie.mp4")
        assert warm.status_code == 200 and warm.content == MOVIE
        assert warm.headers["x-cache"] == "HIT"
        assert warm.headers["cache-status"].startswith("edgecache; hit; ttl=")
        assert int(warm.headers["age"]) >= 0
        assert len(origin.hits) == origin_hits


async def test_random_ranges_cold_and_warm(origin: Upstream, edge_server: RunningServer) -> None:
    rng = random.Random(7)
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        for _ in range(2):  # the first round is mostly cold, the second warm
            for _ in range(25):
                a = rng.randrange(len(MOVIE))
                b = rng.randrange(a, min(len(MOVIE), a + 3 * BLOCK))
                r = await c.get("/movie.mp4", headers={"Range": f"bytes={a}-{b}"})
                assert r.status_code == 206
                assert r.content == MOVIE[a : b + 1]
                assert r.headers["content-range"] == f"bytes {a}-{b}/{len(MOVIE)}"
        r = await c.get("/movie.mp4", headers={"Range": "bytes=-100, 5-9"})
        assert r.status_code == 206 and r.headers["content-type"].startswith("multipart/byteranges")
        r = await c.get("/movie.mp4", headers={"Range": "bytes=-100"})
        assert r.content == MOVIE[-100:]


async def test_cold_mid_file_range_fetches_only_covering_blocks(origin: Upstream, edge_server: RunningServer) -> None:
    a = 5 * BLOCK + 1000
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        r = await c.get("/movie.mp4", headers={"Range": f"bytes={a}-{a + 999}"})
        assert r.content == MOVIE[a : a + 1000]
    await asyncio.sleep(0.2)
    assert origin.bytes_sent == BLOCK  # one block, not the file
    assert [h.headers.get("range") for h in origin.gets("/movie.mp4")] == [f"bytes={5 * BLOCK}-{6 * BLOCK - 1}"]


async def test_concurrent_cold_requests_fetch_each_block_once(origin: Upstream, edge_server: RunningServer) -> None:
    origin.chunk_delay = 0.002  # slow enough that the requests overlap
    async with httpx.AsyncClient(base_url=edge_server.url, limits=httpx.Limits(max_connections=60)) as c:
        results = await asyncio.gather(*(c.get("/movie.mp4") for _ in range(50)))
    assert all(r.status_code == 200 and r.content == MOVIE for r in results)
    ranges = [h.headers.get("range") for h in origin.gets("/movie.mp4")]
    assert len(ranges) == len(set(ranges)) == 11  # one origin request per block
    assert origin.bytes_sent == len(MOVIE)
    statuses = {r.headers["cache-status"] for r in results}
    assert "edgecache; fwd=uri-miss; fwd-status=206; stored" in statuses
    # the rest waited for that fetch, or came after its metadata was stored: missing blocks then came
    # from fills under way (collapsed), or from fills they started; once all were stored, hits
    assert (
        statuses
        - {'edgecache; fwd=uri-miss; detail="collapsed"'}
        - {"edgecache; fwd=uri-miss; fwd-status=206; stored"}
        <= {"edgecache; hit; ttl=599", "edgecache; hit; ttl=600",
            "edgecache; fwd=partial; fwd-status=206; collapsed", "edgecache; fwd=partial; fwd-status=206"}
    )


async def test_origin_ignoring_range_still_works(origin: Upstream, edge_server: RunningServer) -> None:
    origin.ignore_ranges = True
    a = 3 * BLOCK + 7
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        r = await c.get("/movie.mp4", headers={"Range": f"bytes={a}-{a + 2 * BLOCK}"})
        assert r.status_code == 206 and r.content == MOVIE[a : a + 2 * BLOCK + 1]
        await asyncio.sleep(0.3)
        full = await c.get("/movie.mp4")
        assert full.content == MOVIE and full.headers["x-cache"] == "HIT"
    assert len(origin.gets("/movie.mp4")) == 1  # stored from the one full stream


async def test_origin_replacing_the_file_mid_fill(origin: Upstream, edge_server: RunningServer) -> None:
    origin.chunk_delay = 0.01
    new = pattern(len(MOVIE), seed=99)
    async with httpx.AsyncClient(base_url=edge_server.url, timeout=30) as c:
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            async with c.stream("GET", "/movie.mp4") as r:
                async for chunk in r.aiter_raw():
                    if not received:
                        origin.objects["/movie.mp4"] = Obj(new, {"cache-control": "public, max-age=600"})
                    received += chunk
        assert received == MOVIE[: len(received)]  # never a byte of the new version
        assert len(received) < len(MOVIE)
        origin.chunk_delay = 0
        again = await c.get("/movie.mp4")
        assert again.status_code == 200 and again.content == new


async def test_revalidation_304_keeps_blocks(origin: Upstream, edge_server: RunningServer) -> None:
    origin.objects["/movie.mp4"].headers["cache-control"] = "max-age=0"
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        assert (await c.get("/movie.mp4")).content == MOVIE
        sent = origin.bytes_sent
        r = await c.get("/movie.mp4")
        assert r.content == MOVIE
        assert r.headers["x-cache"] == "HIT"
        assert r.headers["cache-status"] == "edgecache; fwd=stale; fwd-status=304; stored"
        last = origin.gets("/movie.mp4")[-1]
        assert last.status == 304 and last.headers["if-none-match"] == origin.objects["/movie.mp4"].etag
        assert origin.bytes_sent == sent  # no body bytes refetched


async def test_new_validator_on_revalidation_replaces_the_object(origin: Upstream, edge_server: RunningServer) -> None:
    origin.objects["/movie.mp4"].headers["cache-control"] = "max-age=0"
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        first = await c.get("/movie.mp4")
        new = pattern(3 * BLOCK, seed=3)
        origin.objects["/movie.mp4"] = Obj(new, {"cache-control": "max-age=0"})
        r = await c.get("/movie.mp4", headers={"If-None-Match": first.headers["etag"]})
        assert r.status_code == 200 and r.content == new  # the old ETag no longer matches
        assert r.headers["etag"] == origin.objects["/movie.mp4"].etag


async def test_stale_while_revalidate(origin: Upstream, edge_server: RunningServer) -> None:
    origin.objects["/movie.mp4"].headers["cache-control"] = "max-age=3, stale-while-revalidate=60"
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        await c.get("/movie.mp4")
        hits = len(origin.hits)
        await asyncio.sleep(3.2)
        origin.delay = 0.5  # a slow origin must not delay the stale answer
        r = await c.get("/movie.mp4", headers={"Range": "bytes=0-99"})
        # answered before the origin has answered the (slow) background revalidation
        assert not [h for h in origin.hits if "if-none-match" in h.headers and h.status]
        assert r.content == MOVIE[:100] and r.headers["x-cache"] == "STALE"
        assert 'detail="stale"' in r.headers["cache-status"]
        await asyncio.sleep(0.8)
        assert len(origin.hits) == hits + 1  # refreshed once, in the background
        origin.delay = 0
        fresh = await c.get("/movie.mp4", headers={"Range": "bytes=0-99"})
        assert fresh.headers["x-cache"] == "HIT"


async def test_stale_if_error(origin: Upstream, edge_server: RunningServer) -> None:
    origin.objects["/movie.mp4"].headers["cache-control"] = "max-age=1, stale-if-error=60"
    origin.objects["/other.mp4"] = Obj(b"x" * 100, {"cache-control": "max-age=1"})
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        await c.get("/movie.mp4", headers={"Range": "bytes=0-99"})
        await c.get("/other.mp4")
        await asyncio.sleep(2.1)
        origin.fail_status = 503
        r = await c.get("/movie.mp4", headers={"Range": "bytes=0-99"})
        assert r.status_code == 206 and r.content == MOVIE[:100]
        assert r.headers["x-cache"] == "STALE"
        assert r.headers["cache-status"] == 'edgecache; fwd=stale; fwd-status=503; detail="stale"'
        other = await c.get("/other.mp4")  # no stale-if-error: the origin's answer
        assert other.status_code == 503


async def test_origin_down_without_stale_is_502(http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    edge = make_server(http_settings, origin=dead)
    r = httpx.get(edge.url + "/movie.mp4", timeout=3)  # not left waiting: refused at once
    assert r.status_code == 502 and r.text.startswith("Bad Gateway")


async def test_slow_origin_is_504_within_the_timeout(origin: Upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(http_settings, origin_response_timeout=0.5)
    origin.delay = 3
    r = httpx.get(edge.url + "/movie.mp4", timeout=2.5)  # the origin's answer would come too late for this
    assert r.status_code == 504 and r.text.startswith("Gateway Timeout")


async def test_size_limit_respected_under_churn(origin: Upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    edge = make_server(http_settings, block_size=1024 * 1024, max_object_size=8 * 1024 * 1024)
    for i in range(30):  # 30 x 4 MiB through a 64 MiB cache
        origin.objects[f"/churn{i}.bin"] = Obj(pattern(4 * 1024 * 1024, seed=i), {"cache-control": "max-age=600"})
    async with httpx.AsyncClient(base_url=edge.url, timeout=30) as c:
        for i in range(30):
            r = await c.get(f"/churn{i}.bin")
            assert r.content == origin.objects[f"/churn{i}.bin"].body
        # A new object larger than the recency share of a full cache is kept once it is asked for
        # again (policy/adaptive.py: admission); until then at most a block of it lingers.
        for _ in range(3):
            last = await c.get("/churn29.bin")
            if last.headers["x-cache"] == "HIT":
                break
        assert last.headers["x-cache"] == "HIT" and last.content == origin.objects["/churn29.bin"].body
    await asyncio.sleep(0.3)
    objects = Path(http_settings.cache_dir) / "objects"
    stored = sum(f.stat().st_size for f in objects.rglob("*.val"))
    assert stored <= 64 * 1024 * 1024 + 10 * 1024 * 1024  # the limit, plus at most one cull's worth


async def test_hop_by_hop_dropped_via_added_one_date(origin: Upstream, edge_server: RunningServer) -> None:
    origin.objects["/movie.mp4"].headers.update(
        {"connection": "x-secret", "x-secret": "1", "keep-alive": "timeout=5", "date": "Sun, 06 Nov 1994 08:49:37 GMT",
         "server": "origin-server"}
    )
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        r = await c.get("/movie.mp4", headers={"Connection": "keep-alive, x-client", "X-Client": "drop me",
                                                "TE": "trailers"})
    assert "x-secret" not in r.headers and "keep-alive" not in r.headers
    assert r.headers.get_list("date") == ["Sun, 06 Nov 1994 08:49:37 GMT"]  # the origin's Date, unchanged
    assert r.headers.get_list("server") == ["origin-server"]
    assert r.headers["via"] == "1.1 edgecache"
    sent = origin.gets("/movie.mp4")[0].headers
    assert "x-client" not in sent and "te" not in sent and sent["via"] == "1.1 edgecache"
    assert sent["host"] == f"127.0.0.1:{origin_port(origin)}" or sent["host"].startswith("127.0.0.1")


def origin_port(origin: Upstream) -> str:
    return origin.gets("/movie.mp4")[0].headers["host"].split(":")[-1]


async def test_query_string_is_part_of_the_key_and_forwarded(origin: Upstream, edge_server: RunningServer) -> None:
    origin.objects["/movie.mp4?v=1"] = Obj(b"one", {"cache-control": "max-age=60"})
    origin.objects["/movie.mp4?v=2"] = Obj(b"two", {"cache-control": "max-age=60"})
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        assert (await c.get("/movie.mp4?v=1")).content == b"one"
        assert (await c.get("/movie.mp4?v=2")).content == b"two"
        assert (await c.get("/movie.mp4?v=1")).headers["x-cache"] == "HIT"


async def test_no_open_proxy(origin: Upstream, edge_server: RunningServer) -> None:
    """Absolute-form targets, odd Host headers and '//host' paths all stay on the origin."""
    import socket

    with socket.create_connection(("127.0.0.1", edge_server.port)) as s:
        s.sendall(
            b"GET http://example.invalid/movie.mp4 HTTP/1.1\r\n"
            b"Host: example.invalid\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 206") and data.endswith(MOVIE[:10])
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        r = await c.get("//example.invalid/movie.mp4", headers={"Host": "example.invalid"})
        assert r.status_code == 200 and r.content == MOVIE
    assert all(h.path == "/movie.mp4" for h in origin.hits)


async def test_redirects_are_passed_not_followed(origin: Upstream, edge_server: RunningServer) -> None:
    origin.objects["/old.mp4"] = Obj(b"", {"location": "/movie.mp4", "cache-control": "max-age=60"}, status=301)
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        r = await c.get("/old.mp4")
        assert r.status_code == 301 and r.headers["location"] == "/movie.mp4"
        again = await c.get("/old.mp4")
        assert again.status_code == 301 and again.headers["x-cache"] == "HIT"
    assert origin.gets("/movie.mp4") == []


async def test_404_is_cached_by_heuristic_only_with_validators(origin: Upstream, edge_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        r = await c.get("/missing.mp4")
        assert r.status_code == 404 and r.content == b"no such object"
        assert (await c.get("/missing.mp4")).status_code == 404
    assert len(origin.gets("/missing.mp4")) == 2  # no Last-Modified, no max-age: not reused


async def test_an_origin_whose_answers_cannot_be_used_gets_a_bounded_number_of_asks(
        origin: Upstream, edge_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each answer the cache cannot use is asked for again (whole, unconditionally), a bounded
    number of times: then a 502 that says so, not a loop."""
    from proxy.cache import reads
    from proxy.http import cache as hc

    monkeypatch.setattr(reads.hc, "on_response", lambda *args: hc.Refetch.WHOLE)
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        r = await c.get("/movie.mp4")
    assert r.status_code == 502 and r.text == "Bad Gateway: the origin's answers could not be used\n"
    assert r.headers["cache-status"] == 'edgecache; fwd=uri-miss; detail="refetch"'
    assert len(origin.gets("/movie.mp4")) == reads.REFETCHES + 1
    origin.delay = 0.2  # requests that come meanwhile wait for the one asking, and answer as it did
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        answers = await asyncio.gather(*(c.get("/movie.mp4") for _ in range(5)))
    assert [a.status_code for a in answers] == [502] * 5
    assert len(origin.gets("/movie.mp4")) == 2 * (reads.REFETCHES + 1)


async def test_a_request_that_fails_after_the_origin_answered_gives_its_connection_back(
        origin: Upstream, edge_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever ends a request between the origin's answer and the reply or fill that takes it
    (here an error; a cancellation alike), the answer is closed: the pool's slot comes back."""
    from proxy.cache import reads

    pool = edge_server.server.config.app.state.service.reads.origin.inner.pool
    free = pool.free

    def broken(*args: object) -> object:
        raise RuntimeError("broken")

    monkeypatch.setattr(reads.hc, "on_response", broken)
    async with httpx.AsyncClient(base_url=edge_server.url) as c:
        assert (await c.get("/movie.mp4")).status_code == 500
    assert pool.free == free
