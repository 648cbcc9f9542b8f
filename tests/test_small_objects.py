"""Small objects: a miss whose body is small and comes whole is read into memory, stored with its
metadata in one store transaction and answered from memory; single flight across stores without
a store transaction; the origin's connections. Through real servers on loopback."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache
import httpx
import pytest

import proxy.app
from proxy.cache.entries import Entries
from proxy.cache.flights import KeyLocks
from proxy.cache.threads import StoreThreads
from proxy.config import Settings
from proxy.origins.upstream import UpstreamOrigin
from proxy.store.disk import Put, Store
from proxy.store.objects import CachedObject, meta_key
from tests.conftest import RunningServer, pattern
from tests.upstream import Obj, lifespan

pytestmark = pytest.mark.anyio

SMALL = pattern(8192, 11)
FRESH = {"cache-control": "max-age=600"}


@pytest.fixture
def store_writes(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Write transactions the store begins, by database (objects, index, leases), and under "store"
    the store transactions: the outermost ones of a thread, whatever databases they hold."""
    counts: collections.Counter[str] = collections.Counter()
    open_here = threading.local()
    real = diskcache.Cache._transact

    @contextlib.contextmanager
    def counted(self: diskcache.Cache, *args: Any, **kwargs: Any) -> Iterator[Any]:
        begins = self._txn_id != threading.get_ident()
        depth = getattr(open_here, "depth", 0)
        if begins:
            counts[os.path.basename(self.directory)] += 1
            counts["store"] += depth == 0
        open_here.depth = depth + 1
        try:
            with real(self, *args, **kwargs) as handles:
                yield handles
        finally:
            open_here.depth = depth

    monkeypatch.setattr(diskcache.Cache, "_transact", counted)
    return counts


def parts(settings: Settings) -> list[str]:
    return os.listdir(Path(settings.cache_dir) / "parts")


async def test_a_small_miss_is_one_store_transaction(upstream, http_settings, make_server, store_writes) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    for n in range(4):
        origin.objects[f"/s/{n}.bin"] = Obj(pattern(8192, n), FRESH)
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
        await c.get("/s/0.bin")  # the store's connections opened, the policy kept
        await c.get("/s/0.bin")  # (a hit: once its store committed)
        store_writes.clear()
        misses = [await c.get(f"/s/{n}.bin") for n in (1, 2, 3)]
        hits = [await c.get(f"/s/{n}.bin") for n in (1, 2, 3)]  # each after its miss's store (its flight)
        writes = dict(store_writes)
    # At most one store transaction a miss (misses stored while the writer stored another share its
    # next): the index's, holding the objects' (metadata and block together); no lease, no part
    # file, no fill of its own; none for a hit.
    assert set(writes) == {"store", "index", "objects"}
    assert 1 <= writes["store"] <= 3 and writes["index"] == writes["objects"] == writes["store"]
    for n, miss, hit in zip((1, 2, 3), misses, hits, strict=True):
        body = pattern(8192, n)
        assert (miss.status_code, miss.content, miss.headers["x-cache"]) == (200, body, "MISS")
        assert miss.headers["cache-status"] == "edgecache; fwd=uri-miss; fwd-status=206; stored"
        assert (miss.headers["content-length"], miss.headers["etag"]) == ("8192", origin.objects[f"/s/{n}.bin"].etag)
        assert (hit.status_code, hit.content, hit.headers["x-cache"]) == (200, body, "HIT")
        assert len(origin.gets(f"/s/{n}.bin")) == 1
    assert parts(http_settings) == []


async def test_a_small_miss_answers_ranges_conditions_and_head_itself(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    for name in ("range", "ranges", "head", "inm"):
        origin.objects[f"/{name}"] = Obj(SMALL, FRESH)
    etag = origin.objects["/inm"].etag
    assert etag is not None
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
        one = await c.get("/range", headers={"Range": "bytes=10-19"})
        several = await c.get("/ranges", headers={"Range": "bytes=0-1,8190-"})
        head = await c.head("/head")
        inm = await c.get("/inm", headers={"If-None-Match": etag})
        after = await c.get("/head")
    assert (one.status_code, one.content, one.headers["content-range"]) == (206, SMALL[10:20], "bytes 10-19/8192")
    assert several.status_code == 206 and several.headers["content-type"].startswith("multipart/byteranges")
    boundary = several.headers["content-type"].partition("boundary=")[2]
    assert several.content == (
        f"\r\n--{boundary}\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-1/8192\r\n\r\n".encode() + SMALL[:2]
        + f"\r\n--{boundary}\r\nContent-Type: video/mp4\r\nContent-Range: bytes 8190-8191/8192\r\n\r\n".encode()
        + SMALL[8190:] + f"\r\n--{boundary}--\r\n".encode())
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "8192")
    assert (inm.status_code, inm.content, inm.headers["etag"]) == (304, b"", etag)
    assert [r.headers["x-cache"] for r in (one, several, head, inm)] == ["MISS"] * 4
    assert (after.content, after.headers["x-cache"]) == (SMALL, "HIT")  # the HEAD's miss stored the body
    assert [len(origin.gets(f"/{name}")) for name in ("range", "ranges", "head", "inm")] == [1, 1, 1, 1]


