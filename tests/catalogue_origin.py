"""An origin of made-up objects, in a process of its own, counting the body bytes it sends.

    python -m tests.catalogue_origin      (prints its port, then serves until stdin closes)

GET /o/<number>-<kib> answers <kib> KiB of bytes that differ from object to object, with a
strong ETag, a year of freshness and byte ranges (If-Range honoured); GET /_count answers
{"bytes": ..., "requests": ...}. Used where the test process must not share its CPU with
the origin (tests/test_policy_agreement.py).
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import sys

import uvicorn

NOISE = random.Random(7).randbytes(4 * 1024 * 1024 + 4096)
_PATH = re.compile(r"/o/(\d+)-(\d+)")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def body_of(number: int, kib: int) -> bytes:
    start = number % 4096
    return NOISE[start: start + kib * 1024]


class Catalogue:
    def __init__(self) -> None:
        self.bytes = 0
        self.requests = 0

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/_count":
            await self._send(send, 200, [(b"content-type", b"application/json")],
                             json.dumps({"bytes": self.bytes, "requests": self.requests}).encode(), count=False)
            return
        self.requests += 1
        m = _PATH.fullmatch(scope["path"])
        if m is None or scope["method"] not in ("GET", "HEAD"):
            await self._send(send, 404, [], b"")
            return
        body = body_of(int(m[1]), int(m[2]))
        etag = f'"{m[1]}-{m[2]}"'.encode()
        fields = [(b"etag", etag), (b"cache-control", b"public, max-age=31536000"), (b"accept-ranges", b"bytes"),
                  (b"content-type", b"video/mp4")]
        headers = dict(scope["headers"])
        asked = _RANGE.fullmatch(headers.get(b"range", b"").decode())
        if asked and headers.get(b"if-range", etag) == etag and int(asked[1]) < len(body):
            first, last = int(asked[1]), min(int(asked[2] or len(body) - 1), len(body) - 1)
            fields.append((b"content-range", f"bytes {first}-{last}/{len(body)}".encode()))
            await self._send(send, 206, fields, body[first: last + 1], head=scope["method"] == "HEAD")
            return
        await self._send(send, 200, fields, body, head=scope["method"] == "HEAD")

    async def _send(self, send, status: int, fields: list[tuple[bytes, bytes]], body: bytes,  # type: ignore[no-untyped-def]
                    head: bool = False, count: bool = True) -> None:
        fields = [*fields, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": fields})
        if not head and count:
            self.bytes += len(body)
        await send({"type": "http.response.body", "body": b"" if head else body})


async def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    server = uvicorn.Server(uvicorn.Config(Catalogue(), log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes stdin
    server.should_exit = True
    await serving


if __name__ == "__main__":
    asyncio.run(main())
