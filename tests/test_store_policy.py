"""The cache policy in the store (proxy/store/keeper.py): decisions made as blocks are published,
shared by the workers of one cache directory through the keeper, kept across restarts."""
from __future__ import annotations

import os
from pathlib import Path

import diskcache

from proxy.ops import metrics
from proxy.store.disk import Store
from proxy.store.objects import CachedObject, meta_key

MiB = 1024 * 1024
BLOCK = MiB


def obj(name: str, size: int = BLOCK) -> CachedObject:
    return CachedObject(status=200, headers=[("etag", f'"{name}"')], request_time=1.0, response_time=1.0,
                        key=meta_key("/" + name, ""), size=size, block_size=BLOCK, validator=f'"{name}"',
                        sliceable=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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


def open_store(path: Path, limit: int = 8 * MiB) -> tuple[Store, Clock]:
    store = Store(str(path), limit, block_size=BLOCK)
    clock = store.keeper.clock = Clock()
    return store, clock


def test_a_refused_object_stays_readable_a_moment_then_goes_with_its_metadata(tmp_path: Path) -> None:
    store, clock = open_store(tmp_path)
    a = obj("a", 2 * BLOCK)
    fill(store, a)  # asked once, with nothing asked twice yet: not kept...
    assert store.keeper.policy is not None and store.keeper.policy.find(a.block_key(0)[:-1]) is None
    assert blocks(store, a) == [True, True]  # ...but readable for a moment (a reader may be opening it)
    store.keeper.tick()
    assert blocks(store, a) == [True, True]
    clock.now += 10
    store.keeper.tick()
    assert blocks(store, a) == [False, False] and store.get_object(a.key, fresh=True) is None
    assert store.policy_figures()["refused"] == 2
    scraped = metrics.scrape(store).decode()
    assert 'edgecache_policy_admissions_total{outcome="refused"} 2.0' in scraped
    assert 'edgecache_policy_evictions_total{reason="refused"} 2.0' in scraped
    assert "edgecache_policy_recency_share 0.0" in scraped
    store.close()


def test_the_second_request_admits_whether_it_fills_again_or_hits_what_lingers(tmp_path: Path) -> None:
    store, clock = open_store(tmp_path)
    a, b = obj("a"), obj("b")
    fill(store, a)
    clock.now += 10
    store.keeper.tick()
    fill(store, a)  # asked again after its blocks went: fetched again, and kept
    fill(store, b)
    store.add_hits({b.key: 1})  # asked again while its refused block was still there: a hit, and kept
    clock.now += 10
    store.keeper.tick()
    assert blocks(store, a) == [True] and blocks(store, b) == [True]
    policy = store.keeper.policy
    assert policy is not None and list(policy.t2) == [a.block_key(0)[:-1], b.block_key(0)[:-1]]
    store.add_hits({a.key: 3})  # hits reach the policy in batches: a is now the most recent
    assert list(policy.t2) == [b.block_key(0)[:-1], a.block_key(0)[:-1]]
    store.close()


def test_evictions_remove_blocks_from_the_end_and_an_object_without_blocks_loses_its_metadata(
        tmp_path: Path) -> None:
    store, clock = open_store(tmp_path, limit=4 * BLOCK)
    big, small = obj("big", 3 * BLOCK), obj("small", 2 * BLOCK)
    for o in (big, small):
        fill(store, o)
        clock.now += 10
        store.keeper.tick()
        fill(store, o)  # kept the second time
    # small's two blocks needed room for one: big gave up its middle block (its first and last stay)
    assert blocks(store, big) == [True, False, True] and blocks(store, small) == [True, True]
    assert store.get_object(big.key, fresh=True) is not None
    other = obj("other", 4 * BLOCK)
    fill(store, other)
    clock.now += 10
    store.keeper.tick()
    fill(store, other)
    assert blocks(store, big) == [False, False, False] and store.get_object(big.key, fresh=True) is None
    assert store.policy_figures()["evicted_space"] == 5
    store.close()


def test_workers_share_one_policy_through_the_keeper(tmp_path: Path) -> None:
    first, clock = open_store(tmp_path)
    second = Store(str(tmp_path), 8 * MiB, block_size=BLOCK)
    assert first.keeper.policy is not None and second.keeper.policy is None  # one keeper
    a = obj("a")
    fill(second, a)  # another worker's fill: kept on disk until the keeper has heard of it
    second.keeper.tick()  # its events go to the journal
    first.keeper.tick()  # the keeper applies them: refused
    clock.now += 10
    first.keeper.tick()
    assert blocks(first, a) == [False]
    fill(second, a)
    second.keeper.tick()
    first.keeper.tick()
    assert first.keeper.policy.find(a.block_key(0)[:-1]) is not None  # the second request admits
    assert second.policy_figures()["admitted"] == 1  # every worker reads the keeper's figures
    first.close()  # the keeper goes: the other worker takes over, with the policy as it was saved
    second.keeper.tick()
    assert second.keeper.policy is not None and second.keeper.policy.find(a.block_key(0)[:-1]) is not None
    second.close()


def test_a_restart_keeps_the_policy_and_reconciles_it_with_the_blocks_on_disk(tmp_path: Path) -> None:
    store, clock = open_store(tmp_path)
    a, b = obj("a"), obj("b")
    for o in (a, b):
        fill(store, o)
        clock.now += 10
        store.keeper.tick()
        fill(store, o)
    store.close()
    with diskcache.Cache(str(tmp_path / "objects")) as objects:
        objects.delete(a.block_key(0))  # a block removed while no edge ran
    store = Store(str(tmp_path), 8 * MiB, block_size=BLOCK)
    policy = store.keeper.policy
    assert policy is not None and list(policy.t2) == [b.block_key(0)[:-1]] and not policy.t1  # a dropped
    store.close()
    os.unlink(tmp_path / "policy" / "state")  # no saved state: the blocks on disk are adopted as newcomers
    store = Store(str(tmp_path), 8 * MiB, block_size=BLOCK)
    policy = store.keeper.policy
    assert policy is not None and list(policy.t1) == [b.block_key(0)[:-1]] and not policy.t2
    store.close()


def test_metadata_without_kept_blocks_goes_oldest_first_when_it_outgrows_the_slack(tmp_path: Path) -> None:
    from proxy.http.cache import PassMarker, PassReason

    store, clock = open_store(tmp_path, limit=2 * MiB)
    a = obj("a")
    for o in (a, a):
        fill(store, o)  # kept: asked for twice
        clock.now += 10
        store.keeper.tick()
    marker = PassMarker(PassReason.TOO_LARGE, float("inf"))
    for n in range(8000):  # the origin's answers not to store bodies of: remembered as small entries
        assert store.put_meta(f"/pass{n}", meta_key(f"/pass{n}", ""), marker, (), 0)
    store.keeper.tick()  # (the keeper's own rounds may have begun already)
    assert store.volume() <= 2 * MiB * 1.02 and store.policy_figures()["evicted_metadata"] > 0
    assert store.get_meta(meta_key("/pass0", ""), 0, fresh=True) is None  # the oldest went
    assert store.get_meta(meta_key("/pass7999", ""), 0, fresh=True) == marker
    assert store.get_object(a.key, fresh=True) is not None and blocks(store, a) == [True]  # kept blocks stay
    store.close()
