"""The cache policy in the store (proxy/store/keeper.py): decisions made as blocks are published,
shared by the workers of one cache directory through the keeper, kept across restarts."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import diskcache
import pytest

from proxy.ops import metrics
from proxy.store import footprint
from proxy.store.disk import Store
from proxy.store.keeper import METADATA_SLACK, Keeper
from proxy.store.objects import CachedObject, meta_key

MiB = 1024 * 1024
BLOCK = MiB


def obj(name: str, size: int = BLOCK) -> CachedObject:
    return CachedObject(status=200, headers=[("etag", f'"{name}"')], request_time=1.0, response_time=1.0,
                        key=meta_key("/" + name, ""), size=size, block_size=BLOCK, validator=f'"{name}"',
                        sliceable=True)


def fill(store: Store, o: CachedObject, *, meta: bool = True) -> None:
    """What the read path does for a miss: the metadata, then each block, published."""
    if meta:
        assert store.put_meta("/" + o.key.rsplit("/", 1)[1], o.key, o, (), 0)
    for index in range(o.block_count):
        fd, path = store.new_part()
        start, end = o.block_span(index)
        os.write(fd, b"x" * (end - start))
        os.close(fd)
        store.publish_block(o.block_key(index), path, end - start)


def blocks(store: Store, o: CachedObject) -> list[bool]:
    return [store.has_block(o.block_key(i)) for i in range(o.block_count)]


@pytest.fixture(autouse=True)
def rounds_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keepers' rounds run when a test calls tick(), not on their own: what a test sees does not
    depend on whether a round looked at the cache directory while a block was being written."""
    monkeypatch.setattr(Keeper, "_run", lambda keeper: keeper._stop.wait())


def open_store(path: Path, limit: int = 64 * MiB) -> Store:
    """A store whose policy keeps some 60 blocks (what the rest of its directory leaves of the
    limit: room()), and a refused one a while (1/64 of its size)."""
    return Store(str(path), limit, block_size=BLOCK)


def room(store: Store) -> int:
    """How many blocks of BLOCK bytes the policy keeps, weighed by what they cost on disk."""
    policy = store.keeper.policy
    assert policy is not None
    return policy.capacity // footprint.block_cost(BLOCK, store.unit)


def crowd(store: Store, count: int = 0) -> list[CachedObject]:
    """Fill the cache with objects asked for once (kept while there is room; all of it by default)."""
    filler = [obj(f"f{n}") for n in range(count or room(store))]
    for o in filler:
        fill(store, o)
    return filler


def name(o: CachedObject) -> str:
    return o.block_key(0)[:-1]


