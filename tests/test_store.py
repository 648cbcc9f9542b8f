"""The store's own guarantees: purge generations, a Vary index that is never evicted,
metadata of another format is a miss, a bounded memo."""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from proxy.http.cache import PassMarker, PassReason
from proxy.store import disk
from proxy.store.disk import Store
from proxy.store.epochs import Epochs
from proxy.store.objects import CachedObject, meta_key


def obj(primary: str, selection: str = "", size: int = 10) -> CachedObject:
    return CachedObject(status=200, headers=[("etag", '"1"')], request_time=1.0, response_time=1.0,
                        key=meta_key(primary, selection), size=size, block_size=4, validator='"1"', sliceable=True)


def test_a_fill_that_started_before_a_purge_cannot_store_after_it(tmp_path: Path) -> None:
    store = Store(str(tmp_path), 64 * 1024**2)
    generation = store.generation("/a")  # a GET looks up, then asks the origin for version 1
    store.purge("/a")  # meanwhile an upload of version 2 invalidates the key
    assert not store.put_meta("/a", meta_key("/a", ""), obj("/a"), (), generation)
    assert store.get_meta(meta_key("/a", ""), store.generation("/a"), fresh=True) is None
    assert store.put_meta("/a", meta_key("/a", ""), obj("/a"), (), store.generation("/a"))
    assert store.get_object(meta_key("/a", ""), fresh=True) == obj("/a")


def test_every_variant_is_purged_and_the_index_is_not_evicted(tmp_path: Path) -> None:
    store = Store(str(tmp_path), 64 * 1024**2)
    for lang in ("en", "fr", "de"):
        key = meta_key("/v", f"accept-language={lang!r}")
        assert store.put_meta("/v", key, obj("/v", lang), ("accept-language",), store.generation("/v"))
    store.objects.cull()  # eviction runs on the objects cache only
    store.objects.clear()  # even if every entry there were evicted...
    assert store.vary_index("/v", fresh=True) is not None  # ...the index still knows the variants
    store.put_meta("/v", meta_key("/v", "x"), obj("/v", "x"), ("accept-language",), store.generation("/v"))
    assert store.purge_prefix("/") == ["/v"]
    assert store.vary_index("/v", fresh=True) is None


def test_variants_stored_before_a_purge_or_a_vary_change_are_never_answers(tmp_path: Path) -> None:
    store = Store(str(tmp_path), 64 * 1024**2)
    en = meta_key("/p", "accept-language='en'")
    assert store.put_meta("/p", en, obj("/p", "en"), ("accept-language",), 0)
    # the origin answers once without Vary (a 404, say): the key no longer varies, en goes with it
    assert store.put_meta("/p", meta_key("/p", ""), obj("/p"), (), 0)
    assert store.get_object(en, fresh=True) is None
    assert store.put_meta("/p", en, obj("/p", "en"), ("accept-language",), 0)
    store.index.delete("v|/p")  # even were a variant unknown to the index (an older layout)...
    store.purge("/p")
    assert store.get_meta(en, store.generation("/p"), fresh=True) is None  # ...a purge ends it


def test_metadata_of_another_format_or_unreadable_is_a_miss(tmp_path: Path) -> None:
    store = Store(str(tmp_path), 64 * 1024**2)
    store.objects.set(meta_key("/old", ""), obj("/old"))  # written by an older edgecache, no format tag
    store.objects.set(meta_key("/new", ""), (disk.META_FORMAT + 1, 0, obj("/new")))
    gone = types.ModuleType("edgecache_removed_module")  # a class that no longer exists when read back
    gone.Meta = type("Meta", (), {"__module__": "edgecache_removed_module"})  # type: ignore[attr-defined]
    sys.modules["edgecache_removed_module"] = gone
    store.objects.set(meta_key("/bad", ""), (disk.META_FORMAT, 0, gone.Meta()))  # type: ignore[attr-defined]
    del sys.modules["edgecache_removed_module"]
    assert store.get_meta(meta_key("/old", ""), 0, fresh=True) is None
    assert store.get_meta(meta_key("/new", ""), 0, fresh=True) is None
    assert store.get_meta(meta_key("/bad", ""), 0, fresh=True) is None
    assert meta_key("/bad", "") not in store.objects  # dropped


