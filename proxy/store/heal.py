"""A damaged store database heals: found at start (every database checked) or when SQLite says so
at run time, it is moved aside and replaced, rebuilt from what can still be read, or empty.

The check at start is `PRAGMA quick_check`: it reads every page of the database and checks
each b-tree's structure and records (what truncation, garbage or flipped bytes in a page
break), without `integrity_check`'s cross-check of every index entry against its table,
which costs a lookup per row (several times longer on a large index of small objects) and
finds what a damaged page already shows. At run time, a statement that SQLite answers with
SQLITE_CORRUPT ("database disk image is malformed") or SQLITE_NOTADB ("file is not a
database") names its database damaged.

Several processes share the cache directory: one heals at a time, holding an exclusive lock
on `heal.lock` (at start the others wait on it before they open anything; at run time the
one that saw the damage heals, and a process that saw it too finds it healed when it gets
the lock). A healed database has a new generation (integrity.Tallies): every connection to
it, in any process and thread, is opened again before its next statement (HealingCache).

What a database is replaced with (`remedy`):
- objects (metadata and blocks): the rows that can still be read, each block's file there
  with its length (its bytes are checked when first opened, as after every start); block
  files the rows do not name are removed;
- index (Vary indexes, purge generations, block ownership, cache tags): rebuilt from the
  metadata stored in objects;
- leases, listings (hints for segment prefetch), journal (the policy's pending events):
  empty, which they are at every start but for a moment.
The damaged files are kept in `damaged/` (the latest of each database), for a look.
"""
from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import diskcache

log = logging.getLogger("edgecache.store")

FILES = {"objects": "objects/cache.db", "index": "index/cache.db", "leases": "leases/cache.db",
         "listings": "listings/cache.db", "journal": "policy/journal.db"}
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26
ASIDE = "damaged"  # where damaged databases are moved, in the cache directory
RECENT = 60.0  # seconds: a block file this young may be on its way into a healed database (not removed)


class Health(enum.Enum):
    SOUND = "sound"
    DAMAGED = "damaged"
    BLANK = "blank"  # a database without its table: new, or truncated to nothing


class Remedy(enum.Enum):
    KEEP = "keep"
    SALVAGE = "salvage"  # a new database with the rows of the damaged one that can be read
    REBUILD = "rebuild"  # a new database made from another's (the index, from the metadata)
    EMPTY = "empty"  # a new, empty database
    SWEEP = "sweep"  # keep it, and remove the block files it does not name


def is_damage(error: BaseException) -> bool:
    """Does a SQLite error say its database is damaged (not busy, locked, full or unreachable)?"""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.DatabaseError) and isinstance(code, int) and \
        code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


def remedy(database: str, health: Health) -> Remedy:
    """What to do with a database found in `health`."""
    if health is Health.SOUND:
        return Remedy.KEEP
    if health is Health.BLANK:  # the blocks' rows are gone: their files with them
        return Remedy.SWEEP if database == "objects" else Remedy.KEEP
    return {"objects": Remedy.SALVAGE, "index": Remedy.REBUILD}.get(database, Remedy.EMPTY)


def check(path: str, table: str) -> tuple[Health, str]:
    """The health of the database at `path` (none there: sound, it is created), and what was wrong."""
    if not os.path.exists(path):
        return Health.SOUND, ""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(8)")]
            if problems != ["ok"]:
                return Health.DAMAGED, "; ".join(problems)
            found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
            return (Health.SOUND, "") if found is not None else (Health.BLANK, f"no {table} table")
    except sqlite3.DatabaseError as e:
        if is_damage(e):
            return Health.DAMAGED, str(e)
        raise


class Watch(Protocol):
    """What a HealingCache asks of whoever heals its database."""

    def healings(self, database: str) -> int: ...

    def damaged(self, database: str, error: BaseException) -> None: ...


