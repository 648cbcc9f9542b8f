"""The cache policies (proxy/policy/): what each keeps and evicts, as tables, and the invariants
the store relies on, with hypothesis."""
from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.policy.adaptive import GHOST, WINDOW, AdaptivePolicy
from proxy.policy.blocks import BlockCache, Entry, Reason, Refused, Stored, entries_within
from proxy.policy.lru import LruPolicy
from proxy.policy.replay import replay

MiB = 1024 * 1024


@pytest.mark.parametrize(("count", "cached", "first_out"), [
    (1, [0], 0),
    (2, [0, 1], 1),  # the last block before the first
    (5, [0, 1, 2, 3, 4], 3),  # the middle, from the end backwards
    (5, [0, 1, 4], 1),
    (5, [0, 4], 4),  # then the last (an MP4's index may be there)
    (5, [0], 0),
    (5, [2, 3], 3),
    (2, [0, 3, 4], 4),  # blocks past the count it was told (another block size): the highest first
])
def test_blocks_of_one_object_go_middle_first_then_last_then_first(count: int, cached: list[int],
                                                                   first_out: int) -> None:
    entry = Entry(count * MiB, count)
    for index in cached:
        entry.blocks[index] = MiB
    assert entry.least_worth() == first_out


def test_lru_evicts_the_least_recently_requested_object_a_block_at_a_time() -> None:
    lru = LruPolicy(4 * MiB, MiB, 100)
    assert lru.request("a", 2 * MiB) == 0
    assert lru.request("b", 2 * MiB) == 0
    assert lru.request("a", 2 * MiB) == 2 * MiB  # a hit: a is now the most recent
    outcome = lru.fill("c", 0, MiB, MiB)
    assert outcome == Stored((_eviction("b", 1, MiB),))
    assert lru.request("b", 2 * MiB) == MiB  # b kept its first block: a partial hit
    assert lru.used == 4 * MiB


def _eviction(key: str, block: int, size: int, reason: Reason = Reason.SPACE) -> object:
    from proxy.policy.blocks import Eviction
    return Eviction(key, block, size, reason)


def test_lru_refuses_a_block_larger_than_the_cache_and_never_evicts_the_object_it_fills() -> None:
    lru = LruPolicy(2 * MiB, MiB, 100)
    assert isinstance(lru.fill("huge", 0, 3 * MiB, 3 * MiB), Refused)
    lru.request("a", 2 * MiB)
    assert lru.find("a") is not None and lru.find("a").bytes == 2 * MiB  # type: ignore[union-attr]
    # a 3-block object: its third block can only come from evicting its own: refused
    assert lru.request("big", 3 * MiB) == 0
    assert lru.find("a") is None and lru.used == 2 * MiB


def test_adaptive_keeps_only_what_is_asked_for_twice_while_its_recency_share_is_nothing() -> None:
    policy = AdaptivePolicy(64 * MiB, MiB, 1000)
    assert policy.target == 0 and policy.linger == MiB and policy.capacity == 63 * MiB
    for n in range(63):
        assert policy.request(n, MiB) == 0
    assert list(policy.t1) == list(range(63))  # while the cache has room, everything is kept
    assert policy.request("a", MiB) == 0
    assert policy.find("a") is None and policy.held("a") == {0: MiB}  # refused, for a while still on disk
    assert policy.request("a", MiB) == MiB  # asked again meanwhile: a hit, and kept, as frequent
    assert list(policy.t2) == ["a"] and list(policy.t1) == list(range(1, 63))
    # a ghost hit in the recency ghost's recent window grows the recency share
    assert policy.target == MiB * policy.step and policy.step == pytest.approx(1 / WINDOW)
    policy.target = 0.0
    for key in "bc":
        assert policy.request(key, MiB) == 0
    assert policy.held("b") is None and policy.held("c") == {0: MiB}  # refused blocks go first in, first out
    assert policy.request("b", MiB) == 0 and list(policy.t2) == ["a", "b"]  # remembered: kept


