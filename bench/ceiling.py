"""The Python ceiling for bench/hits.py: a bare ASGI app doing a hit's work and nothing else.

    EDGECACHE_CEILING_DIR=DIR uvicorn --app-dir bench ceiling:app --loop uvloop --http httptools

It answers GET for the files in DIR, read once at start (as a warm cache knows them): the
1 KiB object from memory, a single `Range: bytes=a-b` of the big one with os.pread in
512 KiB pieces in a thread and `send` (no zero-copy), If-None-Match or If-Modified-Since (the
exact date it sends) with 304, and the
headers the benchmark checks (ETag, X-Cache: HIT). No routing framework, no cache
decisions, no store: what uvicorn + httptools + uvloop cost for the same bytes.
"""
from __future__ import annotations

import os
import re
from email.utils import formatdate
from typing import Any

import anyio

ROOT = os.environ.get("EDGECACHE_CEILING_DIR", ".")
PIECE = 512 * 1024
_RANGE = re.compile(rb"bytes=(\d+)-(\d+)")
_FILES = {
    "/" + name: os.path.join(ROOT, name)
    for name in (os.listdir(ROOT) if os.path.isdir(ROOT) else [])
    if os.path.isfile(os.path.join(ROOT, name))
}
_SIZES = {path: os.path.getsize(full) for path, full in _FILES.items()}
_SMALL = {path: open(full, "rb").read() for path, full in _FILES.items() if _SIZES[path] <= 64 * 1024}
_FDS = {path: os.open(full, os.O_RDONLY) for path, full in _FILES.items()}
_ETAGS = {path: f'"{size:x}"'.encode() for path, size in _SIZES.items()}
_MODIFIED = {path: formatdate(os.path.getmtime(full), usegmt=True).encode() for path, full in _FILES.items()}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path not in _FILES:
        await _answer(send, 404, [], b"")
        return
    headers = dict(scope["headers"])
    base = [(b"etag", _ETAGS[path]), (b"last-modified", _MODIFIED[path]), (b"x-cache", b"HIT"),
            (b"content-type", b"video/mp4")]
    if headers.get(b"if-none-match") == _ETAGS[path] or headers.get(b"if-modified-since") == _MODIFIED[path]:
        await _answer(send, 304, base, b"")
        return
    size = _SIZES[path]
    found = _RANGE.fullmatch(headers.get(b"range", b""))
    first, last = (int(found.group(1)), min(int(found.group(2)), size - 1)) if found else (0, size - 1)
    status = 206 if found else 200
    if found:
        base.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
    if path in _SMALL:
        await _answer(send, status, base, _SMALL[path][first:last + 1])
        return
    length = last + 1 - first
    await send({"type": "http.response.start", "status": status,
                "headers": [*base, (b"content-length", str(length).encode())]})
    pos = first
    while pos <= last:
        data = await anyio.to_thread.run_sync(os.pread, _FDS[path], min(PIECE, last + 1 - pos), pos)
        pos += len(data)
        await send({"type": "http.response.body", "body": data, "more_body": pos <= last})


async def _answer(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
