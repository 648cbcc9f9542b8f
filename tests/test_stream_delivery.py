"""Video delivery as a CDN does it: a real player (ffmpeg) through a cold edge finds the segments
it asks for already stored (prefetch), a live playlist is never served older than a target
duration and costs its origin one request per refresh however many poll it, and the prefetch
keeps to its bounds, to what the cache stores, and to a player's position."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.cache.entries import Entries
from proxy.cache.replies import Reply, nothing_to_close
from proxy.cache.segments import MANIFEST_BASE, SegmentPrefetch, read_manifest
from proxy.cache.threads import StoreThreads
from proxy.config import Settings
from proxy.http.lifetimes import Changes
from proxy.origins.base import Target
from proxy.store.disk import Store
from proxy.store.objects import CachedObject, meta_key
from tests.conftest import RunningServer
from tests.edge_process import EdgeProcess
from tests.streams import BYTES_TS, DASH_TIMELINE, HLS_FMP4, HLS_TS, Streams
from tests.streams import streams_fixture as streams_fixture  # noqa: F401 (the fixture)
from tests.test_warm_streams import publish
from tests.upstream import Obj, Upstream

MANIFESTS = (".m3u8", ".mpd")


def _length(range_field: str | None, size: int) -> int:
    """Bytes a 200/206 answer to a GET with this Range carries (a player asks bytes=a- or bytes=a-b)."""
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_field or "")
    if m is None:
        return size
    first, last = int(m[1]), int(m[2]) if m[2] else size - 1
    return min(last, size - 1) - first + 1


@pytest.mark.parametrize("folder, entry, workers, block", [
    ("hls-fmp4", HLS_FMP4, 1, "4MiB"),
    ("hls-ts", HLS_TS, 1, "4MiB"),
    ("hls-bytes", BYTES_TS, 1, "256KiB"),  # byte-range segments of one file, over several blocks
    ("dash-timeline", DASH_TIMELINE, 2, "4MiB"),  # the segments' rendition found by the worker that did not parse it
])
def test_a_player_through_a_cold_edge_finds_its_segments_stored(
        upstream, streams: Streams, tmp_path: Path, folder: str, entry: str, workers: int, block: str,  # type: ignore[no-untyped-def]
        capsys: pytest.CaptureFixture[str]) -> None:
    origin, running = upstream
    files = publish(origin, streams, folder)
    env = {"EDGECACHE_ORIGIN": running.url, "EDGECACHE_CACHE_DIR": str(tmp_path / "cache"),
           "EDGECACHE_WORKERS": str(workers), "EDGECACHE_BLOCK_SIZE": block, "EDGECACHE_PREFETCH_SEGMENTS": "16",
           "EDGECACHE_ACCESS_LOG": "true", "EDGECACHE_ACCESS_LOG_FORMAT": "json", "EDGECACHE_LOG_LEVEL": "warning"}
    with EdgeProcess(tmp_path, env=env) as edge:
        # A player reads at its playback rate (here twelve times it, to keep the test short): as fast as
        # the machine can, the player races the prefetch, and which wins is the machine's load.
        played = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-readrate", "12", "-i", f"{edge.url}/{entry}",
                                 "-c", "copy", "-f", "null", "-"], capture_output=True, timeout=120)
        assert played.returncode == 0, played.stderr.decode(errors="replace")
        asked = Counter(h.path for h in origin.hits)
        # Every file the player asked for, asked again: all stored, with their exact bytes.
        lines = [json.loads(line) for line in edge.output().splitlines() if line.startswith("{")]
        with httpx.Client(base_url=edge.url) as client:
            for path in {line["path"] for line in lines if line["path"] in files}:
                again = client.get(path)
                assert (again.status_code, again.headers["x-cache"]) == (200, "HIT"), path
                assert again.content == files[path]
        assert edge.stop() == 0
    lines = [json.loads(line) for line in edge.output().splitlines() if line.startswith("{")]
    player = [line for line in lines if (line["user_agent"] or "").startswith("Lavf")]
    segments = [line for line in player if not line["path"].endswith(MANIFESTS)]
    for line in segments:
        if line["path"] in files:  # ffmpeg's DASH reader asks one segment past the end (a 404)
            assert line["status"] in (200, 206)
            assert line["bytes"] == _length(line["range"], len(files[line["path"]])), line
        else:
            assert line["status"] == 404
    after = segments[2:]
    hits = sum(line["cache"] == "HIT" for line in after)
    with capsys.disabled():
        print(f"\n{folder} ({workers} worker{'s' * (workers > 1)}): {hits} of {len(after)} segment requests after "
              f"the first two were hits ({hits / len(after):.1%}); the player made {len(player)} requests, the "
              f"origin got {sum(asked.values())} ({len(asked)} paths, {len(files)} files)")
    if folder == "hls-bytes":
        # One file, filled by blocks, each block once; a player asking within a block still being
        # filled waits for that fill (a miss, collapsed), which how fast the machine is decides.
        (path,) = [p for p in asked if not p.endswith(MANIFESTS)]
        blocks = [h.headers.get("range") for h in origin.gets(path)]
        assert len(blocks) == len(set(blocks)) == -(-len(files[path]) // (256 * 1024))
    else:
        assert hits >= 0.9 * len(after)
        assert set(asked.values()) == {1}  # each file from the origin once, whoever asked first


# --- a live playlist ----------------------------------------------------------------------

TARGET = 2  # seconds: the live playlist's target duration, and how often the test updates it
POLLERS, POLL, RUN = 50, 0.2, 7.0  # clients, seconds between their requests, seconds they poll for


def live_playlist(sequence: int) -> bytes:
    lines = ["#EXTM3U", f"#EXT-X-TARGETDURATION:{TARGET}", f"#EXT-X-MEDIA-SEQUENCE:{sequence}"]
    lines += [f"#EXTINF:{TARGET}.0,\nseg{n}.ts" for n in range(sequence, sequence + 3)]
    return ("\n".join(lines) + "\n").encode()


class TimedOrigin(Upstream):
    """Notes when each request for `path` starts and ends."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.spans: list[tuple[float, float]] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        start = time.monotonic()
        await super().__call__(scope, receive, send)
        if scope["type"] == "http" and scope["path"] == self.path:
            self.spans.append((start, time.monotonic()))