def test_adaptive_share_moves_by_the_gain_each_ghost_window_shows() -> None:
    policy = AdaptivePolicy(64 * MiB, MiB, 1000)  # 63 MiB kept at most, each ghost window a tenth of it
    policy.target = 2.0 * MiB  # new objects up to 2 MiB go to the recency list
    for key in "abcd":
        policy.request(key, MiB)  # into T1
    policy.request("a", MiB)
    policy.request("b", MiB)  # a and b move to T2
    assert list(policy.t1) == ["c", "d"] and list(policy.t2) == ["a", "b"]
    for n in range(60):
        policy.request(n, MiB)
    # T1 held more than its share: its oldest went first, into the recency ghost's window
    assert list(policy.t2) == ["a", "b"] and list(policy.b1_recent) == ["c"] and policy.find("c") is None
    policy.request("c", MiB)  # the recency list would have kept it: share up by size x capacity/window
    assert policy.target == 2 * MiB + MiB * policy.step
    assert "c" in policy.t2
    policy.target = 62.0 * MiB  # T1 (59 MiB) now holds less than its share
    policy.request(60, MiB)  # so T2's oldest goes, into its ghost window
    assert policy.find("a") is None and list(policy.b2_recent) == ["a"]
    policy.request("a", MiB)  # T2 would have kept it: share down
    assert policy.target == 62 * MiB - MiB * policy.step


def test_adaptive_ghost_memory_is_twice_the_cache_in_bytes() -> None:
    policy = AdaptivePolicy(64 * MiB, MiB, 10_000)  # 63 MiB kept at most
    for n in range(300):
        policy.request(n, MiB)  # the first 63 fill the cache; the others are refused (share 0): ghosts
    assert list(policy.t1) == list(range(63))
    remembered = policy.b1_recent_bytes + policy.b1_older_bytes
    assert GHOST * 63 * MiB - MiB <= remembered <= GHOST * 63 * MiB  # to a block
    assert policy.request(250, MiB) == 0 and 250 in policy.t2  # remembered
    assert policy.request(100, MiB) == 0 and policy.find(100) is None  # forgotten long ago


def test_forget_drops_cached_blocks_and_ghosts() -> None:
    policy = AdaptivePolicy(4 * MiB, MiB, 100)
    policy.request("a", 2 * MiB)
    policy.request("a", 2 * MiB)
    policy.request("g", MiB)
    policy.forget("a")
    policy.forget("g")
    assert policy.used == 0 and policy.t2_bytes == 0 and not policy.t2 and "g" not in policy.b1_recent


def test_memory_bound_counts_ghosts_and_evicts_whole_objects_beyond_it() -> None:
    assert entries_within(64 * MiB) == 64 * MiB // 256 and entries_within(1) == 1
    lru = LruPolicy(100 * MiB, MiB, 3)
    for key in "abc":
        lru.request(key, 2 * MiB)
    outcome = lru.fill("d", 0, MiB, MiB)
    assert outcome == Stored((_eviction("a", 1, MiB, Reason.ENTRIES), _eviction("a", 0, MiB, Reason.ENTRIES)))
    policy = AdaptivePolicy(100 * MiB, MiB, 3)
    for key in "abcdef":
        policy.request(key, MiB)  # ghosts only, never more than three remembered
        assert len(policy.b1_recent) + len(policy.b1_older) <= 3


# --- invariants, with hypothesis -------------------------------------------------------------
operations = st.lists(st.tuples(st.sampled_from(["fill", "touch", "request", "forget", "drop"]),
                                st.integers(0, 11), st.integers(0, 5), st.integers(1, 5)), max_size=200)