def test_the_memo_is_bounded_in_bytes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(disk, "MEMO_BYTES", 64 * 1024)
    store = Store(str(tmp_path), 64 * 1024**2)
    big = [("x-big", "v" * 4000)]
    for i in range(200):
        entry = PassMarker(PassReason.UNCACHEABLE, 1.0)
        store.put_meta(f"/k{i}", meta_key(f"/k{i}", ""), entry, (), 0)
        marker_obj = CachedObject(status=200, headers=big, request_time=1, response_time=1,
                                  key=meta_key(f"/o{i}", ""), size=1, block_size=1, validator="v", sliceable=False)
        store.put_meta(f"/o{i}", marker_obj.key, marker_obj, (), 0)
        assert store.get_meta(meta_key(f"/k{i}", ""), 0) == entry  # read: remembered
        assert store.get_meta(marker_obj.key, 0) == marker_obj
    assert store._memo_bytes <= 64 * 1024
    assert sum(size for _, _, _, size in store._memo.values()) == store._memo_bytes


def test_what_a_process_remembers_ends_with_any_processs_write(tmp_path: Path) -> None:
    """Two Stores on one directory stand for two worker processes: a lookup answered from
    memory (memo_only) is right until the other one writes, then it must read the store."""
    one, two = Store(str(tmp_path), 64 * 1024**2), Store(str(tmp_path), 64 * 1024**2)
    key = meta_key("/a", "")
    assert one.put_meta("/a", key, obj("/a"), (), 0)
    with pytest.raises(disk.NotRemembered):
        two.get_meta(key, 0, memo_only=True)  # never read here: not remembered
    assert two.get_meta(key, 0) == obj("/a")
    assert two.get_meta(key, 0, memo_only=True) == obj("/a")  # now answered from memory
    assert two.generation("/a", fresh=False) == 0 == two.generation("/a", fresh=False, memo_only=True)
    one.purge("/a")  # the other process purges...
    with pytest.raises(disk.NotRemembered):
        two.generation("/a", fresh=False, memo_only=True)  # ...so neither the generation...
    with pytest.raises(disk.NotRemembered):
        two.get_meta(key, 0, memo_only=True)  # ...nor the entry is taken from memory
    assert two.generation("/a", fresh=False) == 1
    assert two.get_meta(key, 1) is None
    two.put_meta("/a", key, obj("/a", size=20), (), 1)  # and a write here is seen there at once
    assert one.get_meta(key, 1) == obj("/a", size=20)


def test_keys_sharing_a_slot_are_read_again_never_served_stale(tmp_path: Path) -> None:
    store, other = Store(str(tmp_path), 64 * 1024**2), Store(str(tmp_path), 64 * 1024**2)
    a = "/a"
    b = next(f"/b{i}" for i in range(100_000) if store.epochs.slot(f"/b{i}") == store.epochs.slot(a))
    store.put_meta(a, meta_key(a, ""), obj(a), (), 0)
    assert store.get_meta(meta_key(a, ""), 0, memo_only=False) == obj(a)
    other.put_meta(b, meta_key(b, ""), obj(b), (), 0)  # another key of the same slot changes
    with pytest.raises(disk.NotRemembered):
        store.get_meta(meta_key(a, ""), 0, memo_only=True)
    assert store.get_meta(meta_key(a, ""), 0) == obj(a)


def test_a_sweep_removes_dead_fills_parts_but_not_live_ones(tmp_path: Path) -> None:
    import os
    import time

    store = Store(str(tmp_path), 64 * 1024**2)
    fd_dead, dead = store.new_part()
    fd_live, live = store.new_part()
    os.close(fd_dead)
    os.close(fd_live)
    assert store.take_lease("f|b|x|0", live, 60)  # a live fill, its origin stalled for long
    old = time.time() - 3600
    os.utime(dead, (old, old))
    os.utime(live, (old, old))
    assert store.sweep_parts(older_than=60) == 1
    assert not os.path.exists(dead) and os.path.exists(live)


def _bump_many(path: str, times: int) -> None:
    epochs = Epochs(path)
    for _ in range(times):
        epochs.bump(7)
    epochs.close()


def test_change_counters_lose_no_bump_across_processes(tmp_path: Path) -> None:
    import multiprocessing

    path = str(tmp_path / "epochs")
    Epochs(path).close()
    workers = [multiprocessing.get_context("spawn").Process(target=_bump_many, args=(path, 300)) for _ in range(3)]
    for w in workers:
        w.start()
    _bump_many(path, 300)
    for w in workers:
        w.join()
    epochs = Epochs(path)
    assert epochs.read(7) == 1200 and epochs.read(6) == 0


def test_what_is_worked_out_from_a_stored_response_is_not_stored_with_it(tmp_path: Path) -> None:
    stored = CachedObject(status=200, headers=[("ETag", '"1"'), ("Age", "5"), ("Content-Type", "video/mp4")],
                          request_time=100.0, response_time=101.0, key=meta_key("/a", ""), size=10, block_size=4,
                          validator='"1"', sliceable=True)
    assert stored.age(111.0) == 16.0  # Age 5 + 1 s in flight + 10 s since
    assert stored.representation("a.mp4").etag == '"1"'
    assert stored.block_key(0).startswith("b|")
    store = Store(str(tmp_path), 64 * 1024**2)
    assert store.put_meta("/a", stored.key, stored, (), store.generation("/a"))
    raw = store.objects.get(stored.key)
    read = raw[-1]  # (format, generation, entry)
    assert isinstance(read, CachedObject) and read == stored
    assert set(vars(read)) == {"status", "headers", "request_time", "response_time", "key", "size", "block_size",
                               "validator", "sliceable", "changes", "stale_at"}
    assert read.age(111.0) == 16.0 and read.representation("a.mp4") == stored.representation("a.mp4")


def test_the_variants_of_one_url_are_bounded_oldest_out(tmp_path: Path) -> None:
    """15,000 values of a field the origin varies on, chosen by clients, made an index of 1.25 MB:
    at most max_variants are kept, the oldest going with their metadata."""
    store = Store(str(tmp_path), 64 * 1024**2, max_variants=8)
    keys = [meta_key("/v", f"x-client={i!r}") for i in range(200)]
    for i, key in enumerate(keys):
        assert store.put_meta("/v", key, obj("/v", str(i)), ("x-client",), store.generation("/v"))
    index = store.vary_index("/v", fresh=True)
    assert index is not None and index.selections == tuple(keys[-8:])  # the newest eight, oldest first
    assert [store.get_object(key, fresh=True) is not None for key in keys[-9:]] == [False] + [True] * 8
    store.put_meta("/v", keys[-8], obj("/v", "again"), ("x-client",), store.generation("/v"))  # asked again: newest
    assert store.vary_index("/v", fresh=True).selections == (*keys[-7:], keys[-8])  # type: ignore[union-attr]
    store.close()


def test_blocks_at_hand_are_bounded_in_descriptors_and_in_bytes(tmp_path: Path) -> None:
    from proxy.store.handles import OpenBlocks

    at_hand = OpenBlocks(capacity=3, max_bytes=100)
    for i in range(5):
        path = tmp_path / f"b{i}"
        path.write_bytes(b"x" * 10)
        os.close(int(at_hand.adopt(f"f{i}", open(path, "rb"))))
    for i in range(5):
        at_hand.adopt(f"s{i}", b"y" * 40)
    assert [key for key in ("f0", "f1", "f2", "f3", "f4") if at_hand.holds(key)] == ["f2", "f3", "f4"]
    assert [key for key in ("s0", "s1", "s2", "s3", "s4") if at_hand.holds(key)] == ["s3", "s4"]
    at_hand.close()
    assert not at_hand.holds("f4") and not at_hand.holds("s4")


def test_a_block_at_hand_is_mapped_once_and_unmapped_when_it_goes(tmp_path: Path) -> None:
    """The mapping a block at hand's residency is asked of lives as long as its entry: made the
    first time it is asked for, the same one after, unmapped when the entry is forgotten, evicted
    or closed (an unmapped one answers that nothing is resident)."""
    from proxy.store.handles import OpenBlocks

    at_hand = OpenBlocks(capacity=2)
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).write_bytes(os.urandom(3 * 4096))
        os.close(int(at_hand.adopt(name, open(tmp_path / name, "rb"))))
        os.pread(int(at_hand.borrow(name)), 3 * 4096, 0)  # type: ignore[arg-type]  # in the page cache
    assert at_hand.pages("a") is None and at_hand.pages("s") is None  # evicted; never held
    c, d = at_hand.pages("c"), at_hand.pages("d")
    if c is None or d is None:
        pytest.skip("no mincore(2) here")
    assert at_hand.pages("c") is c and c.resident(0, 3 * 4096) and c.length == 3 * 4096
    at_hand.forget("c")
    assert c.address is None and not c.resident(0, 4096)
    for name in ("e", "f"):  # d is evicted
        (tmp_path / name).write_bytes(b"x")
        os.close(int(at_hand.adopt(name, open(tmp_path / name, "rb"))))
    assert d.address is None
    e = at_hand.pages("e")
    at_hand.close()
    assert e is not None and e.address is None