def test_a_live_playlist_polled_by_50_clients(settings: Settings, make_server,  # type: ignore[no-untyped-def]
                                              capsys: pytest.CaptureFixture[str]) -> None:
    origin = TimedOrigin("/live/index.m3u8")
    published: dict[int, float] = {}
    stop = threading.Event()

    def publisher() -> None:
        sequence = 0
        while not stop.is_set():
            origin.objects[f"/live/seg{sequence + 2}.ts"] = Obj(b"segment %d" % (sequence + 2),
                                                                 headers={"content-type": "video/mp2t"})
            origin.objects["/live/index.m3u8"] = Obj(live_playlist(sequence), last_modified=int(time.time()),
                                                     headers={"content-type": "application/vnd.apple.mpegurl"})
            published[sequence] = time.monotonic()
            sequence += 1
            stop.wait(TARGET)

    async def poll(client: httpx.AsyncClient, seen: list[tuple[float, int]]) -> None:
        end = time.monotonic() + RUN
        while time.monotonic() < end:
            sent = time.monotonic()
            r = await client.get("/live/index.m3u8")
            assert r.status_code == 200 and r.content.startswith(b"#EXTM3U\n")
            sequence = re.search(rb"#EXT-X-MEDIA-SEQUENCE:(\d+)", r.content)
            assert sequence is not None
            seen.append((sent, int(sequence[1])))
            await asyncio.sleep(POLL)

    async def pollers(url: str) -> list[tuple[float, int]]:
        seen: list[tuple[float, int]] = []
        limits = httpx.Limits(max_connections=POLLERS)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
            await asyncio.gather(*(poll(client, seen) for _ in range(POLLERS)))
        return seen

    for n in (0, 1):
        origin.objects[f"/live/seg{n}.ts"] = Obj(b"segment %d" % n, headers={"content-type": "video/mp2t"})
    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    try:
        with RunningServer(dataclasses.replace(settings, server_name=""), app=origin) as o:
            edge = make_server(settings, origin=o.url, prefetch_segments=3)
            seen = asyncio.run(pollers(edge.url))
    finally:
        stop.set()
        thread.join()
    # Never older than a target duration: when a request was sent, the playlist that followed
    # the one its answer carries was not published more than TARGET seconds before. (From the
    # moment it was sent, not received: 50 pollers in one process on a loaded machine may read
    # an answer late, and that wait is theirs, not the edge's; an edge that refreshes late still
    # fails, its copy aging by a second a second.)
    late = [(at - published[n + 1], n) for at, n in seen if n + 1 in published and published[n + 1] < at]
    assert all(age <= TARGET for age, _ in late), max(late)
    # One origin request per refresh: never two at a time, at most one per second (half the
    # target duration), however many clients.
    spans = sorted(origin.spans)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans
    assert len(spans) <= RUN / (TARGET / 2) + 2
    # Each version served started the fill of the segments its players ask for first (RFC 8216
    # section 6.3.3: from three target durations before the end): each asked of the origin once.
    served = {n for _, n in seen}
    assert [len(origin.gets(f"/live/seg{n}.ts")) for n in range(min(served), max(served) + 3)] == \
        [1] * (max(served) + 3 - min(served))
    with capsys.disabled():
        print(f"\nlive playlist: {len(seen)} client requests from {POLLERS} clients in {RUN:.0f} s, "
              f"{len(spans)} origin requests ({sum(h.status == 304 for h in origin.hits)} of them 304s); "
              f"oldest served: {max((age for age, _ in late), default=0.0):.2f} s past its successor")


