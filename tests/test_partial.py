"""An answer that needs blocks the edge has not stored is a miss (RFC 9211: `fwd=partial`), and its
status line goes out only once every block it needs is stored or its fill has the origin's answer:
an origin that cannot give them gets a 502 or 504 that says why, never a 200 cut short."""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from proxy.config import Settings
from tests.conftest import RunningServer, pattern
from tests.edge_process import EdgeProcess
from tests.upstream import Obj, Upstream

BLOCK = 256 * 1024
MOVIE = pattern(8 * BLOCK + 1000, seed=21)


@pytest.fixture
def origin(settings: Settings) -> Upstream:  # type: ignore[misc]
    upstream = Upstream()
    upstream.objects["/movie.mp4"] = Obj(MOVIE, {"cache-control": "max-age=600"})
    return upstream


def _edge_settings(settings: Settings, origin_url: str) -> Settings:
    return dataclasses.replace(settings, origin=origin_url, block_size=BLOCK, cache_size_limit=64 * 1024**2,
                               max_object_size=32 * 1024**2, origin_response_timeout=3.0)


def test_a_block_from_the_origin_makes_the_answer_a_miss(settings: Settings, origin: Upstream,
                                                         make_server) -> None:  # type: ignore[no-untyped-def]
    with RunningServer(dataclasses.replace(settings, server_name=""), app=origin) as o:
        edge = make_server(_edge_settings(settings, o.url))
        before = _counts(edge.url)  # the process's counters: other servers of this process count there too
        first = httpx.get(edge.url + "/movie.mp4", headers={"Range": "bytes=0-99"})
        assert (first.status_code, first.content, first.headers["x-cache"]) == (206, MOVIE[:100], "MISS")
        cold = httpx.get(edge.url + "/movie.mp4", headers={"Range": "bytes=1300000-1300099"})  # block 4: cold
        assert (cold.status_code, cold.content) == (206, MOVIE[1300000:1300100])
        assert cold.headers["cache-status"] == "edgecache; fwd=partial; fwd-status=206"
        assert cold.headers["x-cache"] == "MISS"
        assert [h.headers["range"] for h in origin.gets("/movie.mp4")][-1] == f"bytes={4 * BLOCK}-{5 * BLOCK - 1}"
        again = httpx.get(edge.url + "/movie.mp4", headers={"Range": "bytes=1300000-1300099"})
        assert again.headers["x-cache"] == "HIT" and again.headers["cache-status"].startswith("edgecache; hit")
        after = _counts(edge.url)
        assert after["miss"] - before["miss"] == 2 and after["hit"] - before["hit"] == 1


def _counts(url: str) -> dict[str, float]:
    """The edge's 206 answers so far, by cache status."""
    text = httpx.get(url + "/_edge/metrics").text
    found = {m.group(1): float(m.group(2))
             for m in re.finditer(r'^edgecache_requests_total\{cache="(\w+)",status="206"\} (\S+)$', text, re.M)}
    return {"hit": found.get("hit", 0.0), "miss": found.get("miss", 0.0)}


@pytest.mark.parametrize("ask", [None, "bytes=0-", "bytes=-100", "bytes=0-9,2000000-2000009"],
                         ids=["whole", "open-range", "tail", "multipart"])
def test_an_origin_that_cannot_give_a_missing_block_gets_an_answer_that_says_so(
    settings: Settings, origin: Upstream, make_server, ask: str | None  # type: ignore[no-untyped-def]
) -> None:
    with RunningServer(dataclasses.replace(settings, server_name=""), app=origin) as o:
        edge = make_server(_edge_settings(settings, o.url))
        assert httpx.get(edge.url + "/movie.mp4", headers={"Range": "bytes=0-99"}).status_code == 206
    # the origin is gone: block 0 and the metadata are stored, the rest is not
    answer = httpx.get(edge.url + "/movie.mp4", headers={"Range": ask} if ask else {}, timeout=30)
    assert answer.status_code == 502
    assert answer.text == "Bad Gateway: the origin could not be reached\n"
    assert answer.headers["x-cache"] == "MISS"
    stored = httpx.get(edge.url + "/movie.mp4", headers={"Range": "bytes=0-99"})  # what is stored still serves
    assert (stored.status_code, stored.content, stored.headers["x-cache"]) == (206, MOVIE[:100], "HIT")


def test_a_fill_killed_with_the_edge_and_an_origin_down_never_yields_a_200_cut_short(
    tmp_path: Path, settings: Settings, origin: Upstream
) -> None:
    origin.chunk_delay = 0.02  # a slow origin: the fill is under way when the edge is killed
    origin.chunk_size = 16 * 1024
    cache = tmp_path / "edge-cache"
    env = {"EDGECACHE_BLOCK_SIZE": str(BLOCK), "EDGECACHE_CACHE_SIZE_LIMIT": "64MiB",
           "EDGECACHE_MAX_OBJECT_SIZE": "32MiB", "EDGECACHE_ORIGIN_RESPONSE_TIMEOUT": "3"}
    with RunningServer(dataclasses.replace(settings, server_name=""), app=origin) as o:
        edge = EdgeProcess(tmp_path, "--origin", o.url, "--cache-dir", str(cache), env=env)
        with edge, httpx.stream("GET", edge.url + "/movie.mp4", timeout=30) as response:
            assert response.status_code == 200
            got = 0
            for chunk in response.iter_bytes():
                got += len(chunk)
                if got >= len(MOVIE) // 2:
                    break
            os.killpg(edge.proc.pid, signal.SIGKILL)  # half way through the fill
            edge.proc.wait(10)
    time.sleep(0.2)
    with EdgeProcess(tmp_path, "--origin", o.url, "--cache-dir", str(cache), env=env) as again:
        for ask in (None, "bytes=-100"):
            answer = httpx.get(again.url + "/movie.mp4", headers={"Range": ask} if ask else {}, timeout=30)
            assert answer.status_code == 502, answer.headers
            assert answer.text == "Bad Gateway: the origin could not be reached\n"