def test_a_refused_block_stays_a_while_then_goes_with_its_metadata(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    kept = len(crowd(store))
    a, b = obj("a"), obj("b")
    fill(store, a)  # asked once, in a full cache, with nothing asked twice yet: not kept...
    policy = store.keeper.policy
    assert policy is not None and policy.find(name(a)) is None
    assert blocks(store, a) == [True]  # ...but still on disk a while (a reader may be opening it)
    fill(store, b)  # refused blocks go first in, first out, beyond 1/64 of the cache
    assert blocks(store, a) == [False] and store.get_object(a.key, fresh=True) is None
    assert blocks(store, b) == [True] and store.get_object(b.key, fresh=True) is not None
    store.keeper.tick()
    figures = store.policy_figures()
    assert (figures["admitted"], figures["refused"], figures["evicted_refused"]) == (kept, 2, 1)
    scraped = metrics.scrape(store).decode()
    assert 'edgecache_policy_admissions_total{outcome="refused"} 2.0' in scraped
    assert 'edgecache_policy_evictions_total{reason="refused"} 1.0' in scraped
    assert "edgecache_policy_recency_share 0.0" in scraped
    store.close()


def test_the_second_request_keeps_it_whether_it_fills_again_or_hits_what_stayed(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    crowd(store)
    a, b = obj("a"), obj("b")
    for o in (a, b):
        fill(store, o)  # refused; a's block went
    fill(store, a)  # asked again after its block went: fetched again, and kept
    store.add_hits({b.key: 1})  # asked again while its refused block was still there: a hit, and kept
    assert blocks(store, a) == [True] and blocks(store, b) == [True]
    policy = store.keeper.policy
    assert policy is not None and list(policy.t2) == [name(a), name(b)]
    store.add_hits({a.key: 3})  # hits reach the policy in batches: a is now the most recent
    assert list(policy.t2) == [name(b), name(a)]
    store.close()


def test_evictions_remove_blocks_from_the_end_and_an_object_without_blocks_loses_its_metadata(
        tmp_path: Path) -> None:
    store = open_store(tmp_path)
    big, small, last = obj("big", 3 * BLOCK), obj("small", 2 * BLOCK), obj("last")
    fill(store, big)  # kept while there is room, the oldest
    crowd(store, room(store) - 3)
    fill(store, small)  # refused: it would take another's room
    fill(store, small)  # asked again: kept; its two blocks need room
    # big gave up its middle block, then its last; its first (where a player starts) stays
    assert blocks(store, big) == [True, False, False] and blocks(store, small) == [True, True]
    assert store.get_object(big.key, fresh=True) is not None
    fill(store, last)
    fill(store, last)
    assert blocks(store, big) == [False, False, False] and store.get_object(big.key, fresh=True) is None
    store.keeper.tick()
    assert store.policy_figures()["evicted_space"] == 3
    store.close()


def test_workers_share_one_policy_through_the_keeper(tmp_path: Path) -> None:
    first = open_store(tmp_path)
    second = open_store(tmp_path)
    assert first.keeper.policy is not None and second.keeper.policy is None  # one keeper
    kept = len(crowd(first))
    a, b = obj("a"), obj("b")
    for o in (a, b):
        fill(second, o)  # another worker's fills: on disk until the keeper has heard of them
        assert blocks(first, o) == [True]
        second.keeper.tick()  # its events go to the journal
        first.keeper.tick()  # the keeper applies them: refused, b's pushes a's out
    assert blocks(first, a) == [False] and blocks(first, b) == [True]
    fill(second, a)
    second.keeper.tick()
    first.keeper.tick()
    policy = first.keeper.policy
    assert policy is not None and policy.find(name(a)) is not None  # the second request keeps it
    assert second.policy_figures()["admitted"] == kept + 1  # every worker reads the keeper's figures
    first.close()  # the keeper goes: the other worker takes over, with the policy as it was saved
    second.keeper.tick()
    assert second.keeper.policy is not None and second.keeper.policy.find(name(a)) is not None
    second.close()


def test_blocks_a_dead_worker_never_told_of_are_taken_as_the_store_holds_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.store.keeper.UNHEARD", 0.0)
    first = open_store(tmp_path)
    second = open_store(tmp_path)
    a = obj("a")
    fill(second, a)  # stored, its cost owed to the keeper...
    second.keeper._pending.clear()  # ...and its worker killed before it handed the event over
    assert first.keeper.unapplied.read(0) >= footprint.block_cost(BLOCK, first.unit)
    first.keeper.tick()  # owed, nothing heard of it: from now on
    policy = first.keeper.policy
    assert policy is not None and policy.find(name(a)) is None
    first.keeper.tick()  # still nothing after UNHEARD: the policy takes the blocks the store holds
    assert policy.find(name(a)) is not None and first.keeper.unapplied.read(0) == 0
    second.close()
    first.close()


def test_an_evicted_blocks_file_goes_once_no_reader_finds_its_row(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader (another process) that finds a block's row finds its file: the file goes once the
    transaction removing the row is committed, else the reader would take the block for lost."""
    store = open_store(tmp_path)
    a = obj("a")
    fill(store, a)
    reader = sqlite3.connect(tmp_path / "objects" / "cache.db")
    rows_left: list[int] = []
    remove = store.objects._disk.remove

    def removing(filename: str) -> None:
        rows_left.append(reader.execute("SELECT COUNT(*) FROM Cache WHERE filename = ?", (filename,)).fetchone()[0])
        remove(filename)

    monkeypatch.setattr(store.objects._disk, "remove", removing)
    store.remove_blocks([a.block_key(0)])
    assert rows_left == [0] and blocks(store, a) == [False]
    reader.close()
    store.close()


def test_a_restart_keeps_the_policy_and_reconciles_it_with_the_blocks_on_disk(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    a, b = obj("a"), obj("b")
    for o in (a, b):
        fill(store, o)
        store.add_hits({o.key: 1})
    assert store.keeper.policy is not None and list(store.keeper.policy.t2) == [name(a), name(b)]
    store.close()
    with diskcache.Cache(str(tmp_path / "objects")) as objects:
        objects.delete(a.block_key(0))  # a block removed while no edge ran
    store = open_store(tmp_path)
    policy = store.keeper.policy
    assert policy is not None and list(policy.t2) == [name(b)] and not policy.t1  # a dropped
    store.close()
    os.unlink(tmp_path / "policy" / "state")  # no saved state: the blocks on disk are adopted as newcomers
    with diskcache.Cache(str(tmp_path / "index")) as index:
        index.delete("d|" + name(b))  # nor which object they belong to (a cache from before the policy)
    store = open_store(tmp_path)
    policy = store.keeper.policy
    assert policy is not None and list(policy.t1) == [name(b)] and not policy.t2
    assert blocks(store, b) == [True] and store.object_of(name(b)) == (b.key, BLOCK, 1)
    store.close()


def test_metadata_without_kept_blocks_goes_oldest_first_when_it_outgrows_the_slack(tmp_path: Path) -> None:
    from proxy.http.cache import PassMarker, PassReason

    store = open_store(tmp_path, limit=16 * MiB)
    a = obj("a")
    fill(store, a)  # kept: there is room
    marker = PassMarker(PassReason.TOO_LARGE, float("inf"))
    for n in range(8000):  # the origin's answers not to store bodies of: remembered as small entries
        assert store.put_meta(f"/pass{n}", meta_key(f"/pass{n}", ""), marker, (), 0)
    store.keeper.tick()  # (the keeper's own rounds may have begun already)
    # what the metadata takes beyond what the blocks are charged for it: at most 2 % of the limit
    assert store.database_bytes() - store.keeper.charged() <= 16 * MiB * METADATA_SLACK
    assert store.policy_figures()["evicted_metadata"] > 0
    assert store.get_meta(meta_key("/pass0", ""), 0, fresh=True) is None  # the oldest went
    assert store.get_meta(meta_key("/pass7999", ""), 0, fresh=True) == marker
    assert store.get_object(a.key, fresh=True) is not None and blocks(store, a) == [True]  # kept blocks stay
    store.close()
