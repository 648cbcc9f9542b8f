"""The cache when things go wrong: an origin dying mid-body, a slow reader, an endless body,
a failing origin with a stale copy, odd requests. Through real servers on loopback."""
from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from proxy.config import Settings
from tests.conftest import RunningServer
from tests.upstream import Obj, lifespan

pytestmark = pytest.mark.anyio

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class Scripted:
    """An ASGI origin whose answer is a coroutine of the test's; counts its requests."""

    def __init__(self, answer: Callable[[int, Receive, Send], Awaitable[None]]) -> None:
        self.answer = answer
        self.requests = 0

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        self.requests += 1
        await self.answer(self.requests, receive, send)


@pytest.fixture
def scripted_edge(settings: Settings, http_settings: Settings):  # type: ignore[no-untyped-def]
    """start(answer) -> (origin, edge), both real servers."""
    running: list[RunningServer] = []

    def start(answer: Callable[[int, Receive, Send], Awaitable[None]], **changes: Any) -> tuple[Scripted, str]:
        origin = Scripted(answer)
        up = RunningServer(dataclasses.replace(settings, server_name=""), app=origin).__enter__()
        edge = RunningServer(dataclasses.replace(http_settings, origin=up.url, **changes)).__enter__()
        running.extend([edge, up])
        return origin, edge.url

    yield start
    for server in running:
        server.__exit__(None, None, None)


