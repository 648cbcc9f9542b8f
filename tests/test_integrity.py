"""Verified bytes: every stored block carries the checksum of what was written; a block whose file
was damaged (flipped bytes, truncated, replaced by another block's file) is found before its
bytes are served, dropped, counted and filled again from the origin; the scrub finds damage on a
running edge; `edgecache verify` checks a stopped cache."""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import pagecache
from proxy.store import scrub
from proxy.store.checksums import checksum
from proxy.store.disk import FinishedPart, Store
from proxy.store.integrity import Verdict, verdict
from tests.edge_process import EdgeProcess

KiB = 1024
BLOCK = 128 * KiB  # blocks over 64 KiB are kept open and sent with sendfile; smaller ones are read into memory
FILES = {"big.bin": 3 * BLOCK + 16 * KiB, "two.bin": BLOCK + 100 * KiB, "small-a.bin": 8 * KiB,
         "small-b.bin": 8 * KiB, "small-c.bin": 40 * KiB}
RANGES = [None, "bytes=0-99", f"bytes={BLOCK - 10}-{BLOCK + 9}", "bytes=-5000", f"bytes={BLOCK * 2}-"]


# --- what a check means (pure) ---------------------------------------------------------------
@pytest.mark.parametrize(("length", "actual", "recorded", "computed", "expected"), [
    (10, 10, 5, 5, Verdict.SOUND),
    (10, 10, 5, 6, Verdict.CHECKSUM),
    (10, 4, 5, None, Verdict.LENGTH),
    (10, 11, 5, None, Verdict.LENGTH),
    (10, None, 5, None, Verdict.MISSING),
    (10, 10, None, 6, Verdict.UNRECORDED),
    (10, 4, None, None, Verdict.LENGTH),  # a length is wrong whether or not a checksum was recorded
    (0, 0, checksum(b""), checksum(b""), Verdict.SOUND),
])
def test_a_check_judges_the_length_first_then_the_checksum(length: int, actual: int | None, recorded: int | None,
                                                            computed: int | None, expected: Verdict) -> None:
    found = verdict(length, actual, recorded, computed)
    assert found is expected
    assert found.damaged == (expected in (Verdict.CHECKSUM, Verdict.LENGTH, Verdict.MISSING))


@given(st.lists(st.tuples(st.integers(1, 8 * 1024**2), st.floats(0, 2)), min_size=1, max_size=50),
       st.integers(1, 64 * 1024**2))
def test_the_scrub_never_reads_faster_than_its_rate(reads: list[tuple[int, float]], rate: int) -> None:
    """Block by block, reading plus pausing takes at least size / rate: over any stretch of blocks,
    the bytes read divided by the time taken is at most the rate; a slow read is not followed by
    a burst (no pause is negative, and a read slower than its share gets none)."""
    taken = 0.0
    for size, spent in reads:
        wait = scrub.pause(size, spent, rate)
        assert wait >= 0
        assert spent + wait >= size / rate - 1e-9
        if spent >= size / rate:
            assert wait == 0
        taken += spent + wait
    assert sum(size for size, _ in reads) / taken <= rate * (1 + 1e-9)


def test_passes_start_at_least_pass_every_apart() -> None:
    assert scrub.rest(0.0) == scrub.PASS_EVERY
    assert scrub.rest(scrub.PASS_EVERY / 2) == scrub.PASS_EVERY / 2
    assert scrub.rest(scrub.PASS_EVERY * 3) == 0.0


# --- the store ----------------------------------------------------------------------------
def _publish(store: Store, key: str, data: bytes, with_checksum: bool = True) -> None:
    fd, path = store.new_part()
    os.write(fd, data)
    os.close(fd)
    store.publish_block(key, path, len(data), checksum(data) if with_checksum else None)


def _file_of(cache: Path, key: str) -> Path:
    with sqlite3.connect(cache / "objects" / "cache.db") as db:
        (filename,) = db.execute("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchone()
    return cache / "objects" / str(filename)


def _flip(path: Path, at: int, count: int = 64) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        data = f.read(count)
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in data))


KEY = "b|0123456789abcdef0123456789abcdef|0"


