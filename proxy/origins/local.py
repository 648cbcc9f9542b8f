"""The origin directory: files opened safely below a root, answered like an HTTP server."""
from __future__ import annotations

import dataclasses
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from ..http.conditional import conditions_from
from ..http.freshness import Headers, get
from ..http.headers import content_type_for, make_etag
from ..http.model import Representation
from ..http.plan import plan_response
from ..streaming import plan_chunks
from .base import BodyAborted, OriginResponse, Target


class ShortRead(BodyAborted):
    """The file shrank while it was being served: the response cannot be completed."""


@dataclass
class OpenFile:
    """An open regular file and its representation; reads see this version only."""

    fd: int
    rep: Representation
    chunk_size: int

    async def read(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) in chunks of at most chunk_size."""
        offset = start
        while offset < end:
            want = min(self.chunk_size, end - offset)
            data = await anyio.to_thread.run_sync(os.pread, self.fd, want, offset)
            if len(data) != want:
                raise ShortRead(f"expected {want} bytes at {offset}, read {len(data)}")
            offset += want
            yield data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LocalOrigin:
    """Serves regular files below `root`; nothing outside it, not even through symlinks.

    It answers GET and HEAD with the same pure rules as the edge (ranges,
    preconditions), so the cache can treat it exactly like an HTTP origin.
    """

    kind = "directory"

    def __init__(
        self, root: str, *, chunk_size: int, cache_control: str, max_ranges: int, allow_dotfiles: bool = False
    ) -> None:
        self.root = os.path.realpath(root)
        self.chunk_size = chunk_size
        self.extra_headers = (("Cache-Control", cache_control),) if cache_control else ()
        self.max_ranges = max_ranges
        self.allow_dotfiles = allow_dotfiles

    def cache_key(self, target: Target) -> str:
        return "/" + target.path

    async def healthy(self) -> bool:
        return await anyio.to_thread.run_sync(lambda: os.path.isdir(self.root) and os.access(self.root, os.R_OK | os.X_OK))

    async def aclose(self) -> None:
        return None

    async def request(
        self, method: str, target: Target, headers: Headers, body: AsyncIterator[bytes] | None = None
    ) -> OriginResponse:
        if method not in ("GET", "HEAD"):
            return _text_response(405, "Method Not Allowed", [("Allow", "GET, HEAD")])
        opened = await anyio.to_thread.run_sync(self._open, target.path)
        if opened is None:
            return _text_response(404, "Not Found")
        plan = plan_response(
            method,
            conditions_from(headers),
            get(headers, "range"),
            dataclasses.replace(opened.rep, extra_headers=self.extra_headers),
            max_ranges=self.max_ranges,
            boundary=secrets.token_hex(12),
            now=time.time(),
        )
        chunks = plan_chunks(plan, opened.read) if method == "GET" else _nothing()

        async def close() -> None:
            opened.close()

        return OriginResponse(plan.status, plan.headers, chunks, close)

    def _inside(self, real: str) -> bool:
        if real != self.root and not real.startswith(self.root + os.sep):
            return False
        inner = os.path.relpath(real, self.root)
        return self.allow_dotfiles or not any(p.startswith(".") for p in inner.split(os.sep))

    def _open(self, rel_path: str) -> OpenFile | None:
        real = os.path.realpath(os.path.join(self.root, rel_path))
        if not rel_path or not self._inside(real):
            return None
        try:
            # Check the type before opening: opening a FIFO would block.
            if not stat.S_ISREG(os.stat(real).st_mode):
                return None
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError):
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        rep = Representation(
            size=st.st_size,
            etag=make_etag(st.st_mtime_ns, st.st_size),
            last_modified=int(st.st_mtime),
            content_type=content_type_for(rel_path),
        )
        return OpenFile(fd, rep, self.chunk_size)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


def _text_response(status: int, text: str, extra: Headers | None = None) -> OriginResponse:
    body = (text + "\n").encode()
    headers = [*(extra or []), ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    async def close() -> None:
        return None

    return OriginResponse(status, headers, chunks(), close)
