"""Which manifests list segments in a URL directory, shared by every process of a cache directory:
a worker asked for a segment finds the manifest of its rendition even when another worker
served the manifest (cache/segments.py). A hint, not a record: bounded in size, the least
recently written directories are forgotten first."""
from __future__ import annotations

import os
from collections.abc import Iterable

import diskcache

SIZE_LIMIT = 8 * 1024**2  # bytes of the listings' database, about 50,000 directories
PER_DIRECTORY = 8  # manifests remembered per directory, the latest first


class Listings:
    def __init__(self, directory: str) -> None:
        self.cache = diskcache.Cache(os.path.join(directory, "listings"), eviction_policy="least-recently-stored",
                                     size_limit=SIZE_LIMIT, timeout=5)

    def close(self) -> None:
        self.cache.close()

    def add(self, directories: Iterable[str], manifest: str) -> None:
        """`manifest` (a path and query) lists segments in these directories."""
        with self.cache.transact():
            for directory in directories:
                known = self.manifests(directory)
                if known[:1] != (manifest,):
                    self.cache.set(directory, (manifest, *(m for m in known if m != manifest))[:PER_DIRECTORY])

    def manifests(self, directory: str) -> tuple[str, ...]:
        """The manifests that list segments in `directory`, the latest first."""
        value = self.cache.get(directory, ())
        return value if isinstance(value, tuple) else ()
