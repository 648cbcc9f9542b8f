"""A damaged store database heals: checked at start (and reported by SQLite at run time), moved
aside and rebuilt from what can be read, or started empty; never left failing every lookup."""
from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from proxy.store import heal
from proxy.store.disk import Store
from proxy.store.heal import Health, Remedy, is_damage, remedy
from proxy.store.objects import CachedObject, meta_key
from tests.edge_process import EdgeProcess

KiB = 1024
LIMIT = 64 * 1024**2


def _error(make: str, tmp_path: Path) -> sqlite3.Error:
    """A real SQLite error of one kind."""
    path = tmp_path / "db"
    if make == "garbage":
        path.write_bytes(os.urandom(8192))
        with contextlib.closing(sqlite3.connect(path)) as db, pytest.raises(sqlite3.DatabaseError) as caught:
            db.execute("SELECT * FROM sqlite_master").fetchall()
        return caught.value
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("CREATE TABLE t (x)")
        if make == "missing table":
            with pytest.raises(sqlite3.OperationalError) as missing:
                db.execute("SELECT * FROM nothing")
            return missing.value
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        with contextlib.closing(other):
            db.execute("BEGIN EXCLUSIVE")
            with pytest.raises(sqlite3.OperationalError) as locked:
                other.execute("INSERT INTO t VALUES (1)")
            db.execute("COMMIT")
        return locked.value


@pytest.mark.parametrize(("make", "damage"), [("garbage", True), ("locked", False), ("missing table", False)])
def test_only_corruption_is_damage(tmp_path: Path, make: str, damage: bool) -> None:
    assert is_damage(_error(make, tmp_path)) is damage


def test_malformed_is_damage() -> None:
    error = sqlite3.DatabaseError("database disk image is malformed")
    error.sqlite_errorcode = 11 | (1 << 8)  # type: ignore[attr-defined]  # an extended code of SQLITE_CORRUPT
    assert is_damage(error)
    assert not is_damage(OSError(28, "No space left on device"))


@pytest.mark.parametrize(("database", "health", "expected"), [
    ("objects", Health.SOUND, Remedy.KEEP),
    ("objects", Health.DAMAGED, Remedy.SALVAGE),
    ("objects", Health.BLANK, Remedy.SWEEP),  # its rows are gone: so go the files only they named
    ("index", Health.DAMAGED, Remedy.REBUILD),
    ("index", Health.BLANK, Remedy.KEEP),
    ("leases", Health.DAMAGED, Remedy.EMPTY),
    ("listings", Health.DAMAGED, Remedy.EMPTY),
    ("journal", Health.DAMAGED, Remedy.EMPTY),
    ("journal", Health.SOUND, Remedy.KEEP),
])
def test_what_each_database_needs(database: str, health: Health, expected: Remedy) -> None:
    assert remedy(database, health) is expected


def test_the_files_no_row_names_are_found_by_a_merge() -> None:
    files = iter(["ab/1.val", "ab/2.val", "ab/cd/3.val", "cd/4.val"])
    named = iter(["ab/0.val", "ab/2.val", "cd/4.val", "zz/9.val"])
    assert list(heal.unnamed(files, named)) == ["ab/1.val", "ab/cd/3.val"]


# --- the store ----------------------------------------------------------------------------
def _stored(store: Store, count: int, size: int = 4 * KiB) -> list[tuple[CachedObject, bytes]]:
    """`count` objects stored as the read path stores them, one block each (two vary)."""
    stored = []
    for n in range(count):
        primary = f"/o{n}.bin"
        varies = n < 2
        headers = [("etag", f'"v{n}"'), ("surrogate-key", f"all n{n}")] + ([("vary", "accept")] if varies else [])
        key = meta_key(primary, "sel" if varies else "")
        obj = CachedObject(status=200, headers=headers, request_time=1.0, response_time=1.0, key=key, size=size,
                           block_size=size, validator=f'"v{n}"', sliceable=True)
        assert store.put_meta(primary, key, obj, ("accept",) if varies else (), 0, (f"n{n}", "all"))
        data = os.urandom(size)
        fd, path = store.new_part()
        os.write(fd, data)
        os.close(fd)
        store.publish_block(obj.block_key(0), path, size)
        stored.append((obj, data))
    return stored


