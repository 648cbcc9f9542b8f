"""The size limit is a limit on disk: what `du` reports for the cache directory (blocks by their
allocated size, metadata, indexes, WAL files, the policy's state, folders) stays within
`cache_size_limit`, with many small objects and with few large ones, while traffic goes on."""
from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.store import footprint
from proxy.store.disk import Store
from proxy.store.keeper import TICK
from proxy.store.objects import CachedObject, meta_key
from tests.edge_process import EdgeProcess

KiB, MiB = 1024, 1024**2
LIMIT = 64 * MiB


@pytest.mark.parametrize(("size", "unit", "expected"), [(0, 4096, 0), (1, 4096, 4096), (4096, 4096, 4096),
                                                        (8193, 4096, 12288), (100, 512, 512)])
def test_a_file_takes_whole_allocation_units(size: int, unit: int, expected: int) -> None:
    assert footprint.allocated(size, unit) == expected


def test_what_a_block_and_an_object_cost() -> None:
    assert footprint.block_cost(100, 4096) == 4096 + footprint.ENTRY_BYTES  # a small block: a whole unit
    assert footprint.block_cost(8192, 4096, on_disk=12288) == 12288 + footprint.ENTRY_BYTES  # as allocated
    assert footprint.object_cost(3 * MiB + 1, 4, 4096) == 3 * MiB + 4096 + 4 * footprint.ENTRY_BYTES


@given(st.integers(0, 2**31), st.integers(0, 2**30), st.integers(0, 2**24))
def test_what_blocks_may_cost_and_the_rest_stay_within_the_limit(others: int, charged: int, parts: int) -> None:
    room = footprint.room(LIMIT, others, parts, charged)
    if room > LIMIT * footprint.LEAST:  # else the rest alone is over the limit: the blocks keep a least share
        # blocks costing `room` (their rows charged in it) + the rest uncharged + fills under way + the slack
        assert room + max(0, others - charged) + parts + int(LIMIT * footprint.SLACK) == LIMIT


@given(st.integers(LIMIT // 16, LIMIT), st.integers(LIMIT // 16, LIMIT))
def test_the_policy_is_resized_when_the_room_moves_by_more_than_a_quarter_slack(current: int, room: int) -> None:
    fitted = footprint.fit(current, room, LIMIT)
    tolerance = LIMIT * footprint.SLACK / 4
    assert fitted == (current if abs(room - current) <= tolerance else room)
    assert fitted <= room + tolerance  # what is kept and the rest within the limit but 3/4 of the slack


def test_the_measure_is_what_du_counts_but_the_blocks(tmp_path: Path) -> None:
    (tmp_path / "objects" / "ab").mkdir(parents=True)
    (tmp_path / "objects" / "ab" / "x.val").write_bytes(b"x" * 10_000)  # a block file: the policy's to count
    (tmp_path / "objects" / "cache.db").write_bytes(b"d" * 5000)
    (tmp_path / "objects" / "cache.db-wal").write_bytes(b"w" * 4 * footprint.WAL_BYTES)  # beyond its reserve
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "p.part").write_bytes(b"p" * 3000)
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "state").write_bytes(b"s" * 100)
    others = footprint.measure(str(tmp_path), str(tmp_path / "objects"), str(tmp_path / "parts"))
    du = int(subprocess.run(["du", "-s", "-B1", str(tmp_path)], capture_output=True, text=True).stdout.split()[0])
    block = (tmp_path / "objects" / "ab" / "x.val").stat().st_blocks * 512
    part = (tmp_path / "parts" / "p.part").stat().st_blocks * 512
    assert others - footprint.WAL_RESERVE + footprint.WAL_BYTES + part + block == du
    fill = {str(tmp_path / "parts" / "p.part")}
    assert footprint.filling(str(tmp_path / "parts"), fill, 1 * MiB) == 1 * MiB  # a fill's part will take a block
    assert footprint.filling(str(tmp_path / "parts"), fill, 1000) == part  # or what it takes already
    assert footprint.filling(str(tmp_path / "parts"), set(), 1 * MiB) == part  # a body written whole: what it takes


def test_a_fills_part_is_reserved_a_block_and_a_body_written_whole_what_it_takes(tmp_path: Path) -> None:
    store = Store(str(tmp_path), LIMIT, block_size=MiB)
    try:
        paths = []
        for size in (100, 10_000):
            fd, path = store.new_part()
            os.write(fd, b"x" * size)
            os.close(fd)
            paths.append(path)
        fill_part, whole = (os.stat(path).st_blocks * 512 for path in paths)
        assert store.filling() == fill_part + whole
        assert store.take_lease("f|b|x|0", paths[0], 6.0)  # a fill's part (its lease names it)
        assert store.filling() == footprint.block_cost(MiB, store.unit) + whole
    finally:
        store.close()


