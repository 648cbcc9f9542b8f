"""Serving the origin directory: exact bytes, status codes and headers, in-process and via uvicorn."""
from __future__ import annotations

import re

import httpx
import pytest

from proxy.http.headers import parse_http_date
from tests.conftest import SAMPLE_SIZE, RunningServer, pattern
from tests.test_ranges import parse_multipart

pytestmark = pytest.mark.anyio

CLIP = "/video/clip.mp4"
DATA = pattern(SAMPLE_SIZE)


async def test_full_get_is_byte_exact(edge: httpx.AsyncClient) -> None:
    r = await edge.get(CLIP)
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["content-length"] == str(SAMPLE_SIZE)
    assert r.headers["content-type"] == "video/mp4"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["cache-control"] == "public, max-age=3600"
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', r.headers["etag"])
    assert r.headers["etag"].endswith(f'-{SAMPLE_SIZE:x}"')
    assert r.headers["last-modified"].endswith(" GMT")
    assert parse_http_date(r.headers["last-modified"]) is not None
    assert "content-encoding" not in r.headers
    assert r.headers.get_list("date") and len(r.headers.get_list("date")) == 1
    assert r.headers.get_list("server") == ["edgecache"]


async def test_head_has_get_headers_and_no_body(edge: httpx.AsyncClient) -> None:
    get = await edge.get(CLIP)
    head = await edge.head(CLIP)
    assert head.status_code == 200 and head.content == b""
    per_response = ("date", "age", "cache-status", "x-cache")
    strip = lambda h: {k: v for k, v in h.items() if k not in per_response}  # noqa: E731
    assert strip(head.headers) == strip(get.headers)
    ranged = await edge.head(CLIP, headers={"Range": "bytes=0-9"})  # Range is GET-only
    assert ranged.status_code == 200 and ranged.headers["content-length"] == str(SAMPLE_SIZE)


