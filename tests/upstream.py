"""A small upstream HTTP origin for tests: in-memory objects, counted hits and bytes, misbehaviours."""
from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from dataclasses import dataclass, field

from proxy.http.headers import format_http_date, parse_http_date


async def lifespan(receive, send) -> None:  # type: ignore[no-untyped-def]
    """The ASGI lifespan protocol for a test origin: nothing to start or stop."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


@dataclass
class Obj:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    etag: str | None = None
    last_modified: int | None = 1_700_000_000
    status: int = 200
    chunked: bool = False  # no Content-Length: the body's end is the end of the stream

    def __post_init__(self) -> None:
        if self.etag is None:
            self.etag = '"' + hashlib.sha1(self.body).hexdigest()[:16] + '"'


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    sent: int = 0


class Upstream:
    """An ASGI origin. Flags: ignore_ranges, wrong_ranges (answers another range than asked),
    delay (before headers), gate (an Event to wait for, before headers), chunk_delay, fail_status."""

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.hits: list[Hit] = []
        self.ignore_ranges = False
        self.wrong_ranges = False
        self.delay = 0.0
        self.chunk_delay = 0.0
        self.chunk_size = 64 * 1024
        self.fail_status: int | None = None
        self.gate: threading.Event | None = None  # when set: every request waits for it to open
        self.received: dict[str, bytes] = {}

    @property
    def bytes_sent(self) -> int:
        return sum(h.sent for h in self.hits)

    def gets(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.method == "GET" and h.path == path]

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"] + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
        hit = Hit(scope["method"], path, headers)
        self.hits.append(hit)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await asyncio.to_thread(self.gate.wait)
        if self.fail_status and scope["method"] == "PUT":
            await self._send(send, hit, self.fail_status, {"content-type": "text/plain"}, b"origin failure")
            return
        if scope["method"] not in ("GET", "HEAD"):
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            self.received[path] = body
            if scope["method"] == "PUT":
                self.objects[path] = Obj(body)
            elif scope["method"] == "DELETE":
                self.objects.pop(path, None)
            await self._send(send, hit, 201 if scope["method"] == "PUT" else 204, {}, b"")
            return
        if self.fail_status:
            await self._send(send, hit, self.fail_status, {"content-type": "text/plain"}, b"origin failure")
            return
        obj = self.objects.get(path)
        if obj is None:
            await self._send(send, hit, 404, {"content-type": "text/plain"}, b"no such object")
            return
        out = {"content-type": "video/mp4", "accept-ranges": "bytes", **obj.headers}
        if obj.etag:
            out["etag"] = obj.etag
        if obj.last_modified is not None:
            out["last-modified"] = format_http_date(obj.last_modified)
        if obj.chunked:
            out["transfer-encoding"] = "chunked"
        if obj.status != 200:
            await self._send(send, hit, obj.status, out, obj.body, scope["method"] == "HEAD")
            return
        inm = headers.get("if-none-match")
        ims = parse_http_date(headers.get("if-modified-since"))
        if (inm and obj.etag and obj.etag in inm) or (
            not inm and ims is not None and obj.last_modified is not None and obj.last_modified <= ims
        ):
            await self._send(send, hit, 304, {k: v for k, v in out.items() if k != "content-type"}, b"", True)
            return
        size = len(obj.body)
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("range", ""))
        if_range = headers.get("if-range")
        range_ok = m and not self.ignore_ranges and (
            if_range is None or if_range in (obj.etag, out.get("last-modified"))
        )
        if range_ok:
            first = int(m.group(1)) + (1 if self.wrong_ranges else 0)
            last = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if first >= size:
                await self._send(send, hit, 416, {"content-range": f"bytes */{size}"}, b"")
                return
            out["content-range"] = f"bytes {first}-{last}/{size}"
            await self._send(send, hit, 206, out, obj.body[first : last + 1], scope["method"] == "HEAD")
            return
        await self._send(send, hit, 200, out, obj.body, scope["method"] == "HEAD")

    async def _send(  # type: ignore[no-untyped-def]
        self, send, hit: Hit, status: int, headers: dict[str, str], body: bytes, head: bool = False
    ) -> None:
        hit.status = status
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        if status not in (304,) and "content-length" not in headers and "transfer-encoding" not in headers:
            raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        if head or status == 304:
            await send({"type": "http.response.body", "body": b""})
            return
        for i in range(0, len(body), self.chunk_size):
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            piece = body[i : i + self.chunk_size]
            hit.sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
