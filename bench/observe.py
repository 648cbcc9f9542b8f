"""Micro-benchmark: what the edge's front layer (its fields, the metrics and the access log) adds to one
request, in CPU time.

    python bench/observe.py [--requests 200000]

Drives a bare ASGI app that answers a 1 KiB hit (the headers of a real one) directly,
with no server and no sockets, bare and behind proxy.server.front.Front (no ready answers): metrics
only, then metrics and a combined or JSON access log line (written by the log's own
thread to /dev/null). Runs with prometheus_client in multiprocess mode, as
`edgecache serve` does. Prints microseconds of this process's CPU time per request,
the best of 5 rounds, and the difference to the bare app.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="edgecache-bench-")  # before the import below

from proxy.ops.accesslog import LineWriter  # noqa: E402
from proxy.server.front import Front  # noqa: E402

BODY = b"x" * 1024
HEADERS = [(b"accept-ranges", b"bytes"), (b"etag", b'"18ecbf7a5b46e8e2-400"'), (b"content-type", b"text/plain"),
           (b"content-length", b"1024"), (b"age", b"3"), (b"cache-status", b"edgecache; hit; ttl=3596"),
           (b"x-cache", b"HIT")]
SCOPE = {"type": "http", "http_version": "1.1", "method": "GET", "path": "/small.txt", "raw_path": b"/small.txt",
         "query_string": b"", "client": ("127.0.0.1", 50000), "headers": [(b"host", b"127.0.0.1:8080"),
         (b"user-agent", b"wrk"), (b"accept", b"*/*")]}


async def hit(scope, receive, send):  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


async def receive():  # type: ignore[no-untyped-def]
    return {"type": "http.request", "body": b""}


async def send(message):  # type: ignore[no-untyped-def]
    return None


async def cpu_per_request(app, requests: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(requests):
            await app(SCOPE, receive, send)
        best = min(best, (time.process_time() - started) / requests * 1e6)
    return best


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    devnull = open(os.devnull, "w")  # noqa: SIM115
    writer = LineWriter(devnull)
    writer.start()
    def front(write, log_format: str) -> Front:  # type: ignore[no-untyped-def]
        return Front(hit, answers=None, unkeyed=(), server="edgecache", write=write, log_format=log_format,
                     proxies=(), forwarded_header="x-forwarded-for")

    variants = [("bare app", hit),
                ("+ fields, metrics", front(None, "combined")),
                ("+ fields, metrics, combined log", front(writer.put, "combined")),
                ("+ fields, metrics, json log", front(writer.put, "json"))]
    bare = None
    for name, app in variants:
        us = await cpu_per_request(app, args.requests)
        bare = us if bare is None else bare
        print(f"{name:34} {us:6.2f} us/request  (+{us - bare:.2f})")
    writer.close()


if __name__ == "__main__":
    asyncio.run(main())
