"""Uploaded active content (html, svg, xhtml, xml, js) from a directory origin runs in an opaque
origin (Content-Security-Policy: sandbox) and is never sniffed (X-Content-Type-Options: nosniff)."""
from __future__ import annotations

import httpx
import pytest

from proxy.origins.local import active_content

pytestmark = pytest.mark.anyio

PAGE = b"<html><script>fetch('/_edge/purge?prefix=/', {method: 'POST'})</script></html>"


@pytest.mark.parametrize(
    "name, media",
    [
        ("x.html", "text/html; charset=utf-8"),
        ("x.htm", "text/html; charset=utf-8"),
        ("x.svg", "image/svg+xml"),
        ("x.xml", "text/xml"),
        ("x.xsl", "application/xml"),
        ("x.js", "text/javascript; charset=utf-8"),
        ("x.mjs", "application/javascript"),
        ("x.mpd", "application/dash+xml"),  # any +xml document can carry XHTML with scripts
    ],
)
async def test_uploaded_active_content_is_sandboxed(edge: httpx.AsyncClient, name: str, media: str) -> None:
    assert (await edge.put(f"/up/{name}", content=PAGE)).status_code == 201
    for _ in range(2):  # the miss and the stored copy
        r = await edge.get(f"/up/{name}")
        assert r.status_code == 200 and r.content == PAGE
        assert r.headers["content-type"] == media
        assert r.headers.get_list("content-security-policy") == ["sandbox"]
        assert r.headers.get_list("x-content-type-options") == ["nosniff"]
    ranged = await edge.get(f"/up/{name}", headers={"Range": "bytes=0-5"})
    assert ranged.status_code == 206 and ranged.headers["content-security-policy"] == "sandbox"
    head = await edge.head(f"/up/{name}")
    assert head.headers["content-security-policy"] == "sandbox"


@pytest.mark.parametrize(
    "name, media",
    [
        ("x.mp4", "video/mp4"),
        ("x.m3u8", "application/vnd.apple.mpegurl"),
        ("x.vtt", "text/vtt; charset=utf-8"),
        ("x.txt", "text/plain; charset=utf-8"),
        ("x.xhtml", "application/octet-stream"),  # unknown to the type table: never rendered (nosniff)
        ("x.bin", "application/octet-stream"),
    ],
)
async def test_passive_content_is_not_sandboxed(edge: httpx.AsyncClient, name: str, media: str) -> None:
    assert (await edge.put(f"/up/{name}", content=PAGE)).status_code == 201
    r = await edge.get(f"/up/{name}")
    assert r.headers["content-type"] == media and "content-security-policy" not in r.headers
    assert r.headers.get_list("x-content-type-options") == ["nosniff"]


def test_active_content_types() -> None:
    for media in ("text/html", "Text/HTML; charset=utf-8", "application/xhtml+xml", "image/svg+xml", "text/xml",
                  "application/xml", "application/rss+xml", "text/javascript", "application/javascript",
                  "application/x-javascript", "application/ecmascript", "text/ecmascript"):
        assert active_content(media), media
    for media in ("video/mp4", "text/plain", "application/json", "text/css", "application/octet-stream",
                  "application/vnd.apple.mpegurl", "image/png", "text/vtt"):
        assert not active_content(media), media
