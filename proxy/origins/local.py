"""The origin directory: files opened safely below a root, answered like an HTTP server."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote

import anyio

from ..files import write_all
from ..http.conditional import conditions_from
from ..http.freshness import Headers, get
from ..http.headers import content_type_for, make_etag
from ..http.model import Representation
from ..http.plan import plan_response
from ..request.paths import BadPath, HiddenPath, clean_path
from ..streaming import multipart_boundary, plan_chunks
from ..writes.uploads import UploadError
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


log = logging.getLogger("edgecache")


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

    def location_key(self, location: str) -> str | None:
        if not location.startswith("/") or location.startswith("//"):
            return None
        try:
            return "/" + clean_path(unquote(location.split("?")[0]), allow_dotfiles=self.allow_dotfiles)
        except (BadPath, HiddenPath):
            return None

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
            new_boundary=multipart_boundary,
            now=time.time(),
        )
        chunks = plan_chunks(plan, opened.read)  # not started for HEAD: the edge sends no body

        async def close() -> None:
            opened.close()

        return OriginResponse(plan.status, plan.headers, chunks, close)

    async def upload(
        self, target: Target, chunks: AsyncIterator[bytes], length: int | None
    ) -> Uploaded:
        """Store an upload (the directory decides its content type from the name)."""
        created, rep = await self.write(target.path, chunks)
        return Uploaded(201 if created else 200, rep.size, rep.etag, rep.content_type)

    async def write(self, rel_path: str, chunks: AsyncIterator[bytes]) -> tuple[bool, Representation]:
        """Store an upload atomically: a hidden temporary file beside the target, fsynced,
        then renamed over it. Readers see the old file or the whole new one; a failed
        upload leaves no trace. True when the file is new. Every file-system call runs
        in a worker thread; failures are UploadError (409, 503, 507) saying why."""
        full = os.path.join(self.root, rel_path)
        folder = os.path.dirname(full)
        temp = os.path.join(folder, f".{os.path.basename(full)}.{secrets.token_hex(8)}.upload")
        fd = -1
        made = committed = False
        try:
            await anyio.to_thread.run_sync(self._prepare_folder, folder, full)
            fd = await anyio.to_thread.run_sync(_create, temp)
            made = True
            buffer = bytearray()
            async for chunk in chunks:
                buffer += chunk
                if len(buffer) >= WRITE_BATCH:
                    await anyio.to_thread.run_sync(write_all, fd, bytes(buffer))
                    buffer.clear()
            await anyio.to_thread.run_sync(write_all, fd, bytes(buffer))
            closing, fd = fd, -1
            await anyio.to_thread.run_sync(_finish, closing)
            created = await anyio.to_thread.run_sync(_commit, temp, full, folder)
            committed = True
        except OSError as e:
            raise UploadError(*_write_error(e)) from None
        finally:
            if fd >= 0 or (made and not committed):
                # Also when the upload was cancelled (client gone, server stopping).
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_discard, fd, temp if made and not committed else None)
        opened = await anyio.to_thread.run_sync(self._open, rel_path)
        if opened is None:
            raise UploadError(409, "the file changed while it was being stored")
        opened.close()
        return created, opened.rep

    def _prepare_folder(self, folder: str, full: str) -> None:
        """Create the folder below the root, never through a link that leads outside it, and never
        the root itself: a root that is missing (a mount not up yet) would hide what is written
        now once the mount comes (503 until it is there)."""
        if not os.path.isdir(self.root):
            raise UploadError(503, "origin directory missing")
        if not self._inside_or_root(os.path.realpath(folder)):
            raise UploadError(400, "the folder is outside the origin")
        try:
            os.makedirs(folder, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UploadError(409, f"a file is in the way of the folder '{self._first_non_folder(folder)}'") from None
        if not self._inside_or_root(os.path.realpath(folder)):  # a link appeared meanwhile
            raise UploadError(400, "the folder is outside the origin")
        if os.path.isdir(full) or (os.path.islink(full) and not self._inside(os.path.realpath(full))):
            raise UploadError(409, "that name is taken by a folder or a link")

    def _first_non_folder(self, folder: str) -> str:
        """The first part of `folder` (below the root) that is not a folder, as 'a/b'."""
        path = self.root
        for part in os.path.relpath(folder, self.root).split(os.sep):
            path = os.path.join(path, part)
            if not os.path.isdir(path):
                break
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def _inside_or_root(self, real: str) -> bool:
        return real == self.root or self._inside(real)

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


def _create(temp: str) -> int:
    return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)


def _finish(fd: int) -> None:
    """fsync and close (closed even when fsync fails)."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(fd: int, temp: str | None) -> None:
    """Close and remove what a failed upload left. Never raises: the upload's own error is
    the answer (on a read-only origin, removing even a file that is not there fails)."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    if temp is not None:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove the temporary upload file %s: %s", temp, e)


_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _write_error(e: OSError) -> tuple[int, str]:
    """The status and reason for a failed write: a full disk is 507, an origin directory
    that cannot be written (permissions, read-only mount) or any other failure 503,
    a folder that took the file's name meanwhile 409."""
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return 507, f"the origin could not store the file: {reason}"
    if e.errno in _NOT_WRITABLE:
        return 503, f"the origin directory is not writable ({reason})"
    if e.errno == errno.EISDIR:
        return 409, "that name is taken by a folder or a link"
    return 503, f"the origin could not store the file: {reason}"


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
