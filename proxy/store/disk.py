"""diskcache behind a small synchronous API. Call it from a worker thread, once per block."""
from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from typing import IO

import diskcache
from diskcache.core import MODE_BINARY, UNKNOWN

from .objects import CachedObject, VaryIndex, meta_key, primary_of, vary_index_key

log = logging.getLogger("edgecache.store")
# Errors that mean "the store cannot help now": serve from the origin instead.
StoreErrors: tuple[type[Exception], ...] = (OSError, sqlite3.Error, diskcache.Timeout)


class FinishedPart:
    """A complete, length-checked part file to be moved into the cache (not copied)."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size


class BlockDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache ships no type information
    """Stores a FinishedPart by renaming it into place (same filesystem), in one step."""

    def store(self, value, read, key=UNKNOWN):  # type: ignore[no-untyped-def]
        if isinstance(value, FinishedPart):
            filename, full_path = self.filename(key, value)
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            os.replace(value.path, full_path)
            return value.size, MODE_BINARY, filename, None
        return super().store(value, read, key=key)


class Store:
    """Metadata and blocks in one LRU cache with a size limit; leases in another that never evicts."""

    def __init__(self, directory: str, size_limit: int, memo_seconds: float = 1.0) -> None:
        self.directory = directory
        self.memo_seconds = memo_seconds
        self._memo: dict[str, tuple[float, object]] = {}
        self.parts_dir = os.path.join(directory, "parts")
        os.makedirs(self.parts_dir, exist_ok=True)
        self.objects = diskcache.Cache(
            os.path.join(directory, "objects"),
            disk=BlockDisk,
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            cull_limit=10,
            timeout=5,
        )
        self.leases = diskcache.Cache(os.path.join(directory, "leases"), eviction_policy="none", timeout=5)

    def close(self) -> None:
        self.objects.close()
        self.leases.close()

    # --- metadata ---------------------------------------------------------
    # Reads are remembered for `memo_seconds`: with the LRU policy every read of the
    # cache is a write transaction, and hot keys are read by every request. Writes
    # from this process are seen at once; from other workers within memo_seconds.
    def get(self, key: str, fresh: bool = False) -> object | None:
        now = time.monotonic()
        if not fresh:
            memo = self._memo.get(key)
            if memo is not None and now - memo[0] < self.memo_seconds:
                return memo[1]
        value: object = self.objects.get(key)
        if len(self._memo) > 10_000:
            self._memo.clear()
        self._memo[key] = (now, value)
        return value

    def put(self, key: str, value: object) -> None:
        self.objects.set(key, value)
        self._memo[key] = (time.monotonic(), value)

    def delete(self, *keys: str) -> None:
        for key in keys:
            self._memo.pop(key, None)
            self.objects.delete(key)

    def get_object(self, key: str, fresh: bool = False) -> CachedObject | None:
        value = self.get(key, fresh)
        return value if isinstance(value, CachedObject) else None

    # --- blocks -------------------------------------------------------------
    def open_block(self, key: str, length: int) -> IO[bytes] | bytes | None:
        """The stored block (an open file, or bytes), or None; a wrong length counts as missing."""
        value: IO[bytes] | bytes | None = self.objects.get(key, read=True)
        if value is None:
            return None
        actual = len(value) if isinstance(value, bytes) else os.fstat(value.fileno()).st_size
        if actual != length:
            if not isinstance(value, bytes):
                value.close()
            log.warning("block %s has %d bytes, expected %d: dropped", key, actual, length)
            self.objects.delete(key)
            return None
        return value

    def has_block(self, key: str) -> bool:
        return key in self.objects

    def new_part(self) -> tuple[int, str]:
        """A new part file for a block being filled: (fd, path)."""
        path = os.path.join(self.parts_dir, f"{secrets.token_hex(16)}.part")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        return fd, path

    def publish_block(self, key: str, path: str, size: int) -> None:
        """Make a complete block visible (atomic: readers see it whole or not at all)."""
        self.objects.set(key, FinishedPart(path, size), read=True)

    def sweep_parts(self, older_than: float) -> int:
        """Remove part files left by crashed fills (kill -9): never visible, just clutter."""
        removed = 0
        cutoff = time.time() - older_than
        for name in os.listdir(self.parts_dir):
            path = os.path.join(self.parts_dir, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
            except OSError:
                pass
        return removed

    # --- leases (single flight across processes) -----------------------------
    def take_lease(self, name: str, owner: str, ttl: float) -> bool:
        """True for exactly one caller until the lease is released or expires."""
        return bool(self.leases.add(name, owner, expire=ttl))

    def renew_lease(self, name: str, owner: str, ttl: float) -> None:
        with self.leases.transact():
            if self.leases.get(name) == owner:
                self.leases.set(name, owner, expire=ttl)

    def lease_holder(self, name: str) -> str | None:
        holder = self.leases.get(name)
        return holder if isinstance(holder, str) else None

    def release_lease(self, name: str, owner: str) -> None:
        with self.leases.transact():
            if self.leases.get(name) == owner:
                self.leases.delete(name)

    # --- purge ---------------------------------------------------------------
    def purge(self, primary: str) -> int:
        """Forget every stored response (and its blocks) for a primary key; how many."""
        index = self.get(vary_index_key(primary), fresh=True)
        keys = {meta_key(primary, "")} | (set(index.selections) if isinstance(index, VaryIndex) else set())
        objects = [o for o in (self.get_object(k, fresh=True) for k in keys) if o is not None]
        self.delete(vary_index_key(primary), *keys)
        for obj in objects:
            self.drop_blocks(obj)
        return len(objects)

    def purge_prefix(self, prefix: str) -> list[str]:
        """Purge every primary key starting with `prefix`; the keys purged."""
        primaries = {p for k in self.objects.iterkeys() if isinstance(k, str) and (p := primary_of(k)) is not None}
        purged = sorted(p for p in primaries if p.startswith(prefix))
        for primary in purged:
            self.purge(primary)
        return purged

    def drop_blocks(self, obj: CachedObject) -> None:
        self.delete(*(obj.block_key(i) for i in range(obj.block_count)))