@pytest.mark.parametrize(
    "field, first, last",
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-200", 100, 200),
        ("bytes=1000000-", 1000000, SAMPLE_SIZE - 1),
        ("bytes=-500", SAMPLE_SIZE - 500, SAMPLE_SIZE - 1),
        ("bytes=262140-786440", 262140, 786440),  # across chunk boundaries
        (f"bytes={SAMPLE_SIZE - 10}-{SAMPLE_SIZE + 1000}", SAMPLE_SIZE - 10, SAMPLE_SIZE - 1),
        ("bytes=5-9,0-4", 0, 9),  # adjacent ranges coalesce into one part
    ],
)
async def test_single_range(edge: httpx.AsyncClient, field: str, first: int, last: int) -> None:
    r = await edge.get(CLIP, headers={"Range": field})
    assert r.status_code == 206
    assert r.content == DATA[first : last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/{SAMPLE_SIZE}"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.headers["content-type"] == "video/mp4"
    assert r.headers["cache-control"] == "public, max-age=3600"


async def test_multipart_ranges(edge: httpx.AsyncClient) -> None:
    r = await edge.get(CLIP, headers={"Range": "bytes=0-9, 500000-500099, -7"})
    assert r.status_code == 206
    ctype = r.headers["content-type"]
    boundary = ctype.partition("boundary=")[2]
    assert ctype.startswith("multipart/byteranges; boundary=") and boundary
    assert r.headers["content-length"] == str(len(r.content))
    parts = parse_multipart(r.content, boundary)
    spans = [(0, 9), (500000, 500099), (SAMPLE_SIZE - 7, SAMPLE_SIZE - 1)]
    assert [p[1] for p in parts] == [DATA[a : b + 1] for a, b in spans]
    assert [p[0]["Content-Range"] for p in parts] == [f"bytes {a}-{b}/{SAMPLE_SIZE}" for a, b in spans]


@pytest.mark.parametrize("field", ["bytes=99999999-", f"bytes={SAMPLE_SIZE}-", "bytes=-0"])
async def test_unsatisfiable(edge: httpx.AsyncClient, field: str) -> None:
    r = await edge.get(CLIP, headers={"Range": field})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{SAMPLE_SIZE}"


@pytest.mark.parametrize("field", ["bytes=9-1", "items=0-1", "bytes=x", "bytes 0-1", "bytes=0-1;q"])
async def test_invalid_range_is_ignored(edge: httpx.AsyncClient, field: str) -> None:
    r = await edge.get(CLIP, headers={"Range": field})
    assert r.status_code == 200 and r.content == DATA


async def test_not_modified_and_its_headers(edge: httpx.AsyncClient) -> None:
    first = await edge.get("/small.txt")
    etag, lm = first.headers["etag"], first.headers["last-modified"]
    for headers in (
        {"If-None-Match": etag},
        {"If-None-Match": "W/" + etag},
        {"If-None-Match": f'"nope", {etag}'},
        {"If-None-Match": "*"},
        {"If-Modified-Since": lm},
    ):
        r = await edge.get("/small.txt", headers=headers)
        assert r.status_code == 304, headers
        assert r.content == b""
        assert r.headers["etag"] == etag
        assert r.headers["last-modified"] == lm
        assert r.headers["cache-control"] == "public, max-age=3600"
        assert "date" in r.headers and "content-length" not in r.headers
    r = await edge.get("/small.txt", headers={"If-None-Match": '"nope"', "If-Modified-Since": lm})
    assert r.status_code == 200 and r.content == b"hello, edge\n"


async def test_precondition_failed(edge: httpx.AsyncClient) -> None:
    r = await edge.get("/small.txt", headers={"If-Match": '"nope"'})
    assert r.status_code == 412
    r = await edge.get("/small.txt", headers={"If-Unmodified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"})
    assert r.status_code == 412
    etag = (await edge.head("/small.txt")).headers["etag"]
    r = await edge.get("/small.txt", headers={"If-Match": etag})
    assert r.status_code == 200


async def test_if_range(edge: httpx.AsyncClient) -> None:
    head = await edge.head(CLIP)
    etag, lm = head.headers["etag"], head.headers["last-modified"]
    for validator, status in ((etag, 206), (lm, 206), ('"old"', 200), ("W/" + etag, 200)):
        r = await edge.get(CLIP, headers={"Range": "bytes=10-19", "If-Range": validator})
        assert r.status_code == status, validator
        assert r.content == (DATA[10:20] if status == 206 else DATA)


async def test_zero_length_file(edge: httpx.AsyncClient) -> None:
    r = await edge.get("/empty.bin")
    assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "0"
    assert (await edge.get("/empty.bin", headers={"Range": "bytes=0-0"})).status_code == 416
    r = await edge.get("/empty.bin", headers={"Range": "bytes=-5"})
    assert r.status_code == 200 and r.headers["content-length"] == "0"


@pytest.mark.parametrize(
    "path, status",
    [
        ("/missing.mp4", 404),
        ("/dir", 404),
        ("/dir/", 404),
        ("/.secret", 404),
        ("/escape.txt", 404),  # symlink leading outside the root
        ("/video/%2e%2e/%2e%2e/outside.txt", 400),
        ("/video/..%2f..%2foutside.txt", 400),
        ("/a%5c..%5coutside.txt", 400),
        ("/a%00b", 400),
        ("/%2e%2e%2foutside.txt", 400),
    ],
)
async def test_hostile_and_missing_paths(edge: httpx.AsyncClient, path: str, status: int) -> None:
    r = await edge.get(path)
    assert r.status_code == status
    assert b"outside" not in r.content


async def test_symlink_inside_root_is_served(edge: httpx.AsyncClient) -> None:
    r = await edge.get("/inside-link.txt")
    assert r.status_code == 200 and r.content == b"hello, edge\n"


async def test_names_with_spaces_and_types(edge: httpx.AsyncClient) -> None:
    r = await edge.get("/dir/a%20b.webm")
    assert r.status_code == 200 and r.content == pattern(1000, 3)
    assert r.headers["content-type"] == "video/webm"


@pytest.mark.parametrize("method", ["DELETE", "OPTIONS", "TRACE", "PATCH", "PROPFIND"])
async def test_other_methods_get_405_with_allow(edge: httpx.AsyncClient, method: str) -> None:
    r = await edge.request(method, CLIP)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD, PUT, POST"


async def test_post_without_multipart_is_415(edge: httpx.AsyncClient) -> None:
    r = await edge.post("/video", content=b"raw")
    assert r.status_code == 415


async def test_compat_routes(edge: httpx.AsyncClient) -> None:
    welcome = await edge.get("/")
    assert welcome.status_code == 200 and welcome.json()["message"].startswith("Welcome")
    by_name = await edge.get("/get_video_by_name/clip.mp4", headers={"Range": "bytes=0-99"})
    assert by_name.status_code == 206 and by_name.content == DATA[:100]
    assets = await edge.get("/assets/small.txt")
    assert assets.status_code == 200 and assets.content == b"hello, edge\n"
    assert (await edge.get("/get_video_by_name/..%2fsmall.txt")).status_code == 400


async def test_health(edge: httpx.AsyncClient) -> None:
    r = await edge.get("/_edge/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.headers["cache-control"] == "no-store"
    assert (await edge.get("/_edge/nothing")).status_code == 404


def test_too_many_headers_get_431(server: RunningServer) -> None:
    headers = [(f"x-h{i}", "v") for i in range(150)]
    r = httpx.get(server.url + "/small.txt", headers=headers)
    assert r.status_code == 431