async def test_a_small_error_page_is_stored_whole(upstream, http_settings, make_server, store_writes) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/gone"] = Obj(b"not here any more", {"cache-control": "max-age=600"}, status=410)
    origin.objects["/warm"] = Obj(SMALL, FRESH)
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
        await c.get("/warm")
        await c.get("/warm")  # (a hit: once its store committed)
        store_writes.clear()
        first = await c.get("/gone")
        second = await c.get("/gone")  # once the first's store committed
        writes = dict(store_writes)
    assert writes == {"store": 1, "index": 1, "objects": 1}
    for answer in (first, second):
        assert (answer.status_code, answer.content, answer.headers["content-length"]) == (410, b"not here any more",
                                                                                           "17")
    assert first.headers["cache-status"] == "edgecache; fwd=uri-miss; fwd-status=410; stored"
    assert second.headers["x-cache"] == "HIT"
    assert len(origin.gets("/gone")) == 1


async def test_a_small_body_cut_short_is_a_bad_gateway_and_never_stored(settings, http_settings) -> None:  # type: ignore[no-untyped-def]
    asked = 0

    async def origin(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        nonlocal asked
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        asked += 1
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"cache-control", b"max-age=600"), (b"etag", b'"v1"'), (b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b"x" * 500, "more_body": True})
        if asked == 1:
            raise RuntimeError("the origin dies mid-body")
        await send({"type": "http.response.body", "body": b"y" * 500})

    with RunningServer(dataclasses.replace(settings, server_name=""), app=origin) as up, \
            RunningServer(dataclasses.replace(http_settings, origin=up.url)) as edge:
        async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
            cut = await c.get("/a")
            whole = await c.get("/a")
            hit = await c.get("/a")
    assert cut.status_code == 502 and b"x" not in cut.content  # nothing of the broken body
    assert (whole.status_code, whole.content, whole.headers["x-cache"]) == (200, b"x" * 500 + b"y" * 500, "MISS")
    assert (hit.content, hit.headers["x-cache"]) == (whole.content, "HIT")
    assert asked == 2
    assert parts(http_settings) == []