# --- through a real server ---------------------------------------------------------------------
def _du(path: Path) -> int:
    """What `du -s --block-size=1` prints for the directory."""
    done = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def _allocated(path: Path) -> int:
    """The allocated bytes of the directory, its folders and every file in it (st_blocks is in
    512-byte units): what `du` counts (checked at rest), without a process per sample."""
    total = 0
    for folder, _, names in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in names)]:
            try:
                total += os.lstat(name).st_blocks * 512
            except FileNotFoundError:  # removed meanwhile
                pass
    return total


class _Sampler:
    """The directory's allocated size every 0.1 s while traffic goes on: the largest seen."""

    def __init__(self, path: Path) -> None:
        self.path, self.largest = path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.largest = max(self.largest, _allocated(self.path))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.largest = max(self.largest, _allocated(self.path))
        return self.largest


def _within(largest: int, cache: Path, block: int) -> None:
    """Within the limit plus its documented margin (footprint.MARGIN_BLOCKS blocks per worker) while
    traffic went on; within the limit at rest, once the keeper's next round has run, as `du` says."""
    assert largest <= LIMIT + 2 * footprint.MARGIN_BLOCKS * block, f"{largest / MiB:.2f} MiB on disk"
    time.sleep(2 * TICK)
    at_rest = _allocated(cache)
    assert at_rest == _du(cache) and at_rest <= LIMIT, f"{at_rest / MiB:.2f} MiB on disk at rest"


async def _get_all(url: str, paths: list[str], contents: dict[str, bytes], concurrency: int = 16) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def worker() -> None:
            while not queue.empty():
                path = queue.get_nowait()
                answer = await client.get(path)
                assert answer.status_code == 200 and answer.content == contents[path], path
        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _edge(tmp_path: Path, block: str) -> EdgeProcess:
    env = {"EDGECACHE_WORKERS": "2", "EDGECACHE_CACHE_SIZE_LIMIT": str(LIMIT), "EDGECACHE_BLOCK_SIZE": block,
           "EDGECACHE_MAX_OBJECT_SIZE": "16MiB"}
    return EdgeProcess(tmp_path, "--origin", str(tmp_path / "assets"), "--cache-dir", str(tmp_path / "cache"), env=env)


def test_many_small_objects_stay_within_the_limit_on_disk(tmp_path: Path) -> None:
    """A cache filled past its limit with 16 KiB objects (as a running edge stores them; that many
    requests would take minutes here), then more of them through the edge: `du` of the directory
    never goes over the limit, and the cache is used (not emptied to stay within it)."""
    store = Store(str(tmp_path / "cache"), LIMIT, block_size=64 * KiB)
    for n in range(4500):  # 70 MiB of data, and their rows
        primary = f"/stored/{n}.bin"
        obj = CachedObject(status=200, headers=[("etag", f'"{n}"')], request_time=1.0, response_time=1.0,
                           key=meta_key(primary, ""), size=16 * KiB, block_size=64 * KiB, validator=f'"{n}"',
                           sliceable=True)
        assert store.put_meta(primary, obj.key, obj, (), 0)
        fd, path = store.new_part()
        os.write(fd, os.urandom(16 * KiB))
        os.close(fd)
        store.publish_block(obj.block_key(0), path, 16 * KiB)
    store.close()
    assert _du(tmp_path / "cache") <= LIMIT
    (tmp_path / "assets").mkdir()
    contents = {f"/{n}.bin": os.urandom(16 * KiB) for n in range(600)}
    for path, data in contents.items():
        (tmp_path / "assets" / path[1:]).write_bytes(data)
    with _edge(tmp_path, "64KiB") as edge:
        sampler = _Sampler(tmp_path / "cache")
        asyncio.run(_get_all(edge.url, list(contents), contents))
        _within(sampler.stop(), tmp_path / "cache", 16 * KiB)
        assert _du(tmp_path / "cache") >= 0.8 * LIMIT
        assert httpx.get(edge.url + "/599.bin").headers["x-cache"] == "HIT"


def test_few_large_objects_stay_within_the_limit_on_disk(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    contents = {f"/{n}.bin": os.urandom(12 * MiB) for n in range(10)}  # 120 MiB through a 64 MiB cache
    for path, data in contents.items():
        (tmp_path / "assets" / path[1:]).write_bytes(data)
    with _edge(tmp_path, "1MiB") as edge:
        sampler = _Sampler(tmp_path / "cache")
        asyncio.run(_get_all(edge.url, [*contents, *contents], contents, concurrency=4))
        _within(sampler.stop(), tmp_path / "cache", MiB)
        assert _du(tmp_path / "cache") >= 0.7 * LIMIT
