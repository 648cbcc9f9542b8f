"""Which manifests list segments in a URL directory, shared by every process of a cache directory:
a worker asked for a segment finds the manifest of its rendition even when another worker
served the manifest (cache/segments.py). A hint, not a record: bounded in size, the least
recently written directories are forgotten first. A change counter per directory (epochs.py)
tells a process that what it read of a directory may have changed, at the cost of a memory read."""
from __future__ import annotations

import os
from collections.abc import Iterable

import diskcache

from .epochs import Epochs

SIZE_LIMIT = 8 * 1024**2  # bytes of the listings' database, about 50,000 directories
PER_DIRECTORY = 8  # manifests remembered per directory, the latest first
SLOTS = 1024  # change counters, shared by the directories (a hash modulo the count)


class Listings:
    def __init__(self, directory: str) -> None:
        self.cache = diskcache.Cache(os.path.join(directory, "listings"), eviction_policy="least-recently-stored",
                                     size_limit=SIZE_LIMIT, timeout=5)
        self.epochs = Epochs(os.path.join(directory, "listings", "epochs"), SLOTS)

    def close(self) -> None:
        self.cache.close()
        self.epochs.close()

    def add(self, directories: Iterable[str], manifest: str) -> None:
        """`manifest` (a path and query) lists segments in these directories."""
        changed = []
        with self.cache.transact():
            for directory in directories:
                known = self.manifests(directory)
                if known[:1] != (manifest,):
                    self.cache.set(directory, (manifest, *(m for m in known if m != manifest))[:PER_DIRECTORY])
                    changed.append(directory)
        for directory in changed:  # once committed
            self.epochs.bump(self.epochs.slot(directory))

    def mark(self, directory: str) -> int:
        """The directory's change count: read it before `manifests`; while it stays the same, what
        was read then is still what the listings say."""
        return self.epochs.read(self.epochs.slot(directory))

    def manifests(self, directory: str) -> tuple[str, ...]:
        """The manifests that list segments in `directory`, the latest first."""
        value = self.cache.get(directory, ())
        return value if isinstance(value, tuple) else ()