def held_store_writes(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Every store transaction (Store.put_all) waits until the event returned is set (10 s at most)."""
    gate = threading.Event()
    real_put_all = Store.put_all

    def held(self: Store, puts: list[Put]) -> list[bool]:
        gate.wait(10)
        return real_put_all(self, puts)

    monkeypatch.setattr(Store, "put_all", held)
    return gate


@pytest.mark.parametrize("backlog", [False, True], ids=["answered-first", "writer-behind"])
async def test_a_small_miss_is_answered_before_its_store_and_a_request_meanwhile_waits_for_it(  # type: ignore[no-untyped-def]
        upstream, http_settings, make_server, monkeypatch, backlog: bool) -> None:
    """The body is answered from memory while its transaction is still to come (held here); a
    request for it meanwhile waits for that store, not the origin, and is a hit. With the writer
    behind (its backlog at the bound), the miss waits for its own store instead."""
    from proxy.cache import reads

    origin, _ = upstream
    origin.objects["/w.bin"] = Obj(SMALL, FRESH)
    gate = held_store_writes(monkeypatch)
    if backlog:
        monkeypatch.setattr(reads, "WHOLE_BACKLOG", 0)
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
        miss = asyncio.ensure_future(c.get("/w.bin"))
        await asyncio.sleep(0.5)
        assert miss.done() is not backlog
        again = asyncio.ensure_future(c.get("/w.bin"))
        await asyncio.sleep(0.3)
        assert not again.done()  # it waits for the store
        gate.set()
        first, hit = await miss, await again
    assert (first.status_code, first.content, first.headers["x-cache"]) == (200, SMALL, "MISS")
    assert first.headers["cache-status"] == "edgecache; fwd=uri-miss; fwd-status=206; stored"
    assert (hit.status_code, hit.content, hit.headers["x-cache"]) == (200, SMALL, "HIT")
    assert len(origin.gets("/w.bin")) == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "relayed"])
async def test_a_purge_by_prefix_between_the_answer_and_its_store_still_purges_it(  # type: ignore[no-untyped-def]
        upstream, http_settings, make_server, monkeypatch, chunked: bool) -> None:
    """A purge by prefix in another worker that looks while an answer's store is still to come
    (a small body answered whole, or one of no stated length relayed while it is written) does
    not find it: the store then sees, in its transaction, that a purge came since its request was
    looked up, and stores nothing. What was answered before the purge is never served after it."""
    origin, _ = upstream
    origin.objects["/q/a.bin"] = Obj(SMALL, FRESH, chunked=chunked)
    gate = held_store_writes(monkeypatch)
    edge = make_server(http_settings)
    store = edge.server.config.app.state.service.reads.store
    other = Store(store.directory, store.size_limit, block_size=store.block_size)  # another worker's
    try:
        async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
            first = await c.get("/q/a.bin")
            assert await asyncio.to_thread(other.purge_prefix, "/q/") == []  # not stored yet: not found
            gate.set()
            again = await c.get("/q/a.bin")
    finally:
        other.close()
    assert (first.status_code, first.content, first.headers["x-cache"]) == (200, SMALL, "MISS")
    assert (again.status_code, again.content, again.headers["x-cache"]) == (200, SMALL, "MISS")
    assert len(origin.gets("/q/a.bin")) == 2


async def test_a_purge_during_a_small_fill_keeps_it_from_being_stored(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/p.bin"] = Obj(SMALL, FRESH)
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
        origin.gate = threading.Event()
        asked = asyncio.ensure_future(c.get("/p.bin"))
        while not origin.gets("/p.bin"):
            await asyncio.sleep(0.01)
        purged = await c.post("/_edge/purge?path=/p.bin")
        origin.gate.set()
        during = await asked
        origin.gate = None
        after = await c.get("/p.bin")
    assert purged.json() == {"purged": [], "count": 0}
    # The answer that was on its way is given (it was asked before the purge), never stored after it.
    assert (during.status_code, during.content, during.headers["x-cache"]) == (200, SMALL, "MISS")
    assert during.headers["cache-status"] == "edgecache; fwd=uri-miss; fwd-status=206"
    assert (after.content, after.headers["cache-status"]) == (SMALL, "edgecache; fwd=uri-miss; fwd-status=206; stored")
    assert len(origin.gets("/p.bin")) == 2


async def test_one_origin_request_for_many_clients_of_two_edges_on_one_cache(  # type: ignore[no-untyped-def]
        upstream, http_settings, make_server) -> None:
    origin, _ = upstream
    origin.objects["/one.bin"] = Obj(SMALL, FRESH)
    edges = [make_server(http_settings), make_server(http_settings)]  # two stores on one directory, as two workers
    origin.gate = threading.Event()
    async with httpx.AsyncClient(timeout=20) as c:
        asked = [asyncio.ensure_future(c.get(edges[n % 2].url + "/one.bin")) for n in range(10)]
        while not origin.gets("/one.bin"):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the others reach their flights (if not, they find the object stored)
        origin.gate.set()
        answers = await asyncio.gather(*asked)
    assert [(a.status_code, a.content) for a in answers] == [(200, SMALL)] * 10
    assert len(origin.gets("/one.bin")) == 1


def test_a_key_lock_excludes_other_opens_and_goes_with_a_killed_holder(tmp_path: Path) -> None:
    path = str(tmp_path / "flights")
    ours, theirs = KeyLocks(path), KeyLocks(path)
    slot = ours.slot("/a.mp4")
    try:
        assert ours.acquire(slot) and ours.acquire(slot)  # a second flight of this store on the slot
        assert not theirs.acquire(slot) and theirs.held_elsewhere(slot)
        ours.release(slot)
        assert theirs.held_elsewhere(slot)  # still held by the first flight
        ours.release(slot)
        assert not theirs.held_elsewhere(slot) and theirs.acquire(slot)
        theirs.release(slot)
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time\nfrom proxy.cache.flights import KeyLocks\n"
             f"locks = KeyLocks({path!r})\nassert locks.acquire({slot})\nprint('held', flush=True)\ntime.sleep(600)"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            assert ours.held_elsewhere(slot)
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        assert not ours.held_elsewhere(slot)  # the kernel gave it back with the process
    finally:
        ours.close()
        theirs.close()


async def test_the_origin_never_gets_a_cookie_set_for_another_client(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/login"] = Obj(b"welcome", {"set-cookie": "session=alice; Path=/", "cache-control": "no-store"})
    origin.objects["/page"] = Obj(b"page", {"cache-control": "no-store"})
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url, timeout=20) as alice:
        assert (await alice.get("/login")).headers["set-cookie"] == "session=alice; Path=/"
    async with httpx.AsyncClient(base_url=edge.url, timeout=20) as bob:
        assert (await bob.get("/page")).content == b"page"
    assert "cookie" not in origin.gets("/page")[0].headers


class Connections:
    """An origin that answers small objects after a moment, and counts the connections it sees and
    the most requests it had in flight at once."""

    def __init__(self) -> None:
        self.peers: set[tuple[str, int]] = set()
        self.in_flight = 0
        self.most = 0

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        self.peers.add(tuple(scope["client"]))
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.02)
            body = scope["path"].encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.in_flight -= 1


async def test_origin_connections_are_kept_reused_and_bounded(settings, http_settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(proxy.app, "UpstreamOrigin", functools.partial(UpstreamOrigin, max_connections=3))
    counting = Connections()
    with RunningServer(dataclasses.replace(settings, server_name=""), app=counting) as up, \
            RunningServer(dataclasses.replace(http_settings, origin=up.url)) as edge:
        async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
            for n in range(20):
                assert (await c.get(f"/one/{n}")).content == f"/one/{n}".encode()
            sequential = len(counting.peers)
            answers = await asyncio.gather(*(c.get(f"/many/{n}") for n in range(24)))
    assert sequential == 1  # one kept connection for one request at a time
    assert [a.content for a in answers] == [f"/many/{n}".encode() for n in range(24)]
    assert counting.most <= 3 and len(counting.peers) <= 3


async def test_entries_that_come_while_one_is_stored_go_in_one_transaction(tmp_path: Path, store_writes) -> None:  # type: ignore[no-untyped-def]
    store = Store(str(tmp_path / "cache"), 64 * 1024**2, block_size=256 * 1024)
    threads = StoreThreads(2)
    entries = Entries(store, threads)
    try:
        objects = [small_object(f"/b/{n}", n) for n in range(10)]
        async with writer_busy(threads) as free:
            puts = [asyncio.ensure_future(entries.put(f"/b/{n}", o.key, o, (), store.generation(f"/b/{n}"), (),
                                                      pattern(o.size, n)))
                    for n, o in enumerate(objects)]
            await asyncio.sleep(0)  # every put queued
            store_writes.clear()
            free()
        assert await asyncio.gather(*puts) == [True] * 10
        assert dict(store_writes) == {"store": 1, "index": 1, "objects": 1}
        for n, o in enumerate(objects):
            assert store.get_meta(o.key, store.generation(f"/b/{n}"), fresh=True) == o
            assert store.read_block(o.block_key(0), o.size) == pattern(o.size, n)
    finally:
        await entries.aclose()
        threads.close()
        store.close()


def small_object(primary: str, n: int) -> CachedObject:
    return CachedObject(status=200, headers=[("etag", f'"{n}"'), ("cache-control", "max-age=600")],
                        request_time=1.0, response_time=1.0, key=meta_key(primary, ""), size=1000 + n,
                        block_size=256 * 1024, validator=f'"{n}"', sliceable=True)


async def test_a_batch_the_store_fails_answers_every_waiter_and_stores_nothing_of_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path / "cache"), 64 * 1024**2, block_size=256 * 1024)
    threads = StoreThreads(2)
    entries = Entries(store, threads)
    real_put = Store._put
    faults: dict[str, BaseException] = {"/f/3": sqlite3.OperationalError("disk I/O error"),
                                        "/g/3": RuntimeError("a bug")}

    def failing_put(self: Store, put: Any, part: Any, replaced: list[str]) -> bool:
        fault = faults.get(put.primary)
        if fault is not None:
            raise fault
        return real_put(self, put, part, replaced)

    monkeypatch.setattr(Store, "_put", failing_put)
    try:
        for prefix, answer in (("/f", [False] * 6), ("/g", None)):
            objects = [small_object(f"{prefix}/{n}", n) for n in range(6)]
            async with writer_busy(threads) as free:  # every put queues: one batch
                puts = [asyncio.ensure_future(entries.put(f"{prefix}/{n}", o.key, o, (), 0, (), pattern(o.size, n)))
                        for n, o in enumerate(objects)]
                await asyncio.sleep(0)
                free()
            results = await asyncio.gather(*puts, return_exceptions=True)
            if answer is not None:
                assert results == answer
            else:
                assert all(isinstance(r, RuntimeError) and str(r) == "a bug" for r in results)
            for o in objects:  # nothing of the batch, and no part file left
                assert store.get_meta(o.key, 0, fresh=True) is None
                assert not store.has_block(o.block_key(0))
            assert os.listdir(store.parts_dir) == []
            assert block_files(store) == []  # those renamed into place before the fault went too
        after = small_object("/h/0", 0)  # and the next batch is stored
        assert await entries.put("/h/0", after.key, after, (), 0, (), pattern(after.size, 0))
        assert store.read_block(after.block_key(0), after.size) == pattern(after.size, 0)
    finally:
        await entries.aclose()
        threads.close()
        store.close()


def test_a_body_stored_again_keeps_its_block_or_replaces_it_only_once_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bytes again leave the stored block as it is; other bytes under the block's key
    replace it only when their transaction commits: one that rolls back leaves the stored block
    whole, and no file of either behind."""
    store = Store(str(tmp_path / "cache"), 64 * 1024**2, block_size=256 * 1024)
    o = small_object("/r/0", 0)
    try:
        def put(body: bytes) -> list[bool]:
            return store.put_all([Put("/r/0", o.key, o, (), 0, (), body)])

        assert put(pattern(o.size, 0)) == [True]
        first = block_files(store)
        assert put(pattern(o.size, 0)) == [True] and block_files(store) == first
        real_put = Store._put

        def failing_after(self: Store, *args: Any) -> bool:
            real_put(self, *args)
            raise sqlite3.OperationalError("database or disk is full")

        with monkeypatch.context() as patched:
            patched.setattr(Store, "_put", failing_after)
            with pytest.raises(sqlite3.OperationalError):
                put(pattern(o.size, 1))
        assert block_files(store) == first and os.listdir(store.parts_dir) == []
        assert store.read_block(o.block_key(0), o.size) == pattern(o.size, 0)
        assert put(pattern(o.size, 2)) == [True]
        assert store.read_block(o.block_key(0), o.size) == pattern(o.size, 2)
        assert len(block_files(store)) == 1 and block_files(store) != first
    finally:
        store.close()


async def test_closing_waits_for_the_entries_being_stored(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "cache"), 64 * 1024**2, block_size=256 * 1024)
    threads = StoreThreads(2)
    entries = Entries(store, threads)
    objects = [small_object(f"/c/{n}", n) for n in range(4)]
    try:
        async with writer_busy(threads) as free:
            puts = [asyncio.ensure_future(entries.put(f"/c/{n}", o.key, o, (), 0, (), pattern(o.size, n)))
                    for n, o in enumerate(objects)]
            await asyncio.sleep(0)
            closing = asyncio.ensure_future(entries.aclose())
            await asyncio.sleep(0)
            assert not closing.done()
            free()
        await closing
        assert all(p.done() and p.result() for p in puts)
        for n, o in enumerate(objects):
            assert store.read_block(o.block_key(0), o.size) == pattern(o.size, n)
    finally:
        threads.close()
        store.close()


