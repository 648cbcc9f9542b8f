"""What the workers of one cache directory tell its policy's keeper: events in a small SQLite
table, appended in batches, taken in order and then deleted by the keeper."""
from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator

from . import footprint
from .heal import Watch, is_damage

FILL, TOUCH, FORGET, DROP = 0, 1, 2, 3  # DROP: one block gone behind the policy's back (damaged)
# kind, object (its blocks' key prefix), block, block size, object size, object's block count
Event = tuple[int, str, int, int, int, int]


class Journal:
    """`watch`: told of damage found at run time, and says when the database was replaced (heal.py)."""

    def __init__(self, path: str, watch: Watch | None = None) -> None:
        self.path = path
        self.watch = watch
        self._local = threading.local()  # one connection per thread, as sqlite3 wants
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, kind INTEGER, "
                       "key TEXT, block INTEGER, size INTEGER, object_size INTEGER, object_blocks INTEGER)")

    def connect(self) -> None:
        """Open this thread's connection now (not at its first event)."""
        self._db()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        generation = self.watch.healings("journal") if self.watch is not None else 0
        if db is not None and self._local.generation != generation:  # replaced: open the new one
            with self._lock:
                self._connections.remove(db)
            db.close()
            db = None
        if db is None:
            db = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA journal_size_limit={footprint.WAL_BYTES}")  # it counts in the limit
            db.execute(f"PRAGMA wal_autocheckpoint={footprint.WAL_PAGES}")
            self._local.db, self._local.generation = db, generation
            with self._lock:
                self._connections.append(db)
        return db

    def append(self, events: list[Event]) -> None:
        with self._watched():
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO events (kind, key, block, size, object_size, object_blocks) "
                               "VALUES (?, ?, ?, ?, ?, ?)", events)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def take(self, limit: int) -> list[Event]:
        """The oldest events, at most `limit`, removed from the journal."""
        with self._watched():
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute("SELECT id, kind, key, block, size, object_size, object_blocks FROM events "
                                  "ORDER BY id LIMIT ?", (limit,)).fetchall()
                if rows:
                    db.execute("DELETE FROM events WHERE id <= ?", (rows[-1][0],))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return [row[1:] for row in rows]

    @contextlib.contextmanager
    def _watched(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as e:
            if self.watch is not None and is_damage(e):
                self.watch.damaged("journal", e)
            raise

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