class HealingCache(diskcache.Cache):  # type: ignore[misc]  # diskcache ships no type information
    """A diskcache Cache whose damaged database is reported to `watch` when a statement finds it,
    and whose connections are opened again once it was healed (replaced) in any process."""

    def __init__(self, directory: str, database: str, watch: Watch, **settings: Any) -> None:
        self._database, self._watch = database, watch
        super().__init__(directory, **settings)

    @property
    def _con(self) -> sqlite3.Connection:
        local = self._local
        generation = self._watch.healings(self._database)
        if getattr(local, "generation", generation) != generation and self._txn_id != threading.get_ident():
            self.close()  # this thread's connection, to the database as it was before it was healed
        local.generation = generation
        with self._watched():  # a new connection reads the database's settings
            con: sqlite3.Connection = diskcache.Cache._con.fget(self)
        return con

    @property
    def _sql(self) -> Callable[..., sqlite3.Cursor]:
        execute = self._con.execute

        def watched(*args: Any) -> sqlite3.Cursor:
            with self._watched():
                return execute(*args)

        return watched

    @contextlib.contextmanager
    def _watched(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as e:
            if is_damage(e):
                self._watch.damaged(self._database, e)
            raise


class Healer:
    """The lock that makes one process heal at a time, and moving damaged databases aside."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._fd = os.open(os.path.join(directory, "heal.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lock = threading.Lock()  # flock does not exclude this process's other threads

    def close(self) -> None:
        os.close(self._fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def path(self, database: str) -> str:
        return os.path.join(self.directory, FILES[database])

    def check(self, database: str) -> tuple[Health, str]:
        return check(self.path(database), "events" if database == "journal" else "Cache")

    def set_aside(self, database: str) -> str:
        """Move the database's files (with its WAL, which holds its latest pages) into damaged/,
        where they replace the last damaged copy of that database; the new path of the database."""
        aside = os.path.join(self.directory, ASIDE)
        os.makedirs(aside, exist_ok=True)
        for old in os.listdir(aside):
            if old.startswith(database + "-"):
                os.unlink(os.path.join(aside, old))
        target = os.path.join(aside, f"{database}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.db")
        source = self.path(database)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(source + suffix, target + suffix)
        return target


COLUMNS = "key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename, value"
_BATCH = 256  # rows read at a time from a damaged database


def readable_rows(path: str) -> Iterator[tuple[Any, ...]]:
    """The rows of a damaged diskcache database that can still be read, in rowid order (COLUMNS).
    Past a stretch that cannot be read, the next rows are looked for further and further ahead."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    except sqlite3.DatabaseError:
        return
    with contextlib.closing(db):
        after, skip, batch = -1, 1, _BATCH
        while after < 2**62:
            try:
                rows = db.execute(f"SELECT rowid, {COLUMNS} FROM Cache WHERE rowid > ? ORDER BY rowid LIMIT ?",
                                  (after, batch)).fetchall()
            except sqlite3.DatabaseError:
                if batch > 1:  # the damage is somewhere in this batch: go row by row
                    batch = 1
                else:
                    after, skip = after + skip, skip * 2
                continue
            if not rows:
                return
            skip, batch = 1, _BATCH
            after = rows[-1][0]
            for row in rows:
                yield row[1:]


def block_files(directory: str) -> Iterator[str]:
    """The block files under a diskcache directory ('ab/<name>.val', and 'ab/cd/<name>.val' of
    diskcache's own layout), by relative path in sorted order, one folder at a time."""
    for top in sorted(os.listdir(directory)):
        folder = os.path.join(directory, top)
        if len(top) != 2 or not os.path.isdir(folder):
            continue
        names: list[str] = []
        for name in os.listdir(folder):
            if name.endswith(".val"):
                names.append(f"{top}/{name}")
            elif len(name) == 2 and os.path.isdir(os.path.join(folder, name)):
                names.extend(f"{top}/{name}/{inner}" for inner in os.listdir(os.path.join(folder, name))
                             if inner.endswith(".val"))
        yield from sorted(names)


def unnamed(files: Iterator[str], named: Iterator[str]) -> Iterator[str]:
    """The files (sorted) not among `named` (sorted): a merge of the two."""
    current = next(named, None)
    for name in files:
        while current is not None and current < name:
            current = next(named, None)
        if current != name:
            yield name