def _damage_file(path: Path, how: str) -> None:
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    size = path.stat().st_size
    if how == "garbage":
        path.write_bytes(os.urandom(size))
    else:
        os.truncate(path, size // 2)


def _checkpointed(store: Store) -> None:
    """Close a store with everything in its databases' main files (as after a long run)."""
    for cache in (store.objects, store.index):
        cache._sql("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


def _files(cache: Path) -> set[str]:
    return {str(p.relative_to(cache / "objects")) for p in (cache / "objects").rglob("*.val")}


def test_a_truncated_objects_database_keeps_what_can_be_read_and_no_file_it_forgot(tmp_path: Path) -> None:
    store = Store(str(tmp_path), LIMIT)
    stored = _stored(store, 400)
    _checkpointed(store)
    _damage_file(tmp_path / "objects" / "cache.db", "truncated")
    store = Store(str(tmp_path), LIMIT)
    with contextlib.closing(store.objects._con.cursor()) as rows:
        named = {f for (f,) in rows.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
    assert _files(tmp_path) == named  # every file left is named; every named file is there
    served = 0
    for obj, data in stored:
        if store.get_meta(obj.key, 0) == obj:
            block = store.read_block(obj.block_key(0), obj.size)
            assert block in (None, data)
            served += block == data
    figures = store.integrity_figures()
    assert figures["rebuilt_objects"] + figures["emptied_objects"] == 1
    assert (served > 0) == (figures["rebuilt_objects"] == 1)
    assert list((tmp_path / "damaged").glob("objects-*.db"))  # kept for a look
    _stored(store, 1)  # the store works
    store.close()


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_damaged_index_is_rebuilt_from_the_metadata(tmp_path: Path, how: str) -> None:
    store = Store(str(tmp_path), LIMIT)
    stored = _stored(store, 50)
    store.purge("/o49.bin")  # a purge leaves a generation: stored entries of it are never answers
    _checkpointed(store)
    _damage_file(tmp_path / "index" / "cache.db", how)
    store = Store(str(tmp_path), LIMIT)
    assert store.integrity_figures()["rebuilt_index"] == 1
    for obj, data in stored[:49]:
        primary = "/" + obj.key.rsplit("|", 1)[1].lstrip("/")
        assert store.get_meta(obj.key, store.generation(primary)) == obj
        assert store.object_of(obj.block_key(0)[:-1]) == (obj.key, obj.size, 1)
        assert store.read_block(obj.block_key(0), obj.size) == data
    index = store.vary_index("/o0.bin")
    assert index is not None and index.fields == ("accept",) and index.selections == (stored[0][0].key,)
    assert sorted(store.purge_tag("all")) == sorted(f"/o{n}.bin" for n in range(49))
    store.close()


@pytest.mark.parametrize("database", ["leases", "listings", "journal"])
def test_a_damaged_database_of_passing_things_starts_empty(tmp_path: Path, database: str) -> None:
    store = Store(str(tmp_path), LIMIT)
    _stored(store, 3)
    store.close()
    _damage_file(tmp_path / heal.FILES[database], "garbage")
    store = Store(str(tmp_path), LIMIT)
    assert store.integrity_figures()[f"emptied_{database}"] == 1
    assert store.take_lease("x", "me", 5) and store.lease_holder("x") == "me"
    store.listings.add(["/v/"], "/v/a.m3u8")
    assert store.listings.manifests("/v/") == ("/v/a.m3u8",)
    store.close()


def test_damage_found_at_run_time_is_healed_once_and_every_store_of_the_directory_goes_on(tmp_path: Path) -> None:
    one, two = Store(str(tmp_path), LIMIT), Store(str(tmp_path), LIMIT)  # two workers of one cache directory
    stored = _stored(one, 20)
    primaries = ["/" + obj.key.rsplit("|", 1)[1].lstrip("/") for obj, _ in stored]
    marks = {primary: one.change_mark(primary) for primary in primaries}
    path = tmp_path / "index" / "cache.db"
    for cache in (one.index, two.index):
        cache._sql("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as f:  # every page but the first (the schema) overwritten
        f.seek(4096)
        f.write(os.urandom(path.stat().st_size - 4096))

    def generation_in_a_new_thread(store: Store) -> None:  # a new connection reads the damaged file
        with contextlib.suppress(sqlite3.DatabaseError):
            store.generation("/o1.bin")

    thread = threading.Thread(target=generation_in_a_new_thread, args=(two,))
    thread.start()
    thread.join()
    deadline = time.monotonic() + 10
    while one.integrity_figures()["rebuilt_index"] < 1:
        assert time.monotonic() < deadline, "not healed"
        time.sleep(0.05)
    time.sleep(0.2)
    assert one.integrity_figures()["rebuilt_index"] == 1  # healed once
    for store in (one, two):  # what any process remembers of a key (ready answers, say) is given no more
        assert all(store.change_mark(p) != marks[p] for p in primaries)
    for store in (one, two):  # both use the new database (their connections were opened again)
        for (obj, _), primary in zip(stored, primaries, strict=True):
            assert store.get_meta(obj.key, store.generation(primary), fresh=True) == obj
        assert store.take_lease("l", "me", 5)
        store.release_lease("l", "me")
    one.close()
    two.close()


# --- through the real command line ------------------------------------------------------------
def _metric(edge: EdgeProcess, name: str, labels: str) -> float:
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", httpx.get(edge.url + "/_edge/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_an_edge_restarted_on_damaged_databases_serves_from_its_cache_again(tmp_path: Path, how: str) -> None:
    (tmp_path / "assets").mkdir()
    contents = {f"f{n}.bin": os.urandom(size) for n, size in enumerate([8 * KiB] * 30 + [300 * KiB] * 2)}
    for name, data in contents.items():
        (tmp_path / "assets" / name).write_bytes(data)
    env = {"EDGECACHE_WORKERS": "2", "EDGECACHE_BLOCK_SIZE": "128KiB", "EDGECACHE_CACHE_SIZE_LIMIT": "64MiB",
           "EDGECACHE_MAX_OBJECT_SIZE": "16MiB"}
    args = ("--origin", str(tmp_path / "assets"), "--cache-dir", str(tmp_path / "cache"))
    with EdgeProcess(tmp_path, *args, env=env) as edge:
        for name, data in contents.items():
            assert httpx.get(f"{edge.url}/{name}").content == data
        assert edge.stop() == 0
    for database in heal.FILES.values():
        _damage_file(tmp_path / "cache" / database, how)
    with EdgeProcess(tmp_path, *args, env=env) as edge:
        with httpx.Client(base_url=edge.url) as client:
            for name, data in contents.items():
                assert client.get(f"/{name}").content == data
            for name, data in contents.items():
                again = client.get(f"/{name}")
                assert again.content == data and again.headers["x-cache"] == "HIT", name
        repaired = sum(_metric(edge, "edgecache_store_repairs_total", f'{{database="objects",outcome="{o}"}}')
                       for o in ("rebuilt", "emptied"))
        assert repaired == 1
        lines = edge.output().splitlines()
        assert any("objects/cache.db was damaged" in line for line in lines)
        # The damage is told once per database, when it is healed: no lookup ever failed on it.
        assert all("was damaged" in line for line in lines if "malformed" in line or "not a database" in line)
