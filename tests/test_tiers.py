"""Tiered edges: edges whose origin is a shield edge, all real uvicorn servers on loopback."""
from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import Settings
from proxy.http.cachestatus import CACHE_NAME, _chained, chained
from tests.conftest import RunningServer, pattern
from tests.upstream import Obj, Upstream


@pytest.mark.parametrize("headers, expected", [
    ([("Cache-Status", "edgecache; hit")], [("Cache-Status", "edge-1; hit")]),
    ([("ETag", '"x"'), ("Cache-Status", "shield; fwd=uri-miss; stored"), ("X-Cache", "MISS"),
      ("Cache-Status", "edgecache; hit; ttl=5"), ("X-Cache", "HIT")],
     [("ETag", '"x"'), ("Cache-Status", "shield; fwd=uri-miss; stored, edge-1; hit; ttl=5"), ("X-Cache", "HIT")]),
    ([("cache-status", "origin-cdn; hit, shield; hit"), ("Cache-Status", "edgecache; fwd=miss")],
     [("Cache-Status", "origin-cdn; hit, shield; hit, edge-1; fwd=miss")]),
    # A next hop with the default name keeps it; only this cache's own member is renamed.
    ([("Cache-Status", "edgecache; hit"), ("Cache-Status", "edgecache; fwd=uri-miss")],
     [("Cache-Status", "edgecache; hit, edge-1; fwd=uri-miss")]),
    ([("Content-Type", "text/plain")], [("Content-Type", "text/plain")]),
])
def test_cache_status_keeps_the_next_hops_members_first(headers: list, expected: list) -> None:
    assert chained(headers, "edge-1") == expected


_FIELDS = st.lists(st.tuples(st.sampled_from(["Cache-Status", "cache-status", "CACHE-STATUS", "X-Cache", "x-cache",
                                              "ETag", "X-Cachex", "Cache-Statu"]),
                             st.sampled_from(["edgecache; hit", "shield; hit", " ", "HIT", "MISS", "x"])), max_size=6)


@given(_FIELDS)
def test_the_default_names_shortcut_answers_as_the_general_rule(headers: list[tuple[str, str]]) -> None:
    assert chained(headers, CACHE_NAME) == _chained(headers, CACHE_NAME)


@dataclasses.dataclass
class Tiers:
    origin: Upstream
    shield: RunningServer
    edges: list[RunningServer]


@pytest.fixture
def tiers(settings: Settings, tmp_path) -> Iterator[Tiers]:  # type: ignore[no-untyped-def]
    """A counting origin, a shield in front of it, and three edges in front of the shield."""
    base = dataclasses.replace(settings, block_size=256 * 1024, cache_size_limit=64 * 1024 * 1024,
                               max_object_size=32 * 1024 * 1024, origin_response_timeout=5.0)
    origin = Upstream()
    with RunningServer(dataclasses.replace(base, server_name=""), app=origin) as o, \
            RunningServer(dataclasses.replace(base, origin=o.url, cache_dir=str(tmp_path / "shield"),
                                              cache_name="shield")) as shield:
        edges = [RunningServer(dataclasses.replace(base, origin=shield.url, cache_dir=str(tmp_path / f"e{i}"),
                                                   cache_name=f"edge-{i}")) for i in (1, 2, 3)]
        for edge in edges:
            edge.__enter__()
        try:
            yield Tiers(origin, shield, edges)
        finally:
            for edge in edges:
                edge.__exit__(None, None, None)


async def _get_all(urls: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=20) as c:
        return list(await asyncio.gather(*(c.get(url) for url in urls)))


def test_three_edges_missing_at_once_cost_one_origin_fetch(tiers: Tiers) -> None:
    body = pattern(600_000, 9)  # three blocks
    tiers.origin.objects["/v/a.mp4"] = Obj(body)
    tiers.origin.delay = 0.3  # the shield's fetch is still under way when the others arrive
    replies = asyncio.run(_get_all([edge.url + "/v/a.mp4" for edge in tiers.edges]))
    assert [(r.status_code, r.content) for r in replies] == [(200, body)] * 3
    assert len(tiers.origin.gets("/v/a.mp4")) == 3  # one per block, whoever asked
    assert tiers.origin.bytes_sent == len(body)
    for i, r in enumerate(replies, 1):
        # One field: the shield's member (nearest the origin) first, then this edge's.
        shield, edge = r.headers["cache-status"].split(", ")
        assert shield.startswith("shield; ")
        assert edge == f"edge-{i}; fwd=uri-miss; fwd-status=206; stored"
        assert r.headers["x-cache"] == "MISS"
    assert sum(r.headers["cache-status"].startswith("shield; fwd=uri-miss;") for r in replies) == 1

    again = httpx.get(tiers.edges[0].url + "/v/a.mp4", headers={"range": "bytes=300000-300009"})
    assert (again.status_code, again.content) == (206, body[300000:300010])
    # A hit replays the shield's member it stored with the response, then says hit itself.
    stored_member = replies[0].headers["cache-status"].split(", ")[0]
    (status,) = again.headers.get_list("cache-status")
    assert re.fullmatch(re.escape(stored_member) + r", edge-1; hit; ttl=\d+", status)
    assert again.headers.get_list("x-cache") == ["HIT"]
    assert tiers.origin.bytes_sent == len(body)