async def _start(send: Send, headers: list[tuple[bytes, bytes]], status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def test_an_unvalidated_object_whose_one_fill_died_is_fetched_again(scripted_edge) -> None:  # type: ignore[no-untyped-def]
    size = 1024 * 1024

    async def answer(n: int, receive: Receive, send: Send) -> None:
        await _start(send, [(b"cache-control", b"max-age=600"), (b"content-length", str(size).encode())])
        for i in range(16):
            if n == 1 and i == 10:
                raise RuntimeError("the origin dies mid-body")
            await send({"type": "http.response.body", "body": bytes([i]) * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    origin, edge = scripted_edge(answer)
    whole = b"".join(bytes([i]) * 65536 for i in range(16))
    async with httpx.AsyncClient(base_url=edge, timeout=30) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/api")  # cut: never a wrong body
        for _ in range(20):
            again = await c.get("/api")
            if again.headers["x-cache"] == "MISS":
                break
            await asyncio.sleep(0.05)
        hit = await c.get("/api")
    assert again.content == whole and hit.content == whole and hit.headers["x-cache"] == "HIT"
    assert origin.requests == 2


async def test_a_slow_reader_does_not_hold_other_clients(scripted_edge) -> None:  # type: ignore[no-untyped-def]
    async def answer(n: int, receive: Receive, send: Send) -> None:
        await _start(send, [(b"cache-control", b"max-age=600")])  # no length: relayed while stored
        for _ in range(400):
            await send({"type": "http.response.body", "body": b"z" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    origin, edge = scripted_edge(answer)
    host, port = edge.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"GET /feed HTTP/1.1\r\nHost: x\r\n\r\n")
        slow.recv(100)  # and then reads nothing more
        # Were it held until the slow client has read 25 MiB (it never will), this would time out.
        async with httpx.AsyncClient(base_url=edge, timeout=20) as c:
            other = await c.get("/feed")
    assert len(other.content) == 400 * 65536
    assert origin.requests == 2


async def test_a_head_miss_stops_reading_a_body_too_large_to_store(scripted_edge) -> None:  # type: ignore[no-untyped-def]
    streamed = 0
    gone = asyncio.Event()

    async def answer(n: int, receive: Receive, send: Send) -> None:
        nonlocal streamed

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        await _start(send, [(b"cache-control", b"max-age=60")])  # endless, no length
        while not gone.is_set() and streamed < 512 * 1024 * 1024:
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            streamed += 65536
            await asyncio.sleep(0)
        watcher.cancel()

    origin, edge = scripted_edge(answer, max_object_size=1024 * 1024)
    async with httpx.AsyncClient(base_url=edge, timeout=30) as c:
        assert (await c.head("/live")).status_code == 200
        for _ in range(100):
            if gone.is_set():
                break
            await asyncio.sleep(0.05)
        assert gone.is_set() and streamed < 16 * 1024 * 1024
        again = await c.head("/live")  # remembered as too large: straight through
    assert again.headers["cache-status"] == 'edgecache; fwd=bypass; fwd-status=200; detail="too large"'


async def test_stored_non_200_answers_have_one_age_and_a_204_no_length(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/moved"] = Obj(b"moved", {"cache-control": "max-age=600", "age": "30", "location": "/x"})
    origin.objects["/moved"].status = 301
    origin.objects["/empty"] = Obj(b"", {"cache-control": "max-age=600"})
    origin.objects["/empty"].status = 204
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url) as c:
        await c.get("/moved")
        await c.get("/empty")
        moved = await c.get("/moved")
        empty = await c.get("/empty")
    assert moved.headers["x-cache"] == "HIT" and moved.headers.get_list("age") == ["30"]
    assert empty.headers["x-cache"] == "HIT" and "content-length" not in empty.headers


async def test_waiters_of_a_leader_serving_stale_serve_stale_too(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/s"] = Obj(b"stale ok", {"cache-control": "max-age=1"})
    edge = make_server(dataclasses.replace(http_settings, origin_response_timeout=1.0))
    async with httpx.AsyncClient(base_url=edge.url, timeout=30) as c:
        assert (await c.get("/s")).content == b"stale ok"
        await asyncio.sleep(1.2)
        origin.delay = 3.0  # now the origin times out
        before = len(origin.gets("/s"))
        answers = await asyncio.gather(*(c.get("/s") for _ in range(4)))
    assert [(a.status_code, a.content, a.headers["x-cache"]) for a in answers] == [(200, b"stale ok", "STALE")] * 4
    assert len(origin.gets("/s")) - before == 1  # one timed-out request, not one per waiter in turn


async def test_a_get_with_a_body_is_answered(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/b"] = Obj(b"body", {"cache-control": "max-age=600"})
    edge = make_server(http_settings)
    r = httpx.request("GET", edge.url + "/b", content=b"x")
    assert (r.status_code, r.content) == (200, b"body")
    assert "content-length" not in origin.gets("/b")[-1].headers  # the edge's own GET has no body




async def test_an_uncacheable_variant_leaves_the_other_variants_alone(settings, http_settings) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    async def by_language(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        lang = dict(scope["headers"]).get(b"accept-language", b"-").decode()
        seen.append(lang)
        body = f"in {lang}".encode()
        await _start(send, [(b"cache-control", b"private" if lang == "de" else b"max-age=600"),
                            (b"vary", b"Accept-Language"), (b"content-length", str(len(body)).encode())])
        await send({"type": "http.response.body", "body": body})

    with RunningServer(dataclasses.replace(settings, server_name=""), app=by_language) as up, \
            RunningServer(dataclasses.replace(http_settings, origin=up.url)) as edge:
        async with httpx.AsyncClient(base_url=edge.url) as c:
            for lang in ("en", "fr", "de", "de", "en", "fr"):
                r = await c.get("/page", headers={"Accept-Language": lang})
                assert r.content == f"in {lang}".encode()
    assert r.headers["x-cache"] == "HIT"
    assert seen.count("en") == 1 and seen.count("fr") == 1  # still stored after the private "de"


async def test_vary_accept_encoding_is_one_variant_for_every_client(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/t.txt"] = Obj(b"text", {"cache-control": "max-age=600", "vary": "Accept-Encoding"})
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url) as c:
        for encoding in ("gzip", "br, gzip", "identity", "gzip, deflate", "*"):
            r = await c.get("/t.txt", headers={"Accept-Encoding": encoding})
            assert r.content == b"text" and "content-encoding" not in r.headers
    assert len(origin.gets("/t.txt")) == 1  # the edge always asks for identity: one copy serves all


async def test_a_stored_body_found_gone_is_fetched_again_not_cut(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    from proxy.store.disk import Store

    origin, _ = upstream
    body = bytes(range(256)) * 4000  # several blocks, no validator: filled from one response
    obj = Obj(body, {"cache-control": "max-age=600"}, etag="", last_modified=None)
    obj.etag = None
    origin.objects["/gen"] = obj
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url) as c:
        assert (await c.get("/gen")).content == body
        assert (await c.get("/gen")).headers["x-cache"] == "HIT"
        store = Store(http_settings.cache_dir, http_settings.cache_size_limit)
        try:
            for key in [k for k in store.objects.iterkeys() if str(k).startswith("b|")]:
                store.objects.delete(key)  # as if evicted
        finally:
            store.close()
        await asyncio.sleep(5.5)  # past the 5 s the edge trusts the block files it holds open
        parts = await c.get("/gen", headers={"Range": "bytes=0-9,20-29"})  # multipart: framing comes first
        again = await c.get("/gen")
    assert parts.status_code == 206 and parts.content.count(b"Content-Range: bytes") == 2
    assert (again.status_code, again.content) == (200, body)