def block_files(store: Store) -> list[str]:
    return [name for _, _, names in os.walk(store.objects.directory) for name in names if name.endswith(".val")]


@contextlib.asynccontextmanager
async def writer_busy(threads: StoreThreads) -> AsyncIterator[Callable[[], None]]:
    """The writer thread kept busy with something else until the function given is called (or the
    block is left): what is put meanwhile queues."""
    busy, free = threading.Event(), threading.Event()

    def occupy() -> None:
        busy.set()
        free.wait()

    occupied = asyncio.ensure_future(threads.write(occupy))
    await asyncio.to_thread(busy.wait)
    try:
        yield free.set
    finally:
        free.set()
        await occupied


@pytest.mark.parametrize("fails", [False, True], ids=["connects", "cannot-connect"])
async def test_store_threads_all_start_at_once_and_connect(fails: bool) -> None:
    connected: set[int] = set()
    all_in = threading.Event()

    def connect() -> None:
        connected.add(threading.get_ident())
        if len(connected) == 5:
            all_in.set()
        if fails:
            raise OSError("no database")  # each thread still serves: it connects when asked

    threads = StoreThreads(4, connect)
    try:
        assert await asyncio.to_thread(all_in.wait, 60)  # four store threads and the writer, before any call
        assert await threads.run(threading.get_ident) in connected
        assert await threads.write(threading.get_ident) in connected
    finally:
        threads.close()