def test_a_purge_reaches_every_tier_shield_first(tiers: Tiers) -> None:
    old, new = pattern(1000, 1), pattern(1200, 2)
    tiers.origin.objects["/p.bin"] = Obj(old)
    edge = tiers.edges[0]
    assert httpx.get(edge.url + "/p.bin").content == old
    tiers.origin.objects["/p.bin"] = Obj(new)
    # The edge alone: it fetches again from the shield, which still holds the old bytes.
    assert httpx.post(edge.url + "/_edge/purge?path=/p.bin").json() == {"purged": ["/p.bin"], "count": 1}
    stale = httpx.get(edge.url + "/p.bin")
    assert stale.content == old and stale.headers["cache-status"].startswith("shield; hit")
    # Shield first, then the edges: the new bytes.
    for server in (tiers.shield, *tiers.edges):
        assert httpx.post(server.url + "/_edge/purge?path=/p.bin").status_code == 200
    fresh = httpx.get(edge.url + "/p.bin")
    assert fresh.content == new
    assert fresh.headers["cache-status"] == "shield; fwd=uri-miss; fwd-status=206; stored, " \
                                            "edge-1; fwd=uri-miss; fwd-status=206; stored"


def test_purge_peers_forward_a_purge_to_the_shield_with_the_token(settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = dataclasses.replace(settings, write_tokens="tier-token")
    origin = Upstream()
    old, new = pattern(1000, 1), pattern(1200, 2)
    origin.objects["/p.bin"] = Obj(old)
    auth = {"authorization": "Bearer tier-token"}
    with RunningServer(dataclasses.replace(settings, server_name=""), app=origin) as o, \
            RunningServer(dataclasses.replace(base, origin=o.url, cache_dir=str(tmp_path / "s"),
                                              cache_name="shield")) as shield, \
            RunningServer(dataclasses.replace(base, origin=shield.url, cache_dir=str(tmp_path / "e"),
                                              cache_name="edge", purge_peers=shield.url)) as edge, \
            RunningServer(dataclasses.replace(base, origin=shield.url, cache_dir=str(tmp_path / "f"),
                                              cache_name="other", purge_peers=o.url)) as misconfigured:
        assert httpx.get(edge.url + "/p.bin").content == old
        origin.objects["/p.bin"] = Obj(new)
        # Without the token nothing is purged, on either tier.
        assert httpx.post(edge.url + "/_edge/purge?path=/p.bin").status_code == 401
        assert httpx.get(edge.url + "/p.bin").content == old
        r = httpx.post(edge.url + "/_edge/purge?path=/p.bin", headers=auth)
        assert (r.status_code, r.json()) == (200, {"purged": ["/p.bin"], "count": 1})
        fresh = httpx.get(edge.url + "/p.bin")
        assert fresh.content == new
        assert fresh.headers["cache-status"] == "shield; fwd=uri-miss; fwd-status=206; stored, " \
                                                "edge; fwd=uri-miss; fwd-status=206; stored"
        # A peer that does not confirm (here the origin: 204, not an edge's 200) makes the purge a 502 naming it.
        r = httpx.post(misconfigured.url + "/_edge/purge?path=/p.bin", headers=auth)
        assert r.status_code == 502
        assert r.json() == {"purged": [], "count": 0, "peers_failed": [f"{o.url}: 204"]}
    assert [h.headers.get("authorization") for h in origin.hits if h.method == "POST"] == ["Bearer tier-token"]


def test_purge_hops_are_bounded() -> None:
    from proxy.writes.peers import MAX_HOPS, hops_left

    assert [hops_left(v) for v in (None, "", "x", "3", "0", "99")] == [MAX_HOPS, MAX_HOPS, MAX_HOPS, 3, 0, MAX_HOPS]
