"""diskcache behind a small synchronous API. Call it from a worker thread, once per block."""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import pickle
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

import diskcache
from diskcache.core import MODE_BINARY, UNKNOWN

from .. import pagecache
from ..files import write_all
from ..http.freshness import vary_fields
from ..http.tags import response_tags
from . import footprint
from .checksums import checksum, file_checksum
from .epochs import Epochs
from .heal import (
    COLUMNS,
    FILES,
    RECENT,
    Healer,
    HealingCache,
    Health,
    Remedy,
    block_files,
    readable_rows,
    remedy,
    unnamed,
)
from .integrity import Tallies, Verdict, verdict
from .journal import Journal
from .keeper import Keeper, split
from .listings import Listings
from .objects import CachedObject, VaryIndex, meta_key, primary_of, vary_index_key
from .scrub import Scrub
from .tags import TagIndex

log = logging.getLogger("edgecache.store")
# Errors that mean "the store cannot help now": serve from the origin instead.
StoreErrors: tuple[type[Exception], ...] = (OSError, sqlite3.Error, diskcache.Timeout)


class NotRemembered(LookupError):
    """A lookup that may not read the store found the key not remembered (or changed)."""


class FinishedPart:
    """A complete, length-checked part file to be moved into the cache (not copied); `filename`
    once it is there."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self.filename = ""


class BlockDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache ships no type information
    """Stores a FinishedPart by renaming it into place (same filesystem), in one step."""

    def store(self, value, read, key=UNKNOWN):  # type: ignore[no-untyped-def]
        if isinstance(value, FinishedPart):
            filename, full_path = self.filename(key, value)
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            os.replace(value.path, full_path)
            value.filename = filename
            return value.size, MODE_BINARY, filename, None
        return super().store(value, read, key=key)

    def filename(self, key: object = UNKNOWN, value: object = UNKNOWN) -> tuple[str, str]:
        """A new random name in one of 256 folders (diskcache's own two levels make up to 65,536
        folders, a file-system block each: for small blocks, as much disk as the blocks)."""
        name = secrets.token_hex(16)
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)


class CountingCache(HealingCache):
    """A diskcache Cache (that heals: heal.py) that reports how many entries each cull evicted (expired or for space).

    diskcache 5.6 culls in `_cull`, calling `cleanup` once per evicted row; that is the
    one place evictions can be seen."""

    on_evict: Callable[[int], None] | None = None

    def _cull(self, now, sql, cleanup, limit=None):  # type: ignore[no-untyped-def]
        evicted = 0

        def counted(filename):  # type: ignore[no-untyped-def]
            nonlocal evicted
            evicted += 1
            cleanup(filename)

        super()._cull(now, sql, counted, limit)
        if evicted and self.on_evict is not None:
            self.on_evict(evicted)


class _Read(enum.Enum):
    OPEN = 1  # keep the file open (its bytes checked once per process)
    BYTES = 2  # read its bytes into memory
    CHECK = 3  # read it to check it, every time
    SCRUB = 4  # as CHECK, leaving the page cache as it found it: pages it had to read are dropped


@dataclass
class _Examined:
    """A stored block's check: the verdict, its file's name, the checksum computed (if it was),
    the open file or the bytes when they are wanted, how many bytes were read."""

    verdict: Verdict
    filename: str
    computed: int | None = None
    handle: IO[bytes] | None = None
    data: bytes | None = None
    read: int = 0


@dataclass(frozen=True)
class Put:
    """An entry to store (Store.put_meta's arguments), with its object's whole body when it is in
    hand (a small one, its one block)."""

    primary: str
    key: str
    entry: object
    vary: tuple[str, ...] | None
    generation: int
    tags: tuple[str, ...] = ()
    body: bytes | None = None
    purges: int | None = None  # purge_mark() when its request was looked up: not stored if a purge came since


@dataclass(frozen=True)
class Listed:
    """One stored response, as the listing shows it."""

    key: str  # the primary key (the path as cached)
    meta_key: str
    size: int
    blocks: int
    blocks_cached: int
    stored_at: float  # seconds since the epoch
    hits: int


META_FORMAT = 3  # stored metadata layout; an entry of another layout is a miss
_HITS = "h|"  # hit counts of the listing, by meta key
MEMO_BYTES = 16 * 1024**2  # bound on the metadata remembered in memory, per process
_OBJECT = "d|"  # in the index: a block key prefix -> (meta key, size, block count) of the object it names
OBJECTS_AT_HAND = 4096  # objects of recent fills remembered by block key prefix, per process
MAX_TAGS = 1024  # cache tags indexed per response when the index is rebuilt (the most max_cache_tags allows)
CHECKED_AT_HAND = 16384  # block files this process has checked (or written), remembered by name
_UNREADABLE = (pickle.UnpicklingError, AttributeError, ImportError, EOFError, TypeError, ValueError, IndexError)


def is_cache_dir(directory: str) -> bool:
    """Whether `directory` holds an edgecache cache (one a Store has opened before)."""
    return all(os.path.isfile(os.path.join(directory, part, "cache.db")) for part in ("objects", "index"))


class Store:
    """Metadata and blocks in one cache whose evictions the cache policy decides (keeper.py);
    in caches that never evict: the index (Vary fields and selections, purge generations,
    which object a block belongs to) and the leases."""

    def __init__(self, directory: str, size_limit: int, memo_seconds: float = 5.0,
                 on_evict: Callable[[int], None] | None = None, block_size: int = 4 * 1024**2,
                 policy_memory: int = 64 * 1024**2, max_variants: int = 32, scrub_rate: int = 0) -> None:
        self.directory = directory
        self.max_variants = max_variants
        self.memo_seconds = memo_seconds
        # key -> (change count when read, when read (monotonic), value, approximate bytes)
        self._memo: OrderedDict[str, tuple[int, float, object, int]] = OrderedDict()
        self._memo_bytes = 0
        self._memo_lock = threading.Lock()  # store threads change the memo under it (a read is one get)
        self.parts_dir = os.path.join(directory, "parts")
        os.makedirs(self.parts_dir, exist_ok=True)
        self.size_limit = size_limit
        found = os.statvfs(directory)
        self.unit = found.f_frsize or found.f_bsize or 4096  # bytes the file system allocates at a time
        self.tallies = Tallies(os.path.join(directory, "integrity"))
        self.healer = Healer(directory)
        self._healing: set[str] = set()  # databases this process is healing
        self._checked: OrderedDict[str, None] = OrderedDict()  # block files known sound, by name
        self._objects_at_hand: OrderedDict[str, tuple[str, int, int]] = OrderedDict()
        with self.healer.locked():  # one process checks its databases (and heals them) at a time
            remedies = self._examine_databases()
            self.objects = self._open("objects")
            self.objects.on_evict = on_evict
            self.index = self._open("index")
            self.tags = TagIndex(self.index)  # cache tags of the stored responses, for purges by tag
            self.listings = Listings(directory)  # which manifests list segments where (cache/segments.py)
            self.leases = self._open("leases")
            self.epochs = Epochs(os.path.join(directory, "epochs"))
            self._repair(remedies, running=False)
        self.block_size = block_size
        self.keeper = Keeper(directory, size_limit, block_size, policy_memory, self)
        # the blocks read again and checked, scrub_rate bytes a second (0: no scrub), by the keeping process
        self.scrub = Scrub(scrub_rate, self.stored_blocks, self.scrub_block, self.keeper.keeping,
                           self._scrubbed) if scrub_rate else None
        self.closed = False

    def close(self) -> None:
        """Stop the keeper and the scrub (the policy saved) and close every file; once (again: nothing)."""
        if self.closed:
            return
        self.closed = True
        if self.scrub is not None:
            self.scrub.close()
        self.keeper.close()
        self.objects.close()
        self.index.close()
        self.listings.close()
        self.leases.close()
        self.epochs.close()
        self.tallies.close()
        self.healer.close()

    # --- databases that heal (heal.py) ------------------------------------------------
    def _open(self, database: str) -> HealingCache:
        """One of the store's diskcache databases (created if it is not there)."""
        path = os.path.join(self.directory, database)
        # WAL files checkpointed, and cut back, at about 512 KiB: they count in the limit
        wal = {"sqlite_wal_autocheckpoint": footprint.WAL_PAGES, "sqlite_journal_size_limit": footprint.WAL_BYTES}
        if database == "objects":
            objects = CountingCache(path, database, self, disk=BlockDisk, size_limit=self.size_limit,
                                    eviction_policy="none", timeout=5, **wal)  # the cache policy evicts (keeper.py)
            # oldest metadata first, when it outgrows the room the policy leaves (cull_metadata)
            objects._sql("CREATE INDEX IF NOT EXISTS Cache_store_time ON Cache (store_time)")
            return objects
        return HealingCache(path, database, self, eviction_policy="none", timeout=5, **wal)

    def healings(self, database: str) -> int:
        """How many times the database was replaced (healed), in any process."""
        return self.tallies.generation(database)

    def damaged(self, database: str, error: BaseException) -> None:
        """SQLite found the database damaged at run time: heal it, in the background (once at a time)."""
        with self._memo_lock:
            if database in self._healing:
                return
            self._healing.add(database)
        seen = self.tallies.generation(database)
        threading.Thread(target=self._heal, args=(database, seen, str(error)), name="edgecache-heal",
                         daemon=True).start()

    def _heal(self, database: str, seen: int, error: str) -> None:
        try:
            with self.healer.locked():
                if self.tallies.generation(database) != seen:
                    return  # another process healed it meanwhile
                health, reason = self.healer.check(database)
                cure = remedy(database, health)
                if cure in (Remedy.KEEP, Remedy.SWEEP):
                    log.warning("cache database %s reported %r, but its check finds it %s", FILES[database], error,
                                health.value)
                    return
                aside = self.healer.set_aside(database)
                if database == "journal":
                    Journal(self.healer.path(database)).close()
                elif database != "listings":
                    self._open(database).close()
                self.tallies.replaced(database)  # every connection to it, in every process, opens the new one
                self._repair({database: (cure, aside, reason or error)}, running=True)
        except Exception as e:  # noqa: BLE001 - a heal that fails leaves the store failing as it was
            log.error("cache database %s could not be healed: %s", FILES[database], e)
        finally:
            with self._memo_lock:
                self._healing.discard(database)

    def _examine_databases(self) -> dict[str, tuple[Remedy, str | None, str]]:
        """At start, before anything is opened: check every database; move the damaged ones aside.
        What each needs: (remedy, where the damaged one went, what was wrong)."""
        remedies: dict[str, tuple[Remedy, str | None, str]] = {}
        for database in FILES:
            health, reason = self.healer.check(database)
            cure = remedy(database, health)
            if cure is Remedy.KEEP:
                continue
            aside = None
            if health is Health.DAMAGED:
                aside = self.healer.set_aside(database)
                self.tallies.replaced(database)  # a process still running (a worker restarted) opens the new one
            remedies[database] = (cure, aside, reason)
        return remedies

    def _repair(self, remedies: dict[str, tuple[Remedy, str | None, str]], running: bool) -> None:
        """Fill the databases that replaced damaged ones (objects before the index made from it),
        and remove the block files the objects database does not name (`running`: other processes
        may be storing blocks, whose files are there a moment before their rows)."""
        for database, (cure, aside, reason) in remedies.items():
            name = FILES[database]
            if cure is Remedy.SWEEP:
                removed = self._sweep_blocks(running)
                log.warning("cache database %s had no table (%s): %d block files it did not name removed", name,
                            reason, removed)
                continue
            kept = 0
            if cure is Remedy.SALVAGE and aside is not None:
                kept = self._salvage(aside)
                self._sweep_blocks(running)
            elif cure is Remedy.REBUILD:
                kept = self._rebuild_index()
            outcome = f"rebuilt with {kept} entries" if kept else "started empty"
            log.error("cache database %s was damaged (%s): moved aside to %s, %s", name, reason, aside, outcome)
            self.tallies.healed(database, rebuilt=kept > 0)
        if remedies:  # what any running process remembers of any key (its metadata, the answers it
            self.epochs.bump_all()  # keeps ready) may come from what was damaged: each key changed

    def _salvage(self, aside: str) -> int:
        """Copy the rows of the damaged objects database that can be read (and whose files are there,
        with their length) into the new one; how many. A row stored meanwhile is kept, not replaced."""
        kept = 0
        insert = f"INSERT OR IGNORE INTO Cache ({COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS.split(', ')))})"
        batch: list[tuple[object, ...]] = []

        def flush() -> None:
            with self.objects.transact():
                for row in batch:
                    self.objects._sql(insert, row)
            batch.clear()

        for row in readable_rows(aside):
            size, filename = row[7], row[9]
            if filename is not None and not _has_file(os.path.join(self.objects.directory, filename), size):
                continue
            batch.append(row)
            kept += 1
            if len(batch) >= 256:
                flush()
        flush()
        return kept

    def _sweep_blocks(self, running: bool) -> int:
        """Remove the block files the objects database does not name (when `running`, not the young
        ones, which may be on their way in); how many."""
        named = (row[0] for row in self.objects._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL "
                                                      "ORDER BY filename"))
        cutoff = time.time() - RECENT if running else float("inf")
        removed = 0
        for name in unnamed(block_files(self.objects.directory), named):
            try:
                if os.stat(os.path.join(self.objects.directory, name)).st_mtime < cutoff:
                    self.objects._disk.remove(name)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def _rebuild_index(self) -> int:
        """Make the index again from the stored metadata: which object each block prefix names,
        purge generations (as high as the stored entries'), Vary indexes (oldest first), cache tags.
        How many responses it indexes."""
        count = 0
        variants: dict[str, tuple[tuple[str, ...], list[str]]] = {}
        after = -1
        while True:
            rows = self.objects._sql("SELECT rowid, key FROM Cache WHERE rowid > ? AND key > 'm|' AND key < 'm}' "
                                     "AND raw = 1 ORDER BY rowid LIMIT 1000", (after,)).fetchall()
            with self.index.transact():
                for _, key in rows:
                    stored = self._stored(key, fresh=True)
                    primary = primary_of(key)
                    if stored is None or primary is None:
                        continue
                    generation, entry = stored
                    if generation > self.generation(primary):
                        self.index.set(_generation_key(primary), generation)
                    if isinstance(entry, CachedObject):
                        count += 1
                        if entry.size:
                            self.index.set(_OBJECT + _prefix(entry), (key, entry.size, entry.block_count))
                        self.tags.replace(key, response_tags(entry.headers, MAX_TAGS))
                        fields = vary_fields(entry.headers)
                        if fields:
                            known = variants.setdefault(primary, (fields, []))
                            if known[0] == fields:
                                known[1].append(key)
            if len(rows) < 1000:
                break
            after = rows[-1][0]
        for primary, (fields, selections) in variants.items():
            self.index.set(vary_index_key(primary), VaryIndex(fields, tuple(selections[-self.max_variants:])))
        self._changed(*(vary_index_key(p) for p in variants))
        return count

    # --- metadata ---------------------------------------------------------
    # Lookups are remembered (at most MEMO_BYTES) while the key's change counter (epochs.py)
    # is unchanged, so a hit reads no store at all; whatever any process writes is seen by
    # the next lookup. A remembered entry is read again after `memo_seconds` all the same:
    # that read is what tells the LRU that a hot entry is in use.
    def _recall(self, key: str, fresh: bool, memo_only: bool, epoch: int | None = None) -> tuple[bool, object]:
        """(True, value) when `key` is remembered and still valid; NotRemembered when it is not
        and `memo_only`. `epoch`: the key's change count, when the caller has just read it (one
        read for the lookups of one request: they then all answer as of that moment)."""
        if not fresh:
            memo = self._memo.get(key)  # one C call, atomic under the GIL: no lock to read
            if memo is not None and memo[0] == (self._epoch(key) if epoch is None else epoch) and \
                    time.monotonic() - memo[1] < self.memo_seconds:
                return True, memo[2]
        if memo_only:
            raise NotRemembered(key)
        return False, None

    def _read(self, key: str, read: Callable[[], object]) -> object:
        """Read `key` from the store and remember it with the change count noted before the read."""
        epoch = self._epoch(key)
        value = read()
        size = len(key) + _approximate_size(value)
        with self._memo_lock:
            old = self._memo.pop(key, None)
            if old is not None:
                self._memo_bytes -= old[3]
            self._memo[key] = (epoch, time.monotonic(), value, size)
            self._memo_bytes += size
            while self._memo_bytes > MEMO_BYTES:
                self._memo_bytes -= self._memo.popitem(last=False)[1][3]
        return value

    def _epoch(self, key: str) -> int:
        primary = _primary(key)
        return self.epochs.read(self.epochs.slot(primary)) if primary is not None else 0

    def change_mark(self, primary: str) -> tuple[int, int]:
        """(slot, count) of the key's change counter now: while `changes_at(slot)` is still
        `count`, nothing stored for the key has changed in any process."""
        slot = self.epochs.slot(primary)
        return slot, self.epochs.read(slot)

    def changes_at(self, slot: int) -> int:
        return self.epochs.read(slot)

    def _changed(self, *keys: str) -> None:
        """After a committed write: forget what this process remembers of the keys, and tell
        every process (one bump per slot)."""
        with self._memo_lock:
            for key in keys:
                old = self._memo.pop(key, None)
                if old is not None:
                    self._memo_bytes -= old[3]
        primaries = {p for p in map(_primary, keys) if p is not None}
        for slot in {self.epochs.slot(p) for p in primaries}:
            self.epochs.bump(slot)

    def _stored(self, key: str, fresh: bool, memo_only: bool = False,
                epoch: int | None = None) -> tuple[int, object] | None:
        """(generation, entry) as stored under a meta key, or None; unreadable entries are dropped."""
        known, value = self._recall(key, fresh, memo_only, epoch)
        if not known:
            value = self._read(key, lambda: _valid_meta(self._load(key)))
        return value if isinstance(value, tuple) else None

    def _load(self, key: str) -> object:
        try:
            return self.objects.get(key)
        except _UNREADABLE as e:
            log.warning("unreadable metadata %s dropped: %s", key, e)
            self.objects.delete(key)
            return None

    def get_meta(self, key: str, generation: int, fresh: bool = False, memo_only: bool = False,
                 epoch: int | None = None) -> object | None:
        """The entry (a CachedObject or a pass marker) stored under `key` in the key's current
        generation, or None: what was stored before a purge is never an answer."""
        stored = self._stored(key, fresh, memo_only, epoch)
        return stored[1] if stored is not None and stored[0] == generation else None

    def vary_index(self, primary: str, fresh: bool = False, memo_only: bool = False,
                   epoch: int | None = None) -> VaryIndex | None:
        key = vary_index_key(primary)
        known, value = self._recall(key, fresh, memo_only, epoch)
        if not known:
            value = self._read(key, lambda: self.index.get(key))
        return value if isinstance(value, VaryIndex) else None

    def generation(self, primary: str, fresh: bool = True, memo_only: bool = False, epoch: int | None = None) -> int:
        """How many times the key was invalidated: a fill started at one generation may not
        store into another."""
        key = _generation_key(primary)
        known, value = self._recall(key, fresh, memo_only, epoch)
        if not known:
            value = self._read(key, lambda: self.index.get(key, 0))
        return value if isinstance(value, int) else 0

    def connect(self) -> None:
        """Open this thread's connections to the databases now rather than at their first use: a
        store thread then holds the same descriptors from its start (one it cannot open now, it
        opens when it uses it)."""
        for cache in (self.objects, self.index, self.leases, self.listings.cache):
            with contextlib.suppress(*StoreErrors):
                cache._con  # noqa: B018 - the property opens the connection

    def put_meta(self, primary: str, key: str, entry: object, vary: tuple[str, ...] | None, generation: int,
                 tags: tuple[str, ...] = ()) -> bool:
        """Store an entry and keep the primary key's Vary index right, in one transaction of the
        index; False (nothing written) when the key was invalidated since `generation`.
        `vary` None leaves the index as it is. `tags`: the entry's cache tags (they replace the key's)."""
        return self.put_all([Put(primary, key, entry, vary, generation, tags)])[0]

    def put_all(self, puts: list[Put]) -> list[bool]:
        """Store entries (put_meta's, each with its whole body when it is in hand) in one transaction
        of the index holding one of the objects: each is stored unless its key was invalidated since
        its generation (False: nothing of it written). A body's block is written to a part file first,
        outside the transaction, and renamed into place in it, with its checksum: no fill, lease or
        publish of its own. A part file left by a kill meanwhile is swept as a dead fill's."""
        parts: list[tuple[FinishedPart, int] | None] = []
        replaced: list[str] = []  # files of blocks these replace: removed once the transaction commits
        committed = False
        try:
            for put in puts:
                parts.append(self._written(put.body) if put.body else None)
            with self.index.transact(), self.objects.transact():
                stored = [self._put(put, part, replaced) for put, part in zip(puts, parts, strict=True)]
            committed = True
        finally:
            for part in parts:
                if part is None:
                    continue
                with contextlib.suppress(FileNotFoundError):  # renamed into place, unless not stored
                    os.unlink(part[0].path)
                if part[0].filename and not committed:  # renamed, then rolled back: nobody's file
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.objects.directory, part[0].filename))
        for filename in replaced:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.objects.directory, filename))
        done = [(put, part) for put, part, ok in zip(puts, parts, stored, strict=True) if ok]
        self._changed(*(k for put, _ in done for k in (put.key, vary_index_key(put.primary))))
        for put, part in done:
            if isinstance(put.entry, CachedObject):
                if part is not None and part[0].filename:  # renamed into place (not already stored)
                    self._published(put.entry.block_key(0), part[0])
                else:
                    self.keeper.touched([_prefix(put.entry)])  # a 304's freshening, or the same bytes again
        return stored

    def _written(self, body: bytes) -> tuple[FinishedPart, int]:
        """A part file holding `body`, and the checksum of its bytes."""
        fd, path = self.new_part()
        try:
            try:
                write_all(fd, body)
            finally:
                os.close(fd)
        except BaseException:
            os.unlink(path)
            raise
        return FinishedPart(path, len(body)), checksum(body)

    def _put(self, put: Put, part: tuple[FinishedPart, int] | None, replaced: list[str]) -> bool:
        """One entry of put_all, in its transaction."""
        if self.generation(put.primary) != put.generation:
            return False
        if put.purges is not None and self.purge_mark() != put.purges:
            return False  # a purge by prefix or tag since its request was looked up (purge_prefix)
        if put.vary is not None:
            self._update_vary_index(put.primary, put.key, put.vary)
        self.tags.replace(put.key, put.tags)
        entry = put.entry
        if isinstance(entry, CachedObject):
            self.index.set(_OBJECT + _prefix(entry), (put.key, entry.size, entry.block_count))
            if part is not None:
                self._put_block(entry.block_key(0), part, replaced)
        self.objects.set(put.key, (META_FORMAT, put.generation, entry))
        return True

    def _put_block(self, key: str, part: tuple[FinishedPart, int], replaced: list[str]) -> None:
        """A whole body's block, in put_all's transaction. The same bytes already stored (the same
        version fetched again) stay as they are. Another block under the key loses its row here and
        its file only once the transaction commits (diskcache's set would remove the file at once,
        inside the caller's transaction: a rollback would leave a row naming no file, and a reader
        meanwhile would find the file gone under a committed row)."""
        row = self.objects._sql("SELECT rowid, filename, tag FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
        if row is not None:
            if row[1] is not None and row[2] == part[1]:
                return  # the part file goes with the others
            self.objects._sql("DELETE FROM Cache WHERE rowid = ?", (row[0],))
            if row[1] is not None:
                replaced.append(row[1])
        self.objects.set(key, part[0], read=True, tag=part[1])

    def _update_vary_index(self, primary: str, key: str, vary: tuple[str, ...]) -> None:
        """Record `key` as the newest variant; when the fields the responses vary on change, the
        variants of the old fields go (metadata and blocks): never orphaned, never answers. At most
        `max_variants` are kept, the oldest going first."""
        index_key = vary_index_key(primary)
        current = self.index.get(index_key)
        same = isinstance(current, VaryIndex) and current.fields == vary
        gone: list[str] = []
        if isinstance(current, VaryIndex) and not same:
            gone = [old for old in current.selections if old != key]
        if vary:
            kept = [old for old in current.selections if old != key] if isinstance(current, VaryIndex) and same else []
            kept.append(key)  # the newest last
            excess = len(kept) - self.max_variants
            if excess > 0:  # clients choose the values a response varies on: the oldest variants go
                gone, kept = gone + kept[:excess], kept[excess:]
            self.index.set(index_key, VaryIndex(vary, tuple(kept)))
        elif current is not None:
            self.index.delete(index_key)  # it no longer varies
        for old in gone:
            stale = self.get_object(old, fresh=True)
            self._delete(old)
            self.tags.forget([old])
            if stale is not None:
                self.drop_blocks(stale)

    def forget_meta(self, key: str, validator: str) -> bool:
        """Delete the object stored under `key` if it is still the version named by `validator`."""
        with self.objects.transact():
            stored = self._stored(key, fresh=True)
            if stored is None or not isinstance(stored[1], CachedObject) or stored[1].validator != validator:
                return False
            self._delete(key)
        self._changed(key)
        self.tags.forget([key])
        return True

    def delete(self, *keys: str) -> None:
        self._delete(*keys)
        self._changed(*keys)

    def _delete(self, *keys: str) -> None:
        """Delete without telling other processes: the caller does, once its transaction is committed."""
        for key in keys:
            self.objects.delete(key)

    def get_object(self, key: str, fresh: bool = False) -> CachedObject | None:
        """The object stored under `key`, whatever its generation."""
        stored = self._stored(key, fresh)
        return stored[1] if stored is not None and isinstance(stored[1], CachedObject) else None

    # --- blocks -------------------------------------------------------------
    def open_block(self, key: str, length: int) -> IO[bytes] | None:
        """The stored block, an open file, or None: not stored, or damaged (then dropped). Its
        length is checked, and its checksum the first time this process opens it (the bytes are
        read once; a descriptor kept open is not checked again: the scrub sees to it)."""
        found = self._examine(key, length, _Read.OPEN)
        if found is None or not self._judge(key, found):
            return None
        return found.handle

    def read_block(self, key: str, length: int) -> bytes | None:
        """The stored block's bytes, checked as they are read (every time), or None as open_block."""
        found = self._examine(key, length, _Read.BYTES)
        return found.data if found is not None and self._judge(key, found) else None

    def scrub_block(self, key: str, length: int) -> int:
        """Read a stored block again and check it (dropped if damaged), whether or not it was checked
        before; the bytes read."""
        found = self._examine(key, length, _Read.SCRUB)
        if found is None:
            return 0
        self._judge(key, found)
        self.tallies.scrubbed(1, found.read)
        return found.read

    def inspect_block(self, key: str, length: int) -> tuple[Verdict, int, str] | None:
        """Read a stored block and check it, acting on nothing: (verdict, bytes read, its file's
        name), or None when it is not stored (edgecache verify)."""
        found = self._examine(key, length, _Read.CHECK)
        return (found.verdict, found.read, found.filename) if found is not None else None

    def _examine(self, key: str, length: int, how: _Read) -> _Examined | None:
        """Check a stored block of `length` bytes (None: not stored). OPEN returns the open file,
        checking its bytes only when this process has not before; BYTES reads them into memory."""
        row = self.objects._sql("SELECT filename, tag FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
        if row is None or row[0] is None:
            return None
        filename, recorded = row[0], row[1] if isinstance(row[1], int) else None
        try:
            handle = open(os.path.join(self.objects.directory, filename), "rb")
        except FileNotFoundError:
            still = self.objects._sql("SELECT 1 FROM Cache WHERE key = ? AND raw = 1 AND filename = ?",
                                      (key, filename)).fetchone()
            # Gone with its row: an eviction racing with this read. Gone alone: lost.
            return _Examined(Verdict.MISSING, filename) if still is not None else None
        kept = False
        try:
            actual = os.fstat(handle.fileno()).st_size
            if actual != length:
                return _Examined(verdict(length, actual, recorded, None), filename)
            if how is _Read.BYTES:
                data = handle.read(length + 1)
                computed = checksum(data) if len(data) == length else None
                return _Examined(verdict(length, len(data), recorded, computed), filename, computed, data=data,
                                 read=len(data))
            if how is _Read.OPEN and filename in self._checked:
                kept = True
                return _Examined(Verdict.SOUND, filename, handle=handle)
            # The scrub reads cold blocks: a block none of whose pages was in memory leaves it again
            # (one partly in memory is left as it is: its pages may be a hit's).
            cold = how is _Read.SCRUB and pagecache.absent(handle.fileno(), 0, length)
            computed, read = file_checksum(handle.fileno(), length)
            if cold:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            found = verdict(length, read, recorded, computed if read == length else None)
            kept = how is _Read.OPEN and not found.damaged
            return _Examined(found, filename, computed, handle=handle if kept else None, read=read)
        finally:
            if not kept:
                handle.close()

    def _judge(self, key: str, found: _Examined) -> bool:
        """Act on a block's check: remember a sound file as checked (recording the checksum of one
        stored before blocks had them), drop a damaged one. Whether it may be served."""
        if found.verdict is Verdict.UNRECORDED:
            with self.objects.transact():
                self.objects._sql("UPDATE Cache SET tag = ? WHERE key = ? AND raw = 1 AND filename = ? AND tag IS NULL",
                                  (found.computed, key, found.filename))
        if not found.verdict.damaged:
            self._remember_checked(found.filename)
            return True
        if found.handle is not None:
            found.handle.close()
        self.drop_damaged(key, found.filename, found.verdict)
        return False

    def _scrubbed(self, blocks: int, size: int) -> None:
        self.tallies.scrub_pass()
        log.debug("scrub: %d stored blocks checked (%d bytes)", blocks, size)

    def _remember_checked(self, filename: str) -> None:
        with self._memo_lock:
            self._checked[filename] = None
            self._checked.move_to_end(filename)
            if len(self._checked) > CHECKED_AT_HAND:
                self._checked.popitem(last=False)

    def drop_damaged(self, key: str, filename: str, found: Verdict) -> None:
        """Remove a damaged block (if the store still names that file for it), count it and tell the
        policy; the object's next request fills the block again from the origin. Readers that found
        the same damage at once (two workers, a read and the scrub) count and log it once: only the
        one whose DELETE removed the row does."""
        with self._memo_lock:
            self._checked.pop(filename, None)
        with self.objects.transact():
            removed = self.objects._sql("DELETE FROM Cache WHERE key = ? AND raw = 1 AND filename = ?",
                                        (key, filename)).rowcount
        if not removed:
            return  # another reader dropped it first (or the block was replaced meanwhile)
        self.objects._disk.remove(filename)
        log.error("stored block %s is damaged (%s): dropped, the next request fetches it again from the origin",
                  key, found.value)
        self.tallies.damaged(found)
        prefix, index = split(key)
        self.keeper.dropped(prefix, index)
        found_object = self.object_of(prefix)
        if found_object is not None:
            self._changed(found_object[0])  # answers kept ready from it are given no more

    def has_block(self, key: str) -> bool:
        return key in self.objects

    def new_part(self) -> tuple[int, str]:
        """A new part file for a block being filled: (fd, path)."""
        path = os.path.join(self.parts_dir, f"{secrets.token_hex(16)}.part")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        return fd, path

    def publish_block(self, key: str, path: str, size: int, block_checksum: int | None = None) -> None:
        """Make a complete block visible (atomic: readers see it whole or not at all) with the
        checksum of its bytes (computed from the part file when not given), and tell the cache
        policy, which keeps it or removes it soon (keeper.py)."""
        if block_checksum is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                block_checksum, _ = file_checksum(fd, size)
            finally:
                os.close(fd)
        part = FinishedPart(path, size)
        self.objects.set(key, part, read=True, tag=block_checksum)
        self._published(key, part)

    def _published(self, key: str, part: FinishedPart) -> None:
        """A block is stored (published, or stored with its metadata): its file is known sound, and
        the cache policy keeps it or removes it soon. A worker that does not keep the policy waits a
        moment first while the keeper has not made room for its last blocks (Keeper.admit)."""
        self._remember_checked(part.filename)  # its bytes were checksummed as they were written
        size = part.size
        try:
            on_disk = os.stat(os.path.join(self.objects.directory, part.filename)).st_blocks * 512
        except FileNotFoundError:  # evicted already
            on_disk = 0
        cost = footprint.block_cost(size, self.unit, on_disk)
        self.keeper.admit(cost)
        prefix, index = split(key)
        found = self.object_of(prefix)
        if found is None:  # a body stored whole before its metadata (one block)
            found = (key, size * (index + 1), index + 1)
        self.keeper.filled(prefix, index, cost, footprint.object_cost(found[1], found[2], self.unit), found[2])

    # --- what the cache policy's keeper asks (keeper.Blocks) -------------------
    def object_of(self, prefix: str) -> tuple[str, int, int] | None:
        found = self._objects_at_hand.get(prefix)
        if found is None:
            value = self.index.get(_OBJECT + prefix)
            if not (isinstance(value, tuple) and len(value) == 3):
                return None
            found = value
            with self._memo_lock:
                self._objects_at_hand[prefix] = found
                if len(self._objects_at_hand) > OBJECTS_AT_HAND:
                    self._objects_at_hand.popitem(last=False)
        return found

    def remove_blocks(self, keys: list[str]) -> None:
        """In one transaction, their files once it is committed: a reader that finds a block's row
        finds its file (diskcache's delete in a transaction of the caller's removes the file at once,
        which a reader in another process would take for a lost block)."""
        if not keys:
            return
        files = []
        with self.objects.transact():
            for key in keys:
                files += self.objects._sql("SELECT filename FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchall()
                self.objects._sql("DELETE FROM Cache WHERE key = ? AND raw = 1", (key,))
        for (filename,) in files:
            if filename is not None:
                self.objects._disk.remove(filename)
        if self.objects.on_evict is not None:
            self.objects.on_evict(len(keys))

    def remove_objects(self, prefixes: list[str]) -> None:
        """Forget the metadata of objects whose last block went (unless a newer version took its key)."""
        found = [(prefix, self.object_of(prefix)) for prefix in prefixes]
        with self.index.transact():
            for prefix in prefixes:
                self.index.delete(_OBJECT + prefix)
                self._objects_at_hand.pop(prefix, None)
        gone = []
        with self.objects.transact():
            for prefix, known in found:
                if known is None:
                    continue
                stored = self._stored(known[0], fresh=True)
                if stored is not None and isinstance(stored[1], CachedObject) and _prefix(stored[1]) == prefix:
                    self._delete(known[0], _HITS + known[0])
                    gone.append(known[0])
        if gone:
            self._changed(*gone)
            self.tags.forget(gone)

    def cull_metadata(self, kept: Callable[[str], bool], limit: int = 100) -> int:
        """Remove up to `limit` of the oldest metadata entries whose object has no block the policy
        keeps (`kept(prefix)` false): pass markers, empty bodies, objects whose blocks went but
        were served again meanwhile. What keeps them within the store's size; how many went.
        At most ten pages of `limit` entries are looked at."""
        gone: list[str] = []
        for page in range(10):
            rows = self.objects._sql("SELECT key FROM Cache WHERE key > 'm|' AND key < 'm}' AND raw = 1 "
                                     "ORDER BY store_time LIMIT ? OFFSET ?", (limit, page * limit)).fetchall()
            for (key,) in rows:
                stored = self._stored(key, fresh=True)
                entry = stored[1] if stored is not None else None
                if not (isinstance(entry, CachedObject) and entry.size and kept(_prefix(entry))):
                    gone.append(key)
            if len(gone) >= limit or len(rows) < limit:
                break
        with self.objects.transact():
            for key in gone[:limit]:
                self._delete(key, _HITS + key)
        if gone:
            self._changed(*gone[:limit])
            self.tags.forget(gone[:limit])
            if self.objects.on_evict is not None:
                self.objects.on_evict(len(gone[:limit]))
        return len(gone[:limit])

    def index_objects(self) -> None:
        """Record, for every stored object, which blocks are its (the index's d| entries), page by
        page: a cache directory from before the cache policy has none."""
        after = "m|"
        while True:
            rows = self.objects._sql("SELECT key FROM Cache WHERE key > ? AND key < 'm}' AND raw = 1 "
                                     "ORDER BY key LIMIT 1000", (after,)).fetchall()
            for (key,) in rows:
                obj = self.get_object(key, fresh=True)
                if obj is not None and obj.size and self.object_of(_prefix(obj)) is None:
                    self.index.set(_OBJECT + _prefix(obj), (key, obj.size, obj.block_count))
            if len(rows) < 1000:
                return
            after = rows[-1][0]

    def stored_blocks(self) -> Iterator[tuple[str, int]]:
        """Page by page (the caller may remove blocks meanwhile); diskcache stores str keys with raw = 1."""
        after = "b|"
        while True:
            rows = self.objects._sql("SELECT key, size FROM Cache WHERE key > ? AND key < 'b}' AND raw = 1 "
                                     "ORDER BY key LIMIT 1000", (after,)).fetchall()
            yield from rows
            if len(rows) < 1000:
                return
            after = rows[-1][0]

    def block_total(self) -> tuple[int, int]:
        """How many blocks are stored, and their bytes."""
        count, size = self.objects._sql("SELECT COUNT(*), TOTAL(size) FROM Cache WHERE key > 'b|' AND key < 'b}' "
                                        "AND raw = 1", ()).fetchone()
        return int(count), int(size)

    def sweep_parts(self, older_than: float) -> int:
        """Remove part files left by dead fills (kill -9): never visible, just clutter. A part
        file a live fill's lease names is kept, however long its origin stalls."""
        removed = 0
        cutoff = time.time() - older_than
        live = {self.leases.get(name) for name in self.leases.iterkeys()}
        for name in os.listdir(self.parts_dir):
            path = os.path.join(self.parts_dir, name)
            try:
                if path not in live and os.stat(path).st_mtime < cutoff:
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

    # --- figures and listing ------------------------------------------------
    def overhead(self) -> int:
        """Bytes on disk of the cache directory but its block and part files (databases, WAL files,
        the policy's state, folders...): what the keeper reserves from the limit."""
        return footprint.measure(self.directory, self.objects.directory, self.parts_dir)

    def filling(self) -> int:
        """Bytes the part files under way will take: a fill's (a live lease names it) a block at
        least, another's (a small body written whole, about to be stored) what it takes. One query
        (diskcache keeps a short str value in its row)."""
        fills = {value for (value,) in self.leases._sql("SELECT value FROM Cache WHERE expire_time IS NULL "
                                                          "OR expire_time > ?", (time.time(),)).fetchall()}
        return footprint.filling(self.parts_dir, fills, footprint.block_cost(self.block_size, self.unit))

    def database_bytes(self) -> int:
        """Bytes of the metadata's database in use (its free pages, which it keeps, not counted)."""
        (pages,) = self.objects._sql("PRAGMA page_count").fetchone()
        (free,) = self.objects._sql("PRAGMA freelist_count").fetchone()
        (page,) = self.objects._sql("PRAGMA page_size").fetchone()
        return (int(pages) - int(free)) * int(page)

    def volume(self) -> int:
        """Bytes the stored responses take on disk (metadata and blocks)."""
        return int(self.objects.volume())

    def entry_count(self) -> int:
        """Stored metadata and blocks (the hit counts beside them not counted)."""
        (counts,) = self.objects._sql("SELECT COUNT(*) FROM Cache WHERE key >= 'h|' AND key < 'h}' AND raw = 1",
                                      ()).fetchone()
        return len(self.objects) - int(counts)

    def list_objects(self, after: str, limit: int) -> list[Listed]:
        """Up to `limit` stored responses whose meta keys sort after `after`, in key order: one
        page, read with an indexed range query, never every key at once."""
        # diskcache's table: str keys are stored with raw = 1; (key, raw) is its unique index.
        rows = self.objects._sql(
            "SELECT key, store_time FROM Cache WHERE key > ? AND key < 'm}' AND raw = 1 ORDER BY key LIMIT ?",
            (max(after, "m|"), limit),
        ).fetchall()
        listed = []
        for key, stored_at in rows:
            obj = self.get_object(key)
            if obj is None:
                continue
            prefix = obj.block_key(0).rpartition("|")[0]
            (cached,) = self.objects._sql(
                "SELECT COUNT(*) FROM Cache WHERE key >= ? AND key < ? AND raw = 1", (prefix + "|", prefix + "}")
            ).fetchone()
            hits = self.objects.get(_HITS + key, 0)
            listed.append(Listed(primary_of(key) or key, key, obj.size, obj.block_count, cached, stored_at,
                                 hits if isinstance(hits, int) else 0))
        return listed

    def add_hits(self, counts: dict[str, int]) -> None:
        """Add to the hit counts of stored responses (by meta key), in one transaction. They live
        beside the responses, in the store that evicts (no files or connections of their own).
        The cache policy hears of them here, in a batch: a hit itself costs it nothing."""
        with self.objects.transact():
            for key, hits in counts.items():
                self.objects.incr(_HITS + key, hits)
        self.keeper.touched([_prefix(obj) for obj in map(self.get_object, counts) if obj is not None])

    def policy_figures(self) -> dict[str, float]:
        """The cache policy's figures (its keeper's, whichever worker keeps it)."""
        return self.keeper.figures()

    def integrity_figures(self) -> dict[str, float]:
        """What the checks of blocks and databases found, in every process (integrity.Tallies)."""
        return self.tallies.figures()

    # --- purge ---------------------------------------------------------------
    def purge(self, primary: str) -> int:
        """Forget every stored response (and its blocks) for a primary key; how many.

        The generation goes up first, in the same transaction that takes the Vary index,
        so a fill that read the old version can no longer store it afterwards.
        """
        with self.index.transact():
            self.index.set(_generation_key(primary), self.generation(primary) + 1)
            index = self.index.pop(vary_index_key(primary), None)
        keys = {meta_key(primary, "")} | (set(index.selections) if isinstance(index, VaryIndex) else set())
        self._changed(_generation_key(primary), vary_index_key(primary), *keys)
        objects = [o for o in (self.get_object(k, fresh=True) for k in keys) if o is not None]
        self.delete(*keys)
        self.tags.forget(keys)
        for key in keys:
            self.objects.delete(_HITS + key)  # a purged response starts its count again
        for obj in objects:
            self.drop_blocks(obj)
        return len(objects)

    def purge_mark(self) -> int:
        """The count of purges by prefix or tag, in every process (see _purge_begins)."""
        return self.epochs.read(self.epochs.purges)

    def _purge_begins(self) -> None:
        """A purge by prefix or tag counts itself, then waits for the index's write lock, before it
        looks: a store whose request was looked up before the count and whose transaction had begun
        (it checks the count in it, Put.purges) has committed, and is found; one whose transaction
        begins later sees the count and stores nothing."""
        self.epochs.bump(self.epochs.purges)
        with self.index.transact():
            pass

    def purge_prefix(self, prefix: str, stale_at: float | None = None) -> list[str]:
        """Purge every primary key starting with `prefix` (or mark it stale, see purge_key); the keys purged."""
        self._purge_begins()
        keys = [*self.objects.iterkeys(), *self.index.iterkeys()]
        primaries = {p for k in keys if isinstance(k, str) and (p := primary_of(k)) is not None}
        purged = sorted(p for p in primaries if p.startswith(prefix))
        for primary in purged:
            self.purge_key(primary, stale_at)
        return purged

    def purge_tag(self, tag: str, stale_at: float | None = None) -> list[str]:
        """Purge every primary key with a response stored with the cache tag `tag` (or mark it
        stale, see purge_key); the keys that held something."""
        self._purge_begins()
        primaries = sorted({p for key in self.tags.keys_with(tag) if (p := primary_of(key)) is not None})
        return [primary for primary in primaries if self.purge_key(primary, stale_at)]

    def purge_key(self, primary: str, stale_at: float | None = None) -> int:
        """purge(primary), or with `stale_at` mark_stale(primary, stale_at) (a soft purge)."""
        return self.purge(primary) if stale_at is None else self.mark_stale(primary, stale_at)

    def mark_stale(self, primary: str, at: float) -> int:
        """A soft purge: every response stored for a primary key is stale from `at` on (or from
        when it was marked before, if earlier), and stays stored: the next request revalidates
        it, and it may still answer stale (stale-while-revalidate, stale-if-error, an origin
        that cannot be reached). How many were marked.

        As for a purge, the generation goes up, in the transaction that rewrites the responses
        under the new one: a fill that read the old version cannot store it afterwards as fresh.
        """
        with self.index.transact():
            generation = self.generation(primary)
            self.index.set(_generation_key(primary), generation + 1)
            index = self.index.get(vary_index_key(primary))
            keys = {meta_key(primary, "")} | (set(index.selections) if isinstance(index, VaryIndex) else set())
            marked = 0
            for key in keys:
                stored = self._stored(key, fresh=True)
                if stored is not None and stored[0] == generation and isinstance(stored[1], CachedObject):
                    obj = stored[1]
                    stale = dataclasses.replace(obj, stale_at=min(at, obj.stale_at if obj.stale_at is not None else at))
                    self.objects.set(key, (META_FORMAT, generation + 1, stale))
                    marked += 1
        self._changed(_generation_key(primary), vary_index_key(primary), *keys)
        return marked

    def drop_blocks(self, obj: CachedObject) -> None:
        self.delete(*(obj.block_key(i) for i in range(obj.block_count)))
        prefix = _prefix(obj)
        self.keeper.forgotten(prefix)
        self.index.delete(_OBJECT + prefix)
        self._objects_at_hand.pop(prefix, None)


def _has_file(path: str, size: int) -> bool:
    try:
        return os.stat(path).st_size == size
    except FileNotFoundError:
        return False


def _prefix(obj: CachedObject) -> str:
    """The prefix of an object's block keys: the policy's name for the object (one version of it)."""
    return obj.block_key(0)[:-1]


def _generation_key(primary: str) -> str:
    return "g|" + primary


def _primary(key: str) -> str | None:
    """The primary key a metadata, Vary index or generation key belongs to (None for blocks)."""
    return key[2:] if key.startswith("g|") else primary_of(key)


def _valid_meta(stored: object) -> tuple[int, object] | None:
    """(generation, entry) of stored metadata in this layout, else None (another format: a miss)."""
    if isinstance(stored, tuple) and len(stored) == 3 and stored[0] == META_FORMAT:
        return stored[1], stored[2]
    return None


def _approximate_size(value: object) -> int:
    """Bytes a remembered entry holds, roughly: its headers dominate, and a stored response's
    are held about three times once it has answered (as they are, indexed, as a representation)."""
    entry = value[-1] if isinstance(value, tuple) and value else value
    if isinstance(entry, VaryIndex):  # its selections, each a key of some 40 bytes and more
        return 256 + sum(len(selection) + 64 for selection in entry.selections)
    headers = getattr(entry, "headers", None)
    fields = sum(len(n) + len(v) for n, v in headers) if isinstance(headers, list) else 0
    return 256 + 3 * fields
