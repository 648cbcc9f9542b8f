"""The origin directory: files opened safely below a root and read with pread."""
from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from ..http.headers import content_type_for, make_etag
from ..http.model import Representation


class ShortRead(IOError):
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
    """Serves regular files below `root`; nothing outside it, not even through symlinks."""

    def __init__(self, root: str, *, chunk_size: int, allow_dotfiles: bool = False) -> None:
        self.root = os.path.realpath(root)
        self.chunk_size = chunk_size
        self.allow_dotfiles = allow_dotfiles

    def healthy(self) -> bool:
        return os.path.isdir(self.root) and os.access(self.root, os.R_OK | os.X_OK)

    async def open(self, rel_path: str) -> OpenFile | None:
        """Open `rel_path` (already cleaned); None when it is not a servable file."""
        return await anyio.to_thread.run_sync(self._open, rel_path)

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
