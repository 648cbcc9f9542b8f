"""Read-ahead: sequential reads of a video fill the next blocks in the background, at most N at a time."""
from __future__ import annotations

import asyncio
import dataclasses
import re
import time

import httpx
import pytest

from proxy.cache.fills import Progress
from proxy.cache.readahead import ReadAhead
from proxy.origins.base import Target
from proxy.store.objects import CachedObject
from tests.conftest import pattern
from tests.upstream import Obj

BLOCK = 64 * 1024


def video(blocks: int = 10, content_type: str = "video/mp4", sliceable: bool = True) -> CachedObject:
    return CachedObject(status=200, headers=[("Content-Type", content_type)], request_time=0.0, response_time=0.0,
                        key="m|-|/v.mp4", size=blocks * BLOCK - 7, block_size=BLOCK, validator='"v1"',
                        sliceable=sliceable)


class Fills:
    """A stand-in for BlockSource.prefetch: each fill runs until the test finishes it."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.running: dict[int, Progress] = {}
        self.most = 0

    async def prefetch(self, obj: CachedObject, target: Target, headers: object, index: int) -> Progress:
        progress = Progress(f"b{index}", "lease", "path", -1, BLOCK)
        self.started.append(index)
        self.running[index] = progress
        self.most = max(self.most, len(self.running))
        return progress

    def finish(self, index: int) -> None:
        self.running.pop(index).finish()


TARGET = Target("v.mp4", "/v.mp4")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_sequential_reads_fill_the_next_blocks_at_most_n_at_a_time() -> None:
    fills = Fills()
    ahead = ReadAhead(2, fills.prefetch, asyncio.get_running_loop().create_task)
    obj = video()
    ahead.served(obj, TARGET, lambda: [], 0)
    await settle()
    assert fills.started == []  # one block is no sequence yet
    ahead.served(obj, TARGET, lambda: [], 1)
    await settle()
    assert fills.started == [2, 3] and ahead.in_flight() == 2
    for index in (2, 3, 4):  # the reader catches up while blocks 2 and 3 are still being filled
        ahead.served(obj, TARGET, lambda: [], index)
        await settle()
    assert fills.started == [2, 3] and fills.most == 2
    fills.finish(2)
    await settle()
    ahead.served(obj, TARGET, lambda: [], 4)  # block 4 again: one fill ended, so one more starts
    await settle()
    assert fills.started == [2, 3, 5] and fills.most == 2
    for index in (3, 5):
        fills.finish(index)
    await settle()
    ahead.served(obj, TARGET, lambda: [], 5)
    await settle()
    assert fills.started == [2, 3, 5, 6, 7]  # blocks known to be filled are not asked for again
    for index in (6, 7):
        fills.finish(index)
    await settle()
    ahead.served(obj, TARGET, lambda: [], 8)
    ahead.served(obj, TARGET, lambda: [], 9)  # the last block: nothing past the end
    await settle()
    assert fills.started == [2, 3, 5, 6, 7] and ahead.in_flight() == 0


@pytest.mark.anyio
async def test_seeks_other_files_and_off_start_nothing() -> None:
    fills = Fills()
    spawn = asyncio.get_running_loop().create_task
    ahead = ReadAhead(3, fills.prefetch, spawn)
    obj = video()
    for index in (7, 2, 5, 0, 9):  # a player seeking about
        ahead.served(obj, TARGET, lambda: [], index)
    for other in (video(content_type="application/octet-stream"), video(sliceable=False)):
        ahead.served(other, TARGET, lambda: [], 0)
        ahead.served(other, TARGET, lambda: [], 1)
    off = ReadAhead(0, fills.prefetch, spawn)
    off.served(obj, TARGET, lambda: [], 3)
    off.served(obj, TARGET, lambda: [], 4)
    await settle()
    assert fills.started == [] and ahead.in_flight() == 0
    ahead.served(obj, TARGET, lambda: [], 6)  # after block 5: sequential again
    await settle()
    assert fills.started == [7, 8, 9]


def fetched(origin) -> list[int]:  # type: ignore[no-untyped-def]
    """The blocks of /film.mp4 the origin was asked for, in block order."""
    ranges = [re.fullmatch(r"bytes=(\d+)-\d+", h.headers.get("range", "")) for h in origin.gets("/film.mp4")]
    return sorted(int(m.group(1)) // BLOCK for m in ranges if m is not None)


def test_reading_a_video_in_order_fills_the_next_block_before_it_is_asked_for(
        upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    body = pattern(10 * BLOCK)
    origin.objects["/film.mp4"] = Obj(body)
    edge = make_server(dataclasses.replace(http_settings, block_size=BLOCK, read_ahead_blocks=1))
    ahead = edge.server.config.app.state.service.reads.blocks.read_ahead
    with httpx.Client(base_url=edge.url) as client:

        def read(index: int) -> httpx.Response:
            r = client.get("/film.mp4", headers={"Range": f"bytes={index * BLOCK}-{index * BLOCK + BLOCK - 1}"})
            assert r.status_code == 206 and r.content == body[index * BLOCK:(index + 1) * BLOCK]
            return r

        def settled(blocks: list[int]) -> None:
            """Wait until the origin was asked for exactly `blocks` and no read-ahead is running."""
            deadline = time.monotonic() + 10
            while fetched(origin) != blocks or ahead.in_flight():
                assert time.monotonic() < deadline, fetched(origin)
                time.sleep(0.01)

        read(0)
        read(1)  # block 1 right after block 0: block 2 is filled without a client asking
        settled([0, 1, 2])
        assert read(2).headers["x-cache"] == "HIT"
        settled([0, 1, 2, 3])  # not asked for by the reader of block 2 either
        read(7)  # a seek: nothing is read ahead
        assert ahead.in_flight() == 0
        settled([0, 1, 2, 3, 7])
        read(3)  # already there; and it follows block 2, so block 4 is read ahead
        settled([0, 1, 2, 3, 4, 7])
