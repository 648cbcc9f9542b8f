"""Resources stay bounded: a client that goes away leaves no part file, lease or descriptor
behind, and open files do not grow with the number of requests or keys."""
from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from pathlib import Path

import httpx
import pytest

from proxy.store.disk import Store
from tests.conftest import pattern
from tests.upstream import Obj

pytestmark = pytest.mark.anyio

BODY = pattern(4 * 256 * 1024 + 5, 3)


def non_socket_fds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not stat.S_ISSOCK(os.stat(f"/proc/self/fd/{name}").st_mode):
                count += 1
        except FileNotFoundError:
            pass
    return count


async def wait_until(check, seconds: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def test_clients_that_go_away_mid_body_leave_nothing_behind(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.chunk_delay = 0.02
    origin.chunk_size = 16 * 1024
    for i in range(4):
        origin.objects[f"/o{i}"] = Obj(BODY, {"cache-control": "max-age=600"})
        chunked = Obj(BODY, {"cache-control": "max-age=600"}, etag="", last_modified=None)
        chunked.etag, chunked.chunked = None, True
        origin.objects[f"/c{i}"] = chunked
    edge = make_server(http_settings)
    for path in [*(f"/o{i}" for i in range(4)), *(f"/c{i}" for i in range(4))]:
        with socket.create_connection(("127.0.0.1", edge.port)) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            s.recv(30_000)  # headers and the start of the body, then gone
    cache = Path(http_settings.cache_dir)
    assert await wait_until(lambda: not os.listdir(cache / "parts"))
    store = Store(str(cache), http_settings.cache_size_limit)
    try:
        assert await wait_until(lambda: not list(store.leases.iterkeys()))
    finally:
        store.close()
    async with httpx.AsyncClient(base_url=edge.url) as c:  # and what was stored is whole
        for i in range(4):
            assert (await c.get(f"/o{i}")).content == BODY
            assert (await c.get(f"/c{i}")).content == BODY


async def test_open_files_do_not_grow_with_requests_or_keys(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    for i in range(120):
        origin.objects[f"/k{i}"] = Obj(pattern(1000 + i, i), {"cache-control": "max-age=600"})
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url, limits=httpx.Limits(max_connections=16)) as c:
        await asyncio.gather(*(c.get(f"/k{i}") for i in range(10)))
        before = non_socket_fds()
        for _ in range(3):
            answers = await asyncio.gather(*(c.get(f"/k{i}", headers={"Range": "bytes=10-99"}) for i in range(120)))
            assert all(a.status_code == 206 and a.content == pattern(1000 + i, i)[10:100]
                       for i, a in enumerate(answers))
    after = non_socket_fds()
    # At most: the 64 block files kept open for hits, and the store threads' SQLite files.
    assert after - before <= 64 + 36, (before, after)


async def test_hits_on_open_block_files_close_every_descriptor_they_take(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    big = pattern(300 * 1024, 7)  # above the size kept in memory: hits are spans of an open block file
    origin.objects["/big"] = Obj(big, {"cache-control": "max-age=600"})
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url, limits=httpx.Limits(max_connections=8)) as c:
        assert (await c.get("/big")).content == big
        before = None
        for round_ in range(6):
            if round_ == 1:  # after one round: the store threads have opened their SQLite files
                before = non_socket_fds()
            firsts = [(round_ * 40 + i) * 997 % (len(big) - 5000) for i in range(40)]
            answers = await asyncio.gather(*(c.get("/big", headers={"Range": f"bytes={f}-{f + 4999}"})
                                             for f in firsts))
            for first, answer in zip(firsts, answers, strict=True):
                assert answer.status_code == 206 and answer.content == big[first:first + 5000]
            assert (await c.get("/big")).content == big
    assert before is not None and non_socket_fds() - before <= 2, (before, non_socket_fds())
