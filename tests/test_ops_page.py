"""The page's own routes: the HTML and its files, and the paged listings behind the write rule."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest

from proxy.app import create_app
from proxy.config import Settings
from proxy.ops.page import origin_files
from tests.conftest import SAMPLE_SIZE

pytestmark = pytest.mark.anyio


async def test_the_page_and_its_files(client: httpx.AsyncClient) -> None:
    page = await client.get("/_edge/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/_edge/static/edge.js" defer></script>' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
    script = await client.get("/_edge/static/edge.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8" and "XMLHttpRequest" in script.text
    assert (await client.get("/_edge/static/edge.css")).status_code == 200
    assert (await client.get("/_edge/static/../app.py")).status_code == 404
    assert (await client.get("/_edge/static/edge.html")).status_code == 404
    welcome = (await client.get("/")).json()  # the JSON welcome stays, and names the page
    assert (welcome["page"], welcome["metrics"]) == ("/_edge/", "/_edge/metrics")


async def test_cached_objects_are_listed_a_page_at_a_time(settings: Settings) -> None:
    settings = dataclasses.replace(settings, block_size=1024 * 1024)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)),
                                 base_url="http://edge.test") as c:
        assert (await c.get("/video/clip.mp4", headers={"Range": "bytes=0-9"})).status_code == 206
        assert (await c.get("/small.txt")).status_code == 200
        assert (await c.get("/dir/a%20b.webm")).status_code == 200
        for _ in range(3):
            assert (await c.get("/small.txt")).headers["x-cache"] == "HIT"
        await c.get("/small.txt", headers={"Range": "bytes=0-0"})
        service = c._transport.app.state.service  # type: ignore[attr-defined]
        await service.settle()  # the clip's first block is filled on after its 10 bytes were answered
        await service.flush_hits()
        first = (await c.get("/_edge/objects?limit=2")).json()
        second = (await c.get("/_edge/objects", params={"limit": "2", "after": first["next"]})).json()
        assert (await c.get("/_edge/objects?limit=0")).status_code == 400
        assert (await c.get("/_edge/objects?limit=101")).status_code == 400
    rows = first["items"] + second["items"]
    for row in rows:
        assert 0 <= row.pop("age") < 60
    assert sorted(rows, key=lambda r: r["key"]) == [
        {"key": "/dir/a b.webm", "url": "/dir/a%20b.webm", "size": 1000, "blocks": 1, "blocks_cached": 1, "hits": 0},
        {"key": "/small.txt", "url": "/small.txt", "size": 12, "blocks": 1, "blocks_cached": 1, "hits": 4},
        {"key": "/video/clip.mp4", "url": "/video/clip.mp4", "size": SAMPLE_SIZE, "blocks": 4, "blocks_cached": 1,
         "hits": 0},
    ]
    assert len(first["items"]) == 2 and first["next"] and second["next"] is None


async def test_listings_follow_the_write_rule(settings: Settings) -> None:
    settings = dataclasses.replace(settings, write_tokens="s3cret")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)),
                                 base_url="http://edge.test") as c:
        for path in ("/_edge/objects", "/_edge/files"):
            assert (await c.get(path)).status_code == 401
            assert (await c.get(path, headers={"Authorization": "Bearer nope"})).status_code == 403
            assert (await c.get(path, headers={"Authorization": "Bearer s3cret"})).status_code == 200
        assert (await c.get("/_edge/")).status_code == 200  # the page itself holds nothing
    remote = httpx.ASGITransport(app=create_app(dataclasses.replace(settings, write_tokens="")),
                                 client=("192.0.2.9", 4000))
    async with httpx.AsyncClient(transport=remote, base_url="http://edge.test") as c:
        assert (await c.get("/_edge/files")).status_code == 403  # no tokens: loopback only


async def test_origin_files_are_listed_a_page_at_a_time(client: httpx.AsyncClient, origin_dir: Path) -> None:
    first = (await client.get("/_edge/files?limit=2")).json()
    rest = (await client.get("/_edge/files", params={"after": first["next"]})).json()
    assert first == {"items": [{"path": "/dir/a b.webm", "url": "/dir/a%20b.webm", "size": 1000},
                               {"path": "/empty.bin", "url": "/empty.bin", "size": 0}], "next": "empty.bin"}
    # no dot names, no links (escape.txt, inside-link.txt)
    assert rest == {"items": [{"path": "/small.txt", "url": "/small.txt", "size": 12},
                              {"path": "/video/clip.mp4", "url": "/video/clip.mp4", "size": SAMPLE_SIZE}],
                    "next": None}
    assert origin_files(str(origin_dir / "missing"), "", 10) == ([], None)


async def test_an_http_origin_has_no_files_to_list(http_settings: Settings) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(http_settings)),
                                 base_url="http://edge.test") as c:
        assert (await c.get("/_edge/files")).json() == {"items": [], "next": None}


def test_the_files_listing_pages_in_the_order_of_its_cursor(tmp_path: Path) -> None:
    root = tmp_path / "o"
    for name in ("a/z.txt", "a-b.txt", "a/b/c.txt", "b.txt", "a0.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    seen, after = [], ""
    while True:
        page, after = origin_files(str(root), after, 1)
        seen += [item["path"] for item in page]
        if after is None:
            break
    assert seen == sorted(seen) == ["/a-b.txt", "/a/b/c.txt", "/a/z.txt", "/a0.txt", "/b.txt"]

