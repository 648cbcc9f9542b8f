"""Small file-descriptor helpers shared by the origins and the cache (blocking: run them in a thread)."""
from __future__ import annotations

import os


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
