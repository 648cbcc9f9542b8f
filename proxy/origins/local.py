"""The origin directory: files opened safely below a root, answered like an HTTP server."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
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
from ..uploads import UploadError
from .base import BodyAborted, OriginResponse, Target, Uploaded, text_response

# Media types a browser runs scripts in when it opens them (or, for JavaScript, that a page of
# the edge's origin could load as its own). Served with `Content-Security-Policy: sandbox`.
_ACTIVE_TYPES = frozenset({
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
    "text/javascript", "application/javascript", "application/x-javascript", "application/ecmascript",
    "text/ecmascript",
})
SANDBOX = ("Content-Security-Policy", "sandbox")


def active_content(media_type: str) -> bool:
    """True for HTML, SVG, XHTML, any XML (`+xml` too) and JavaScript."""
    base = media_type.split(";", 1)[0].strip().lower()
    return base in _ACTIVE_TYPES or base.endswith("+xml")


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
        return await anyio.to_thread.run_sync(
            lambda: os.path.isdir(self.root) and os.access(self.root, os.R_OK | os.X_OK)
        )

    async def aclose(self) -> None:
        return None

    async def request(
        self, method: str, target: Target, headers: Headers, body: AsyncIterator[bytes] | None = None
    ) -> OriginResponse:
        if method not in ("GET", "HEAD"):
            return text_response(405, "Method Not Allowed", [("Allow", "GET, HEAD")])
        opened = await anyio.to_thread.run_sync(self._open, target.path)
        if opened is None:
            return text_response(404, "Not Found")
        extra = self.extra_headers
        if active_content(opened.rep.content_type):
            # An uploaded page or script runs in an opaque origin: it cannot act as the edge's
            # own origin (read its responses, write with the same-origin rules, be a service worker).
            extra = (*extra, SANDBOX)
        plan = plan_response(
            method,
            conditions_from(headers),
            get(headers, "range"),
            dataclasses.replace(opened.rep, extra_headers=extra),
            max_ranges=self.max_ranges,
            boundary=secrets.token_hex(12),
            now=time.time(),
        )
        chunks = plan_chunks(plan, opened.read)  # not started for HEAD: the edge sends no body

        async def close() -> None:
            opened.close()

        return OriginResponse(plan.status, plan.headers, chunks, close)

    async def upload(
        self, target: Target, chunks: AsyncIterator[bytes], content_type: str | None, length: int | None
    ) -> Uploaded:
        """Store an upload (the directory decides its content type from the name)."""
        created, rep = await self.write(target.path, chunks)
        return Uploaded(201 if created else 200, rep.size, rep.etag, rep.content_type)

    async def write(self, rel_path: str, chunks: AsyncIterator[bytes]) -> tuple[bool, Representation]:
        """Store an upload atomically: a hidden temporary file beside the target, fsynced,
        then renamed over it. Readers see the old file or the whole new one; a failed
        upload leaves no trace. True when the file is new."""
        full = os.path.join(self.root, rel_path)
        folder = os.path.dirname(full)
        await anyio.to_thread.run_sync(self._prepare_folder, folder, full)
        temp = os.path.join(folder, f".{os.path.basename(full)}.{secrets.token_hex(8)}.upload")
        fd = -1
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            buffer = bytearray()
            async for chunk in chunks:
                buffer += chunk
                if len(buffer) >= WRITE_BATCH:
                    await anyio.to_thread.run_sync(_write_all, fd, bytes(buffer))
                    buffer.clear()
            await anyio.to_thread.run_sync(_write_all, fd, bytes(buffer))
            await anyio.to_thread.run_sync(os.fsync, fd)
            os.close(fd)
            fd = -1
            created = await anyio.to_thread.run_sync(_commit, temp, full, folder)
        except OSError as e:
            status = 507 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 503
            raise UploadError(status, f"the origin could not store the file: {e.strerror}") from None
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        opened = await anyio.to_thread.run_sync(self._open, rel_path)
        if opened is None:
            raise UploadError(409, "the file changed while it was being stored")
        opened.close()
        return created, opened.rep

    def _prepare_folder(self, folder: str, full: str) -> None:
        os.makedirs(folder, exist_ok=True)
        if not self._inside(os.path.realpath(folder)) and os.path.realpath(folder) != self.root:
            raise UploadError(400, "the folder is outside the origin")
        if os.path.isdir(full) or (os.path.islink(full) and not self._inside(os.path.realpath(full))):
            raise UploadError(409, "that name is taken by a folder or a link")

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


WRITE_BATCH = 1024 * 1024  # bytes gathered per write of an upload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _commit(temp: str, full: str, folder: str) -> bool:
    """Rename into place and make the rename durable; True when the file is new."""
    created = not os.path.exists(full)
    os.replace(temp, full)
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
    return created