# --- the prefetch's rules in the driver ---------------------------------------------------------

def vod(name: str, count: int, no_store: int | None = None) -> dict[str, Obj]:
    """A VOD playlist /<name>/index.m3u8 of `count` one-second MPEG-TS segments (`no_store`: one
    the origin says not to store)."""
    body = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-PLAYLIST-TYPE:VOD\n"
    body += "".join(f"#EXTINF:1,\ns{i}.ts\n" for i in range(count)) + "#EXT-X-ENDLIST\n"
    objects = {f"/{name}/index.m3u8": Obj(body.encode(), headers={"content-type": "application/vnd.apple.mpegurl"})}
    for i in range(count):
        headers = {"content-type": "video/mp2t", **({"cache-control": "no-store"} if i == no_store else {})}
        objects[f"/{name}/s{i}.ts"] = Obj(f"segment {i} of {name}".encode() * 50, headers=headers)
    return objects


def settle(origin: Upstream) -> None:
    """Wait until the origin has been asked nothing new for a moment (the prefetches are done)."""
    count = -1
    while count != len(origin.hits):
        count = len(origin.hits)
        time.sleep(0.3)


def test_prefetch_follows_the_player_and_what_the_cache_stores(upstream, http_settings: Settings,  # type: ignore[no-untyped-def]
                                                               make_server) -> None:
    origin, _ = upstream
    origin.objects.update(vod("v", 30, no_store=21))
    edge = make_server(http_settings, prefetch_segments=3)
    with httpx.Client(base_url=edge.url) as client:
        assert client.get("/v/s21.ts").headers["x-cache"] == "MISS"  # not to be stored: remembered so
        uncacheable = len(origin.gets("/v/s21.ts"))
        assert client.get("/v/index.m3u8").headers["x-cache"] == "MISS"
        settle(origin)
        assert sorted(p for p in Counter(h.path for h in origin.hits) if p.endswith(".ts")) == [
            "/v/s0.ts", "/v/s1.ts", "/v/s2.ts", "/v/s21.ts"]  # where the player starts
        assert client.get("/v/s0.ts").headers["x-cache"] == "HIT"
        settle(origin)
        assert len(origin.gets("/v/s3.ts")) == 1  # one more, the window moved
        # A seek: from the new position; the segment not to be stored is never fetched ahead.
        assert client.get("/v/s20.ts").headers["x-cache"] == "MISS"
        settle(origin)
        for i in range(4, 20):
            assert origin.gets(f"/v/s{i}.ts") == []
        assert [len(origin.gets(f"/v/s{i}.ts")) for i in (21, 22, 23)] == [uncacheable, 1, 1]
        assert client.get("/v/s22.ts").headers["x-cache"] == "HIT"
    # A bad manifest is relayed as it is, never a 500, with the prefetch on.
    origin.objects["/bad/index.m3u8"] = Obj(b"#EXTM3U\n#EXTINF:x\nnot a playlist\n")
    origin.objects["/bad/a.mpd"] = Obj(b'<!DOCTYPE MPD [<!ENTITY a "b">]><MPD/>')
    for path, body in (("/bad/index.m3u8", b"#EXTM3U\n#EXTINF:x\nnot a playlist\n"),
                       ("/bad/a.mpd", b'<!DOCTYPE MPD [<!ENTITY a "b">]><MPD/>')):
        for cache in ("MISS", "HIT"):
            r = httpx.get(edge.url + path)
            assert (r.status_code, r.content, r.headers["x-cache"]) == (200, body, cache)


class Reads:
    """A stand-in for the read path's internal GETs: each is held until the test finishes it."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    async def read(self, target: Target, headers: object) -> Reply:
        self.started.append(target.raw)
        gate = self.gates[target.raw] = asyncio.Event()
        await gate.wait()
        return Reply(200, [("Cache-Status", "edgecache; hit")], None, nothing_to_close)

    def finish(self, raw: str) -> None:
        self.gates[raw].set()


class Tasks:
    """The prefetch's background tasks, to wait for its plans (its fills are held by Reads)."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task

    async def settled(self) -> None:
        while pending := [t for t in self.tasks if not t.done() and t.get_coro().__name__ != "_fill"]:  # type: ignore[union-attr]
            await asyncio.wait(pending)
        for _ in range(10):  # the fills just let through finish
            await asyncio.sleep(0)