def _check(policy: BlockCache, disk: dict[tuple[object, int], int]) -> None:
    """The store's view (blocks kept minus blocks evicted) is exactly the policy's."""
    view = {(key, index): size for key in {k for k, _ in disk} | set(range(12))
            if (held := policy.held(key)) is not None for index, size in held.items()}
    assert view == disk
    kept = sum(size for (key, _), size in disk.items() if policy.find(key) is not None)
    assert policy.used == kept <= policy.capacity
    if isinstance(policy, AdaptivePolicy):
        assert policy.refused_bytes == sum(disk.values()) - kept <= policy.linger
        assert policy.t1_bytes + policy.t2_bytes == policy.used
        assert not policy.t1.keys() & policy.t2.keys()
        assert 0 <= policy.target <= policy.capacity
        remembered = len(policy.t1) + len(policy.t2) + len(policy.b1_recent) + len(policy.b1_older) + \
            len(policy.b2_recent)
        assert remembered <= policy.max_entries
        assert policy.b2_recent_bytes <= policy.window or len(policy.b2_recent) == 1  # the newest stays
        assert policy.b1_recent_bytes <= policy.window or len(policy.b1_recent) == 1
    else:
        assert len(policy.figures()) == 1 and policy.figures()["objects"] <= policy.max_entries


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from([AdaptivePolicy, LruPolicy]), capacity=st.integers(1, 12), max_entries=st.integers(1, 8),
       ops=operations)
def test_what_the_store_would_hold_is_what_the_policy_says(kind: type[BlockCache], capacity: int, max_entries: int,
                                                            ops: list[tuple[str, int, int, int]]) -> None:
    block = 1000
    policy = kind(capacity * block, block, max_entries)
    disk: dict[tuple[object, int], int] = {}
    sizes: dict[int, int] = {}
    for op, key, index, blocks in ops:
        size = sizes.setdefault(key, blocks * block - key)  # an object keeps its size; the last block is short
        count = -(-size // block)
        index %= count
        if op == "fill":  # the store publishes the block, then asks
            length = min(block, size - index * block)
            had = (key, index) in disk
            disk[(key, index)] = length
            outcome = policy.fill(key, index, length, size)
            for e in outcome.evicted:
                assert disk.pop((e.key, e.block)) == e.size
            if index not in (policy.held(key) or {}):
                assert isinstance(outcome, Refused) or had  # neither kept nor lingering: removed at once
                disk.pop((key, index), None)
        elif op == "touch":
            for e in policy.touch(key):
                assert disk.pop((e.key, e.block)) == e.size
        elif op == "request":
            before = sum(s for (k, _), s in disk.items() if k == key)
            assert policy.request(key, size) == before
            disk = {(k, i): s for k in {k for k, _ in disk} | {key}
                    if (held := policy.held(k)) is not None for i, s in held.items()}
        elif op == "forget":
            policy.forget(key)
            disk = {(k, i): s for (k, i), s in disk.items() if k != key}
        else:
            policy.drop(key, index)
            disk.pop((key, index), None)
        _check(policy, disk)


@settings(max_examples=100, deadline=None)
@given(requests=st.lists(st.tuples(st.integers(0, 30), st.integers(1, 9)), max_size=300),
       capacity=st.integers(1, 40))
def test_lru_with_blocks_as_large_as_objects_is_object_lru(requests: list[tuple[int, int]], capacity: int) -> None:
    """A reference LRU over whole objects, written plainly, agrees request by request."""
    sizes: dict[int, int] = {}
    lru = LruPolicy(capacity, 10, 1000)
    model: OrderedDict[int, int] = OrderedDict()
    for key, size in requests:
        size = sizes.setdefault(key, size)
        expected = size if key in model else 0
        if key in model:
            model.move_to_end(key)
        elif size <= capacity:
            while sum(model.values()) + size > capacity:
                model.popitem(last=False)
            model[key] = size
        assert lru.request(key, size) == expected


def test_replay_counts_requests_bytes_and_partial_hits() -> None:
    lru = LruPolicy(3 * MiB, MiB, 100)
    seen: list[int] = []
    figures = replay([("a", 2 * MiB, 0, 2 * MiB), ("a", 2 * MiB, 0, 2 * MiB), ("b", 2 * MiB, 0, 2 * MiB),
                      ("a", 2 * MiB, MiB // 2, 2 * MiB)], lru, seen.append, every=2)
    # the third request evicts a's second block; the fourth asks for 1.5 MiB of a, half a MiB cached
    assert (figures.requests, figures.bytes, figures.hit_requests, figures.hit_bytes) == (4, 7.5 * MiB, 1, 2.5 * MiB)
    assert figures.byte_hit_ratio == 2.5 / 7.5 and figures.request_hit_ratio == 0.25
    assert seen == [2, 2]
