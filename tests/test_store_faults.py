"""Every store call can fail (disk full, database locked): the edge then serves from the origin,
with exact bytes, never a 500, and never leaks an origin connection."""
from __future__ import annotations

import errno
import functools
import sqlite3

import httpx
import pytest

import proxy.app
from proxy.origins.upstream import UpstreamOrigin
from proxy.store.disk import Store
from proxy.store.handles import OpenBlocks
from tests.conftest import pattern
from tests.upstream import Obj

pytestmark = pytest.mark.anyio

BODY = pattern(3 * 256 * 1024 + 99, 7)  # several blocks of http_settings' 256 KiB
STORE_METHODS = ["get_meta", "vary_index", "generation", "put_meta", "delete", "open_block", "has_block",
                 "new_part", "publish_block", "put_all", "take_lease", "renew_lease", "lease_holder", "release_lease",
                 "purge", "drop_blocks"]
FAULTS = {
    "disk full": OSError(errno.ENOSPC, "No space left on device"),
    "locked": sqlite3.OperationalError("database is locked"),
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("method", STORE_METHODS)
async def test_a_failing_store_degrades_to_the_origin(  # type: ignore[no-untyped-def]
    upstream, http_settings, make_server, monkeypatch, method: str, fault: str
) -> None:
    origin, _ = upstream
    origin.objects["/v.mp4"] = Obj(BODY, {"cache-control": "max-age=600"})
    origin.objects["/w.mp4"] = Obj(BODY[:1000], {"cache-control": "max-age=600"})
    bare = Obj(BODY[:5000], {"cache-control": "max-age=600"}, etag="", last_modified=None)
    bare.etag = None  # no validator: its one stored copy cannot be patched from the origin
    origin.objects["/n.mp4"] = bare
    # A pool of two origin connections: one leaked per failure would soon turn every request into a 504.
    monkeypatch.setattr(proxy.app, "UpstreamOrigin", functools.partial(UpstreamOrigin, max_connections=2))
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
        assert (await c.get("/w.mp4")).content == BODY[:1000]  # something stored before the store breaks
        assert (await c.get("/n.mp4")).content == BODY[:5000]

        def broken(*args: object, **kwargs: object) -> object:
            raise FAULTS[fault]

        monkeypatch.setattr(Store, method, broken)
        for _ in range(3):
            for path, body in (("/v.mp4", BODY), ("/w.mp4", BODY[:1000]), ("/n.mp4", BODY[:5000])):
                full = await c.get(path)
                assert (full.status_code, full.content) == (200, body), (path, full.headers)
                part = await c.get(path, headers={"Range": "bytes=300-799"})
                assert (part.status_code, part.content) == (206, body[300:800])
                head = await c.head(path)
                assert head.status_code == 200
        purge = await c.post("/_edge/purge?path=/v.mp4")
        assert purge.status_code in (200, 503)


async def test_no_descriptor_to_spare_for_a_hit_serves_it_all_the_same(  # type: ignore[no-untyped-def]
        upstream, http_settings, make_server, monkeypatch) -> None:
    origin, _ = upstream
    big = pattern(300 * 1024, 7)  # above the size kept in memory: a hit is a span of an open block file
    origin.objects["/big"] = Obj(big, {"cache-control": "max-age=600"})
    edge = make_server(http_settings)
    async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
        assert (await c.get("/big")).content == big
        assert (await c.get("/big", headers={"Range": "bytes=10-19"})).status_code == 206
        real = OpenBlocks.acquire

        def acquire(self: OpenBlocks, key: str) -> int | bytes | None:
            if key in self._files:  # an open block file at hand: dup() finds no descriptor to spare
                raise OSError(errno.EMFILE, "Too many open files")
            return real(self, key)

        monkeypatch.setattr(OpenBlocks, "acquire", acquire)
        answer = await c.get("/big", headers={"Range": "bytes=10-19"})
        assert (answer.status_code, answer.content) == (206, big[10:20])
