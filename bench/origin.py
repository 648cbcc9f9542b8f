"""A counting origin for the cache benchmark: edgecache (uncached) serving a directory,
with the body bytes and requests it sends readable at /_count (and reset by POST /_count).

    python bench/origin.py DIRECTORY PORT [--delay-ms N]

--delay-ms makes it a slow origin: each request (but /_count) waits that long first.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.app import create_app  # noqa: E402
from proxy.config import Settings  # noqa: E402
from proxy.server.run import uvicorn_options  # noqa: E402


class Counting:
    def __init__(self, app, delay: float = 0.0) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.delay = delay
        self.bytes = 0
        self.requests = 0

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"] == "/_count":
            if scope["method"] == "POST":
                self.bytes = self.requests = 0
            body = json.dumps({"bytes": self.bytes, "requests": self.requests}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http":
            self.requests += 1
            if self.delay:
                await asyncio.sleep(self.delay)

        async def counted(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.body":
                self.bytes += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("port", type=int)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    directory, port = args.directory, args.port
    settings = Settings(origin=directory, cache_enabled=False, cache_control="public, max-age=86400",
                        port=port, log_level="warning", access_log=False)
    app = Counting(create_app(settings), args.delay_ms / 1e3)
    uvicorn.run(app, host="127.0.0.1", port=port, **uvicorn_options(settings))


if __name__ == "__main__":
    main()