def segment(raw: str) -> tuple[Target, CachedObject]:
    """A segment's target, and what the cache stores of it (as the prefetch sees it served)."""
    return Target(raw[1:], raw), CachedObject(
        status=200, headers=[("Content-Type", "video/mp2t")], request_time=0.0, response_time=0.0,
        key=meta_key(raw, ""), size=10, block_size=10, validator="r:s", sliceable=False)


def stored_playlist(store: Store, raw: str, body: bytes) -> CachedObject:
    """A VOD playlist stored as the read path stores one: its body in one block, then its metadata."""
    obj = CachedObject(status=200, headers=[], request_time=0.0, response_time=0.0, key=meta_key(raw, ""),
                       size=len(body), block_size=len(body), validator=f"r:{raw}", sliceable=False,
                       changes=Changes(None))
    fd, part = store.new_part()
    os.write(fd, body)
    os.close(fd)
    store.publish_block(obj.block_key(0), part, len(body))
    assert store.put_meta(raw, obj.key, obj, (), store.generation(raw))
    return obj


@pytest.mark.anyio
async def test_a_worker_that_did_not_serve_the_manifest_finds_it(tmp_path: Path) -> None:
    stores = [Store(str(tmp_path), 64 * 1024**2) for _ in range(2)]  # two workers' stores of one directory
    threads = StoreThreads(2)
    reads, tasks = [Reads(), Reads()], Tasks()
    one, other = (SegmentPrefetch(2, 8, store, threads, Entries(store, threads), lambda t: t.raw, True, False,
                                  read.read, tasks.spawn) for store, read in zip(stores, reads, strict=True))
    try:
        raw = "/w/index.m3u8"
        body = vod("w", 10)[raw].body
        obj = stored_playlist(stores[0], raw, body)
        seek, seeked = segment("/w/s4.ts")
        other.served(seek, lambda: [], seeked)  # before any worker served the playlist: nothing to go by
        await tasks.settled()
        assert reads[1].started == []
        one.served(Target(raw[1:], raw), lambda: [], obj, read_manifest(body, MANIFEST_BASE + raw))
        await tasks.settled()
        assert reads[0].started == ["/w/s0.ts", "/w/s1.ts"]
        other.served(seek, lambda: [], seeked)  # the listings moved: read again, the playlist read from the store
        await tasks.settled()
        assert reads[1].started == ["/w/s5.ts", "/w/s6.ts"]
        for read in reads:
            for gate in read.gates.values():
                gate.set()
        await tasks.settled()
        assert one.fills == other.fills == 0
    finally:
        threads.close()
        for store in stores:
            store.close()


@pytest.mark.anyio
async def test_prefetch_is_bounded_per_rendition_and_in_all(tmp_path: Path) -> None:
    store = Store(str(tmp_path), 64 * 1024**2)
    threads = StoreThreads(2)
    reads, tasks = Reads(), Tasks()
    prefetch = SegmentPrefetch(3, 4, store, threads, Entries(store, threads), lambda t: t.raw, True, False,
                               reads.read, tasks.spawn)
    try:
        playlists = {}
        for name in ("a", "b"):
            raw = f"/{name}/index.m3u8"
            body = vod(name, 10)[raw].body
            obj = stored_playlist(store, raw, body)
            playlists[name] = (Target(raw[1:], raw), obj, read_manifest(body, MANIFEST_BASE + raw))
        target, obj, parsed = playlists["a"]
        prefetch.served(target, lambda: [], obj, parsed)
        await tasks.settled()
        assert reads.started == ["/a/s0.ts", "/a/s1.ts", "/a/s2.ts"]  # at most 3 per rendition
        target, obj, parsed = playlists["b"]
        prefetch.served(target, lambda: [], obj, parsed)
        await tasks.settled()
        assert reads.started[3:] == ["/b/s0.ts"] and prefetch.fills == 4  # at most 4 in all

        seek, seeked = segment("/a/s5.ts")
        prefetch.served(seek, lambda: [], seeked)  # a seek: nothing more while the caps are reached
        await tasks.settled()
        assert len(reads.started) == 4
        for raw in ("/a/s0.ts", "/b/s0.ts"):
            reads.finish(raw)
        await tasks.settled()
        assert prefetch.fills == 2
        prefetch.served(seek, lambda: [], seeked)  # from the new position, within the rendition's cap
        await tasks.settled()
        assert reads.started[4:] == ["/a/s6.ts"]
        for raw in ("/a/s1.ts", "/a/s2.ts", "/a/s6.ts"):
            reads.finish(raw)
        await tasks.settled()
        prefetch.served(seek, lambda: [], seeked)  # what was filled is not asked for again
        await tasks.settled()
        assert reads.started[5:] == ["/a/s7.ts", "/a/s8.ts"]
        for raw in ("/a/s7.ts", "/a/s8.ts"):
            reads.finish(raw)
        await tasks.settled()
        assert prefetch.fills == 0
    finally:
        threads.close()
        store.close()
