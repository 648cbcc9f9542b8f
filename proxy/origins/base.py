"""What every origin offers: an HTTP exchange with a streamed response body."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..http.directives import Headers, get


class BodyAborted(Exception):
    """A body could not be completed (a changed version, a short file): the connection is cut."""


class OriginError(Exception):
    """The origin could not be asked: `timeout` (504), `unreachable` or `invalid` (502)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    @property
    def status(self) -> int:
        return 504 if self.kind == "timeout" else 502


@dataclass
class OriginResponse:
    status: int
    headers: Headers  # end-to-end fields only
    body: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]

    def header(self, name: str) -> str | None:
        return get(self.headers, name)


def text_response(status: int, message: str, headers: Headers | None = None) -> OriginResponse:
    """A short plain-text answer (an error or a refusal), one line."""
    body = (message + "\n").encode()
    full = [*(headers or []), ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    async def close() -> None:
        return None

    return OriginResponse(status, full, chunks(), close)


@dataclass(frozen=True)
class Uploaded:
    """The outcome of an upload: the origin's status and what it stored."""

    status: int
    size: int
    etag: str | None
    content_type: str
    detail: str = ""


@dataclass(frozen=True)
class Target:
    """What a request asks the origin for."""

    path: str  # cleaned relative path ('video/a.mp4'), for a directory origin
    raw: str  # the percent-encoded path and query as received ('/video/a.mp4?x=1')


class Origin(Protocol):
    kind: str

    def cache_key(self, target: Target) -> str: ...

    def location_key(self, location: str) -> str | None:
        """The cache key of a Location / Content-Location the origin sent, if it names one of
        this origin's resources (RFC 9111 section 4.4: same origin only); else None."""
        ...

    async def request(
        self, method: str, target: Target, headers: Headers, body: AsyncIterator[bytes] | None = None
    ) -> OriginResponse: ...

    async def upload(
        self, target: Target, chunks: AsyncIterator[bytes], length: int | None
    ) -> Uploaded:
        """Store a file at the origin, streamed, its content type the one its name says (never the
        uploader's: a `clip.mp4` is served as a video, whatever was claimed); UploadError for a
        refusal the client can act on."""
        ...

    async def healthy(self) -> bool: ...

    async def aclose(self) -> None: ...
