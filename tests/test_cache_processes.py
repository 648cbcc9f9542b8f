"""The cache across processes: several workers sharing one cache, and kill -9 during a fill."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.conftest import pattern
from tests.upstream import Obj, Upstream

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parent.parent
BLOCK = 256 * 1024
MOVIE = pattern(8 * BLOCK + 999, seed=11)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_edgecache(origin_url: str, cache_dir: Path, workers: int, access_log: bool = False,
                    stdout: IO[bytes] | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "EDGECACHE_BLOCK_SIZE": str(BLOCK), "EDGECACHE_CACHE_SIZE_LIMIT": "64MiB",
           "EDGECACHE_MAX_OBJECT_SIZE": "32MiB", "EDGECACHE_ACCESS_LOG": str(access_log).lower()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--origin", origin_url, "--port", str(port),
         "--workers", str(workers), "--cache-dir", str(cache_dir), "--log-level", "warning"],
        cwd=REPO, env=env, start_new_session=True, stdout=stdout,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/_edge/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "edgecache did not start"
        time.sleep(0.1)
    return proc, url


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    os.killpg(proc.pid, sig)
    proc.wait(timeout=30)


@pytest.fixture
def movie_origin(upstream) -> tuple[Upstream, str]:  # type: ignore[no-untyped-def]
    origin, running = upstream
    origin.objects["/movie.mp4"] = Obj(MOVIE, {"cache-control": "public, max-age=600"})
    return origin, running.url


async def test_two_workers_fetch_each_block_once(movie_origin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    origin, url = movie_origin
    origin.chunk_delay = 0.003
    proc, edge = start_edgecache(url, tmp_path / "cache", workers=2)
    try:
        # 50 connections spread over both workers (each new connection may land on either)
        async def one() -> bytes:
            async with httpx.AsyncClient(base_url=edge, timeout=60) as c:
                return (await c.get("/movie.mp4")).content

        bodies = await asyncio.gather(*(one() for _ in range(50)))
    finally:
        stop(proc)
    assert all(b == MOVIE for b in bodies)
    ranges = [h.headers.get("range") for h in origin.gets("/movie.mp4")]
    assert len(ranges) == len(set(ranges)) == 9, ranges  # one origin request per block, across workers
    assert origin.bytes_sent == len(MOVIE)


async def test_kill_9_during_fill_then_restart_serves_exact_bytes(movie_origin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    origin, url = movie_origin
    origin.chunk_delay = 0.02  # a fill takes about a second
    proc, edge = start_edgecache(url, tmp_path / "cache", workers=1)
    try:
        async with httpx.AsyncClient(base_url=edge, timeout=30) as c:
            async with c.stream("GET", "/movie.mp4") as r:
                got = 0
                async for chunk in r.aiter_raw():
                    got += len(chunk)
                    if got > 3 * BLOCK:
                        os.killpg(proc.pid, signal.SIGKILL)  # mid-fill, blocks half written
                        break
    except httpx.HTTPError:
        pass
    proc.wait(timeout=30)
    origin.chunk_delay = 0
    proc, edge = start_edgecache(url, tmp_path / "cache", workers=1)
    sent_before = origin.bytes_sent
    try:
        r = httpx.get(edge + "/movie.mp4", timeout=30)
        assert r.status_code == 200 and r.content == MOVIE
        # The blocks filled again are stored just after their bytes went to the client: until
        # then a request joins their fills (a collapsed MISS); then it is a HIT. Exact either way.
        for _ in range(100):
            again = httpx.get(edge + "/movie.mp4", timeout=30)
            assert again.content == MOVIE
            if again.headers["x-cache"] == "HIT":
                break
            time.sleep(0.05)
        assert again.headers["x-cache"] == "HIT"
        assert origin.bytes_sent - sent_before <= len(MOVIE)  # no block asked of the origin twice
        for a in (0, BLOCK - 1, 3 * BLOCK + 5, len(MOVIE) - 10):
            part = httpx.get(edge + "/movie.mp4", headers={"Range": f"bytes={a}-{a + 20}"})
            assert part.content == MOVIE[a : a + 21]
    finally:
        stop(proc)