@pytest.mark.parametrize("read", ["open", "bytes"])
def test_a_block_damaged_while_stopped_is_dropped_when_first_opened(tmp_path: Path, read: str) -> None:
    data = os.urandom(200 * KiB)
    store = Store(str(tmp_path), 64 * 1024**2)
    _publish(store, KEY, data)
    store.close()
    _flip(_file_of(tmp_path, KEY), len(data) // 2)
    store = Store(str(tmp_path), 64 * 1024**2)  # a restart: nothing checked yet
    got = store.open_block(KEY, len(data)) if read == "open" else store.read_block(KEY, len(data))
    assert got is None and not store.has_block(KEY)
    assert not list((tmp_path / "objects").glob("*/*.val"))  # the file went with its row
    assert store.integrity_figures()["damaged_checksum"] == 1
    store.close()


def test_a_block_written_here_is_not_read_again_to_open_it_but_every_read_into_memory_is_checked(
        tmp_path: Path) -> None:
    data = os.urandom(100 * KiB)
    store = Store(str(tmp_path), 64 * 1024**2)
    _publish(store, KEY, data)
    _flip(_file_of(tmp_path, KEY), 10)
    handle = store.open_block(KEY, len(data))  # checksummed as it was written: opened without a read
    assert handle is not None
    handle.close()
    assert store.read_block(KEY, len(data)) is None  # bytes read into memory are always checked
    assert store.integrity_figures()["damaged_checksum"] == 1
    store.close()


def test_the_scrub_leaves_the_page_cache_as_it_found_it(tmp_path: Path) -> None:
    """A block the scrub had to read from disk leaves memory again; one wholly or partly in memory
    (a hit's pages) keeps what it had."""
    store = Store(str(tmp_path), 64 * 1024**2)
    hot, cold, part = KEY, KEY[:-1] + "1", KEY[:-1] + "2"
    for key in (hot, cold, part):
        _publish(store, key, os.urandom(256 * KiB))
        with open(_file_of(tmp_path, key), "rb") as f:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            if not pagecache.absent(f.fileno(), 0, 256 * KiB):
                pytest.skip("the page cache of this file system cannot be emptied, or mincore(2) is missing")
    with open(_file_of(tmp_path, hot), "rb") as f:
        f.read()  # in memory, as a block being served is
    with open(_file_of(tmp_path, part), "rb") as f:
        os.pread(f.fileno(), 16 * KiB, 0)  # its first pages only (and what the kernel reads ahead)
    assert [store.scrub_block(key, 256 * KiB) for key in (cold, hot, part)] == [256 * KiB] * 3
    for key, offset, count, resident in ((cold, 0, 256 * KiB, False), (hot, 0, 256 * KiB, True),
                                         (part, 0, 16 * KiB, True)):
        with open(_file_of(tmp_path, key), "rb") as f:
            assert pagecache.resident(f.fileno(), offset, count) is resident, key
    with open(_file_of(tmp_path, cold), "rb") as f:
        assert pagecache.absent(f.fileno(), 0, 256 * KiB)
    store.close()


def test_a_truncated_or_missing_block_file_is_dropped(tmp_path: Path) -> None:
    store = Store(str(tmp_path), 64 * 1024**2)
    other = KEY[:-1] + "1"
    _publish(store, KEY, b"a" * 1000)
    _publish(store, other, b"b" * 1000)
    os.truncate(_file_of(tmp_path, KEY), 500)
    os.unlink(_file_of(tmp_path, other))
    assert store.open_block(KEY, 1000) is None and store.read_block(other, 1000) is None
    assert not store.has_block(KEY) and not store.has_block(other)
    figures = store.integrity_figures()
    assert (figures["damaged_length"], figures["damaged_missing"]) == (1, 1)
    store.close()


def test_damage_found_by_two_readers_at_once_is_dropped_and_counted_once(tmp_path: Path) -> None:
    """Two workers (or a read and the scrub) check the same damaged block before either drops it:
    one removes it and counts it, the other finds it gone and counts nothing."""
    data = os.urandom(100 * KiB)
    one = Store(str(tmp_path), 64 * 1024**2)
    _publish(one, KEY, data)
    _flip(_file_of(tmp_path, KEY), 10)
    other = Store(str(tmp_path), 64 * 1024**2)
    found = [store.inspect_block(KEY, len(data)) for store in (one, other)]
    assert [f[0] if f else None for f in found] == [Verdict.CHECKSUM] * 2
    for store, (verdict_found, _, filename) in zip((one, other), found, strict=True):  # type: ignore[misc]
        store.drop_damaged(KEY, filename, verdict_found)
    assert not one.has_block(KEY) and not list((tmp_path / "objects").glob("*/*.val"))
    assert one.integrity_figures()["damaged_checksum"] == other.integrity_figures()["damaged_checksum"] == 1
    other.close()
    one.close()


def test_a_block_stored_before_checksums_gets_one_at_its_first_check(tmp_path: Path) -> None:
    data = os.urandom(4 * KiB)
    store = Store(str(tmp_path), 64 * 1024**2)
    fd, path = store.new_part()
    os.write(fd, data)
    os.close(fd)
    store.objects.set(KEY, FinishedPart(path, len(data)), read=True)  # as an older edgecache stored it: no checksum
    assert store.inspect_block(KEY, len(data))[0] is Verdict.UNRECORDED  # type: ignore[index]
    assert store.read_block(KEY, len(data)) == data
    _flip(_file_of(tmp_path, KEY), 0)
    assert store.inspect_block(KEY, len(data))[0] is Verdict.CHECKSUM  # type: ignore[index]
    store.close()


# --- through the real command line ------------------------------------------------------------
def _origin(tmp_path: Path) -> dict[str, bytes]:
    (tmp_path / "assets").mkdir(exist_ok=True)
    contents = {}
    for name, size in FILES.items():
        contents[name] = os.urandom(size)
        (tmp_path / "assets" / name).write_bytes(contents[name])
    return contents


def _edge(tmp_path: Path, **env: str) -> EdgeProcess:
    settings = {"EDGECACHE_BLOCK_SIZE": str(BLOCK), "EDGECACHE_CACHE_SIZE_LIMIT": "64MiB",
                "EDGECACHE_MAX_OBJECT_SIZE": "16MiB", **env}
    return EdgeProcess(tmp_path, "--origin", str(tmp_path / "assets"), "--cache-dir", str(tmp_path / "cache"),
                       env=settings)


def _expected(data: bytes, byte_range: str | None) -> bytes | None:
    """The bytes a range asks for (None when it starts past the end: a 416)."""
    if byte_range is None:
        return data
    first, _, last = byte_range[6:].partition("-")
    if not first:
        return data[-int(last):]
    return data[int(first): int(last) + 1 if last else None] if int(first) < len(data) else None


def _read_all(edge: EdgeProcess, contents: dict[str, bytes]) -> int:
    """Every file whole and in ranges; how many answers had other bytes than the origin's."""
    wrong = 0
    with httpx.Client(base_url=edge.url) as client:
        for name, data in contents.items():
            for byte_range in RANGES:
                expected = _expected(data, byte_range)
                if expected is None:
                    continue
                answer = client.get("/" + name, headers={"range": byte_range} if byte_range else {})
                assert answer.status_code in (200, 206), answer.text
                wrong += answer.content != expected
    return wrong


def _blocks(cache: Path) -> list[tuple[str, Path, int]]:
    with sqlite3.connect(cache / "objects" / "cache.db") as db:
        rows = db.execute("SELECT key, filename, size FROM Cache WHERE key > 'b|' AND key < 'b}' ORDER BY key")
        return [(key, cache / "objects" / filename, size) for key, filename, size in rows]


def _metric(edge: EdgeProcess, name: str, labels: str = "") -> float:
    text = httpx.get(edge.url + "/_edge/metrics").text
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _damage(case: str, blocks: list[tuple[str, Path, int]]) -> None:
    if case == "flipped":
        for _, path, size in blocks:
            _flip(path, size // 2)
    elif case == "truncated":
        for _, path, size in blocks:
            os.truncate(path, size // 2)
    else:  # each file replaced by the next one's (same size: other bytes; another size: another length)
        saved = [path.read_bytes() for _, path, _ in blocks]
        for (_, path, _), data in zip(blocks, saved[1:] + saved[:1], strict=True):
            path.write_bytes(data)


@pytest.mark.parametrize("case", ["flipped", "truncated", "replaced"])
def test_after_a_restart_no_damaged_block_is_served(tmp_path: Path, case: str) -> None:
    contents = _origin(tmp_path)
    with _edge(tmp_path, EDGECACHE_WORKERS="2") as edge:
        assert _read_all(edge, contents) == 0
        assert edge.stop() == 0
    blocks = _blocks(tmp_path / "cache")
    assert len(blocks) == 4 + 2 + 1 + 1 + 1  # every block was stored
    _damage(case, blocks)
    with _edge(tmp_path, EDGECACHE_WORKERS="2") as edge:
        assert _read_all(edge, contents) == 0
        assert _read_all(edge, contents) == 0  # filled again: hits, exact
        reason = "length" if case == "truncated" else "checksum"
        dropped = sum(_metric(edge, "edgecache_store_damaged_blocks_total", f'{{reason="{r}"}}')
                      for r in ("checksum", "length"))
        assert dropped == len(blocks)  # each found once (the replaced ones: some by length)
        if case != "replaced":
            assert _metric(edge, "edgecache_store_damaged_blocks_total", f'{{reason="{reason}"}}') == len(blocks)
        assert "is damaged" in edge.output()
        hits = httpx.get(edge.url + "/big.bin")
        assert hits.headers["x-cache"] == "HIT" and hits.content == contents["big.bin"]


def test_the_scrub_finds_damage_on_a_running_edge_and_the_block_is_fetched_again(tmp_path: Path) -> None:
    contents = _origin(tmp_path)
    with _edge(tmp_path, EDGECACHE_SCRUB_RATE="64MiB") as edge:
        assert httpx.get(edge.url + "/big.bin").content == contents["big.bin"]
        key, path, size = next(b for b in _blocks(tmp_path / "cache") if b[2] == BLOCK)
        _flip(path, size // 2)
        # A pass over this small cache starts every PASS_EVERY seconds and takes milliseconds.
        deadline = time.monotonic() + 3 * scrub.PASS_EVERY
        while _metric(edge, "edgecache_store_damaged_blocks_total", '{reason="checksum"}') < 1:
            assert time.monotonic() < deadline, "the scrub did not find the damage"
            time.sleep(0.2)
        assert key not in {b[0] for b in _blocks(tmp_path / "cache")}
        assert _metric(edge, "edgecache_scrub_bytes_total") >= FILES["big.bin"]
        answer = httpx.get(edge.url + "/big.bin")
        assert answer.content == contents["big.bin"]


def _verify(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "verify", "--cache-dir", str(tmp_path / "cache"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("EDGECACHE_")})


def test_verify_checks_a_stopped_cache_and_drops_damage_when_asked(tmp_path: Path) -> None:
    contents = _origin(tmp_path)
    with _edge(tmp_path) as edge:
        assert _read_all(edge, contents) == 0
        assert edge.stop() == 0
    clean = _verify(tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert re.fullmatch(r"checked 9 stored blocks, .* in [\d.]+ s: no damage\n", clean.stdout)
    blocks = _blocks(tmp_path / "cache")
    _flip(blocks[0][1], 3)
    os.truncate(blocks[1][1], 1)
    found = _verify(tmp_path)
    assert found.returncode == 1
    assert f"damaged (checksum): block {blocks[0][0]}" in found.stdout
    assert f"damaged (length): block {blocks[1][0]}" in found.stdout
    assert "2 damaged (1 checksum, 1 length), none dropped (--drop drops them)" in found.stdout
    assert len(_blocks(tmp_path / "cache")) == 9  # nothing dropped without --drop
    dropped = _verify(tmp_path, "--drop")
    assert dropped.returncode == 1 and "2 damaged (1 checksum, 1 length), 2 dropped" in dropped.stdout
    after = _verify(tmp_path)
    assert after.returncode == 0 and "checked 7 stored blocks" in after.stdout
    with _edge(tmp_path) as edge:
        assert _read_all(edge, contents) == 0


def test_verify_refuses_what_is_not_a_cache_directory(tmp_path: Path) -> None:
    result = _verify(tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr
