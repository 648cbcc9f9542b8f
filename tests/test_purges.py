"""Soft purges and purges by cache tag: the store against a model (hypothesis), then through real
servers: the API, the command, the tiers, an origin down after a soft purge."""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cli import main
from proxy.config import Settings
from proxy.store.disk import Store
from proxy.store.objects import CachedObject, meta_key
from tests.conftest import RunningServer, pattern
from tests.upstream import Obj, Upstream

# --- the store against a model ----------------------------------------------------------

KEYS, TAGS = 5, 4
_RUNS = itertools.count()
_OPERATION = st.one_of(
    st.tuples(st.just("store"), st.integers(0, KEYS - 1), st.sets(st.integers(0, TAGS - 1))),
    st.tuples(st.just("tag"), st.integers(0, TAGS - 1), st.booleans()),
    st.tuples(st.just("path"), st.integers(0, KEYS - 1), st.booleans()),
    st.tuples(st.just("evict"), st.integers(0, KEYS - 1), st.just(False)),
)


def _object(primary: str, version: int) -> CachedObject:
    return CachedObject(status=200, headers=[("ETag", f'"{version}"')], request_time=1.0, response_time=1.0,
                        key=meta_key(primary, ""), size=10, block_size=10, validator=f'"{version}"', sliceable=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    opened = Store(str(tmp_path_factory.mktemp("purges")), 64 * 1024**2)
    yield opened  # type: ignore[misc]
    opened.close()


@settings(deadline=None, max_examples=150)  # hypothesis's deadline is a wall-clock limit: none in unit tests
@given(st.lists(_OPERATION, max_size=25))
def test_purges_by_tag_remove_exactly_the_tagged_entries(store: Store, operations: list) -> None:  # type: ignore[type-arg]
    run = next(_RUNS)  # keys and tags of their own for each example, in one store
    key = [f"/r{run}/k{i}" for i in range(KEYS)]
    tag = [f"r{run}-t{j}" for j in range(TAGS)]
    model: dict[str, tuple[frozenset[str], bool]] = {}  # key -> (its tags, marked stale)
    for version, (op, which, flag) in enumerate(operations):
        if op == "store":
            tags = tuple(tag[j] for j in sorted(flag))
            obj = _object(key[which], version)
            assert store.put_meta(key[which], obj.key, obj, (), store.generation(key[which]), tags)
            model[key[which]] = (frozenset(tags), False)
        elif op == "tag":
            tagged = sorted(k for k, (tags, _) in model.items() if tag[which] in tags)
            assert store.purge_tag(tag[which], 5.0 if flag else None) == tagged
            for k in tagged:
                if flag:
                    model[k] = (model[k][0], True)
                else:
                    del model[k]
        elif op == "path":
            assert store.purge_key(key[which], 5.0 if flag else None) == (key[which] in model)
            if flag and key[which] in model:
                model[key[which]] = (model[key[which]][0], True)
            elif not flag:
                model.pop(key[which], None)
        else:  # evicted by the cache policy: its object's blocks and metadata go
            found = store.get_meta(meta_key(key[which], ""), store.generation(key[which]))
            if isinstance(found, CachedObject):
                store.remove_objects([found.block_key(0)[:-1]])
            model.pop(key[which], None)
        for k in key:
            entry = store.get_meta(meta_key(k, ""), store.generation(k), fresh=True)
            assert isinstance(entry, CachedObject) is (k in model)
            if isinstance(entry, CachedObject):
                assert (entry.stale_at is not None) is model[k][1]
        # The index holds the stored entries' tags, no more: nothing is left behind by what went.
        for t in tag:
            assert store.tags.keys_with(t) == sorted(meta_key(k, "") for k, (tags, _) in model.items() if t in tags)


# --- through real servers ----------------------------------------------------------------

RED_BLUE, BLUE_GREEN, PLAIN, CASE = pattern(1000, 1), pattern(1100, 2), pattern(1200, 3), pattern(1300, 4)


def tagged_origin(origin: Upstream) -> None:
    origin.objects["/a.mp4"] = Obj(RED_BLUE, headers={"surrogate-key": "red blue", "cache-control": "max-age=600"})
    origin.objects["/b.mp4"] = Obj(BLUE_GREEN, headers={"cache-tag": "blue,green", "cache-control": "max-age=600"})
    origin.objects["/c.mp4"] = Obj(PLAIN, headers={"cache-control": "max-age=600"})
    origin.objects["/d.mp4"] = Obj(CASE, headers={"surrogate-key": "Red", "cache-control": "max-age=600"})


def caches(url: str, paths: str = "abcd") -> dict[str, str]:
    """X-Cache of a GET of each path, whose bytes are checked."""
    bodies = {"a": RED_BLUE, "b": BLUE_GREEN, "c": PLAIN, "d": CASE}
    seen = {}
    for name in paths:
        r = httpx.get(f"{url}/{name}.mp4")
        assert (r.status_code, r.content) == (200, bodies[name])
        seen[name] = r.headers["x-cache"]
    return seen


def test_purge_by_tag_over_http(upstream, http_settings: Settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    tagged_origin(origin)
    origin.objects["/private.mp4"] = Obj(PLAIN, headers={"cache-tag": "blue", "cache-control": "no-store"})
    edge = make_server(http_settings)
    assert caches(edge.url) == dict.fromkeys("abcd", "MISS")
    # The origin's tags stay at the edge: not on a hit, a miss or a relay.
    for path, cache in (("/a.mp4", "HIT"), ("/private.mp4", "MISS"), ("/private.mp4", "BYPASS")):
        r = httpx.get(edge.url + path)
        assert r.headers["x-cache"] == cache
        assert "surrogate-key" not in r.headers and "cache-tag" not in r.headers
    purged = httpx.post(edge.url + "/_edge/purge?tag=blue")
    assert (purged.status_code, purged.json()) == (200, {"purged": ["/a.mp4", "/b.mp4"], "count": 2})
    assert caches(edge.url) == {"a": "MISS", "b": "MISS", "c": "HIT", "d": "HIT"}
    assert httpx.post(edge.url + "/_edge/purge?tag=red").json() == {"purged": ["/a.mp4"], "count": 1}  # not Red
    assert httpx.post(edge.url + "/_edge/purge?tag=none").json() == {"purged": [], "count": 0}
    assert caches(edge.url) == {"a": "MISS", "b": "HIT", "c": "HIT", "d": "HIT"}
    # A new version with other tags: purged by its new tags only.
    origin.objects["/c.mp4"] = Obj(PLAIN, headers={"surrogate-key": "green", "cache-control": "max-age=600"})
    assert httpx.post(edge.url + "/_edge/purge?path=/c.mp4").json()["count"] == 1
    assert caches(edge.url, "c") == {"c": "MISS"}
    assert httpx.post(edge.url + "/_edge/purge?tag=green").json() == {"purged": ["/b.mp4", "/c.mp4"], "count": 2}
    for query, message in (("tag=a%20b", "Bad Request: a tag is 1 to 1024 visible ASCII characters, without commas"),
                           ("tag=a&path=/a.mp4", "Bad Request: give exactly one of ?path=/some/file, "
                                                 "?prefix=/some/folder/ or ?tag=name"),
                           ("tag=a&soft=yes", "Bad Request: soft is 1 (mark stale, the next request revalidates) "
                                              "or 0")):
        refused = httpx.post(f"{edge.url}/_edge/purge?{query}")
        assert (refused.status_code, refused.text) == (400, message + "\n")


def test_forward_cache_tags(upstream, http_settings: Settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    tagged_origin(origin)
    edge = make_server(http_settings, forward_cache_tags=True)
    for _ in range(2):  # the miss and the hit
        a, b = httpx.get(edge.url + "/a.mp4"), httpx.get(edge.url + "/b.mp4")
        assert (a.headers["surrogate-key"], b.headers["cache-tag"]) == ("red blue", "blue,green")


def test_a_purge_by_tag_reaches_the_shield(settings: Settings, tmp_path: Path) -> None:
    origin = Upstream()
    tagged_origin(origin)
    base = dataclasses.replace(settings, block_size=256 * 1024, cache_size_limit=64 * 1024**2,
                               max_object_size=32 * 1024**2)
    with RunningServer(dataclasses.replace(base, server_name=""), app=origin) as o, \
            RunningServer(dataclasses.replace(base, origin=o.url, cache_dir=str(tmp_path / "shield"),
                                              cache_name="shield", forward_cache_tags=True)) as shield, \
            RunningServer(dataclasses.replace(base, origin=shield.url, cache_dir=str(tmp_path / "edge"),
                                              cache_name="edge", purge_peers=shield.url)) as edge:
        assert caches(edge.url) == dict.fromkeys("abcd", "MISS")
        assert "surrogate-key" not in httpx.get(edge.url + "/a.mp4").headers  # the edge's own clients: none
        asked = len(origin.hits)
        assert httpx.post(edge.url + "/_edge/purge?tag=blue&soft=1").json() == {
            "purged": ["/a.mp4", "/b.mp4"], "count": 2}
        # Both tiers revalidate what was tagged (the shield first); the rest is a hit on the edge.
        assert caches(edge.url) == {"a": "HIT", "b": "HIT", "c": "HIT", "d": "HIT"}
        conditional = [h for h in origin.hits[asked:] if "if-none-match" in h.headers]
        assert sorted(h.path for h in conditional) == ["/a.mp4", "/b.mp4"]
        assert len(origin.hits) == asked + 2


def test_soft_purge_then_the_origin_down_serves_the_old_bytes_stale(
        settings: Settings, make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    origin = Upstream()
    body = pattern(300_000, 5)
    origin.objects["/v/a.mp4"] = Obj(body, headers={"cache-control": "max-age=3600"})
    origin.objects["/v/b.mp4"] = Obj(body[:100], headers={"cache-control": "max-age=3600"})
    with RunningServer(dataclasses.replace(settings, server_name=""), app=origin) as o:
        edge = make_server(settings, origin=o.url, origin_response_timeout=2.0, block_size=256 * 1024)
        for path in ("/v/a.mp4", "/v/b.mp4"):
            assert httpx.get(edge.url + path).headers["x-cache"] == "MISS"
        assert httpx.post(edge.url + "/_edge/purge?prefix=/v/&soft=1").json() == {
            "purged": ["/v/a.mp4", "/v/b.mp4"], "count": 2}
        # The origin up: the next request revalidates, and a 304 keeps the stored bytes.
        revalidated = httpx.get(edge.url + "/v/b.mp4")
        assert (revalidated.status_code, revalidated.content) == (200, body[:100])
        assert revalidated.headers["cache-status"] == "edgecache; fwd=stale; fwd-status=304; stored"
        assert origin.gets("/v/b.mp4")[-1].headers["if-none-match"] == origin.objects["/v/b.mp4"].etag
        assert httpx.get(edge.url + "/v/b.mp4").headers["cache-status"].startswith("edgecache; hit; ttl=")
    # The origin down: the old bytes, marked stale (RFC 9111 section 4.2.4, stale_if_unreachable).
    for headers, status, expected in (({}, 200, body), ({"range": "bytes=1000-1999"}, 206, body[1000:2000])):
        stale = httpx.get(edge.url + "/v/a.mp4", headers=headers)
        assert (stale.status_code, stale.content) == (status, expected)
        assert (stale.headers["x-cache"], stale.headers["cache-status"]) == (
            "STALE", 'edgecache; fwd=stale; detail="unreachable"')
    # A purge proper leaves nothing to serve.
    assert httpx.post(edge.url + "/_edge/purge?path=/v/a.mp4").json()["count"] == 1
    assert httpx.get(edge.url + "/v/a.mp4").status_code == 502


def test_soft_purge_and_stale_if_error(upstream, http_settings: Settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/s.mp4"] = Obj(PLAIN, headers={"cache-control": "max-age=3600, stale-if-error=600"})
    edge = make_server(http_settings)
    assert httpx.get(edge.url + "/s.mp4").headers["x-cache"] == "MISS"
    assert httpx.post(edge.url + "/_edge/purge?path=/s.mp4&soft=true").json() == {"purged": ["/s.mp4"], "count": 1}
    origin.fail_status = 503
    stale = httpx.get(edge.url + "/s.mp4")
    assert (stale.status_code, stale.content, stale.headers["x-cache"]) == (200, PLAIN, "STALE")
    assert stale.headers["cache-status"] == 'edgecache; fwd=stale; fwd-status=503; detail="stale"'


def test_the_purge_command_by_tag_and_soft(upstream, http_settings: Settings, make_server, tmp_path: Path,  # type: ignore[no-untyped-def]
                                           capsys: pytest.CaptureFixture[str]) -> None:
    origin, _ = upstream
    tagged_origin(origin)
    edge = make_server(http_settings)
    caches(edge.url)
    config = tmp_path / "edge.toml"
    config.write_text(f"cache_dir = {json.dumps(http_settings.cache_dir)}\n")
    assert main(["purge", "--config", str(config), "--tag", "green"]) == 0
    assert main(["purge", "--config", str(config), "--tag", "red", "--soft"]) == 0
    assert main(["purge", "--config", str(config), "--tag", "a,b"]) == 2
    out, err = capsys.readouterr()
    assert out == '{"purged": ["/b.mp4"], "count": 1}\n{"purged": ["/a.mp4"], "count": 1}\n'
    assert err == "edgecache purge: a tag is 1 to 1024 visible ASCII characters, without commas\n"
    # The running edge sees both at once: /b.mp4 is fetched again, /a.mp4 revalidated (a 304).
    assert caches(edge.url) == {"a": "HIT", "b": "MISS", "c": "HIT", "d": "HIT"}
    assert "if-none-match" in origin.gets("/a.mp4")[-1].headers
