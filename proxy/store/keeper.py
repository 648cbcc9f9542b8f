"""The cache policy (proxy/policy/) of one cache directory, shared by the workers that open it.

One process at a time keeps the policy: the one holding an exclusive lock on
`policy/keeper.lock` (taken again by another worker within a tick when it dies). It
decides for its own fills as they are published; the other workers append what they
did (fills, hits, objects forgotten) to a journal in batches, every FLUSH, and count what
the blocks they published cost in a shared counter (`policy/unapplied`), which makes the
keeper apply the journal at once. A hit costs no store transaction: the read path tallies
hits in memory and hands them over in batches (Store.add_hits), which the keeper applies
as touches.

The policy weighs each block by what it costs on disk (footprint.py), and holds what the
rest of the cache directory leaves of `cache_size_limit`: the keeper measures the rest every
tick, and the part files under way and the blocks published elsewhere every FLUSH, and resizes
the policy (evicting) when the room shrinks. Another worker's store thread waits a moment after
it stores a block while the keeper has not applied half a slack of blocks yet (backpressure).
Blocks owed that no event tells of for UNHEARD seconds (their worker died) are reconciled.

Every published block stays while the policy holds it: kept, or refused but still in the
policy's small FIFO of refused blocks (a reader may be about to open it; a request for it
meanwhile is the second one, which keeps it, as in the simulator). A block the policy
holds neither way goes at once, with the evictions it asked for. When an object's last
block goes, its metadata goes with it.

The keeper saves the policy's state every SAVE_EVERY seconds and when it closes
(`policy/state`). A new keeper loads it, then reconciles it with the blocks the store holds (blocks it does not know
are adopted as newcomers, blocks gone are dropped), so a restart loses at most the last
minute's ordering. Its figures go to `policy/figures.json` when they change, for the
metrics of every worker.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from ..policy.adaptive import AdaptivePolicy
from ..policy.blocks import Eviction, Fill, Refused, entries_within
from . import footprint
from .epochs import Epochs
from .journal import DROP, FILL, FORGET, TOUCH, Event, Journal

log = logging.getLogger("edgecache.policy")

TICK = 0.5  # seconds between the keeper's rounds (journal, figures, metadata)
FLUSH = 0.05  # seconds: how soon other workers hand over their events, and the keeper applies blocks they published
ADMIT_WAIT = 2.0  # seconds another worker waits at most for the keeper to make room before it publishes a block
UNHEARD = 4 * TICK  # seconds blocks published elsewhere may stay untold of before the keeper reconciles
SAVE_EVERY = 60.0  # seconds between saves of the policy's state
STATE_FORMAT = 4  # 4: blocks weighed by what they cost on disk (footprint.py)
BATCH = 50_000  # journal events applied per round, at most
METADATA_SLACK = 0.02  # share of the capacity the metadata database may take beyond what its rows are charged


class Blocks(Protocol):
    """What the keeper asks of the store."""

    unit: int  # bytes its file system allocates at a time

    def object_of(self, prefix: str) -> tuple[str, int, int] | None:
        """(meta key, size, block count) of the object whose blocks' keys start with `prefix`."""

    def remove_blocks(self, keys: list[str]) -> None: ...

    def remove_objects(self, prefixes: list[str]) -> None:
        """Forget the objects' metadata (their blocks are gone)."""

    def stored_blocks(self) -> Iterator[tuple[str, int]]:
        """(key, size) of every stored block."""

    def overhead(self) -> int:
        """Bytes on disk of the cache directory but its block and part files (footprint.measure)."""

    def filling(self) -> int:
        """Bytes the part files under way will take (footprint.filling)."""

    def database_bytes(self) -> int:
        """Bytes of the metadata's database in use (without its WAL and free pages)."""

    def cull_metadata(self, kept: Callable[[str], bool], limit: int = 100) -> int:
        """Remove old metadata of objects without kept blocks; how many went."""

    def index_objects(self) -> None:
        """Make sure every stored object can be found from its blocks (object_of)."""

    def healings(self, database: str) -> int:
        """How many times a store database was replaced (heal.py): the journal's connections follow."""

    def damaged(self, database: str, error: BaseException) -> None:
        """SQLite found a store database damaged."""


def split(key: str) -> tuple[str, int]:
    """A block key 'b|<digest>|<index>' as (prefix 'b|<digest>|', index)."""
    prefix, _, index = key.rpartition("|")
    return prefix + "|", int(index)


class Keeper:
    def __init__(self, directory: str, capacity: int, block_size: int, memory: int, blocks: Blocks) -> None:
        self.directory = os.path.join(directory, "policy")
        os.makedirs(self.directory, exist_ok=True)
        # the policy weighs blocks by what they cost on disk: a whole block's cost is its block size
        self.capacity, self.max_entries = capacity, entries_within(memory)
        self.block_size = footprint.block_cost(block_size, blocks.unit)
        self.blocks = blocks
        self.journal = Journal(os.path.join(self.directory, "journal.db"), blocks)
        self._objects_healed = blocks.healings("objects")  # when the blocks were last reconciled
        # what the blocks other workers published cost, until the keeper applies their events (never below 0)
        self.unapplied = Epochs(os.path.join(self.directory, "unapplied"), 1)
        self._others: int | None = None  # the rest of the directory, as last measured
        self._owed_since: float | None = None  # since when blocks are owed with no event heard of (keeper)
        self.policy: AdaptivePolicy | None = None  # while this process keeps it
        self.counts: dict[str, int] = {"admitted": 0, "refused": 0, "evicted_space": 0, "evicted_entries": 0,
                                       "evicted_refused": 0, "evicted_metadata": 0}
        self._lock = threading.RLock()
        self._pending: list[Event] = []  # this process's events, for the journal (when another keeps)
        self._saved = time.monotonic()
        self._written: dict[str, float] = {}  # the figures last written
        self._lock_fd = os.open(os.path.join(self.directory, "keeper.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                0o644)
        self._stop = threading.Event()
        self._try_keep()
        self._thread = threading.Thread(target=self._run, name="edgecache-policy", daemon=True)
        self._thread.start()

    # --- events from this process ------------------------------------------------
    def filled(self, prefix: str, index: int, size: int, object_size: int, object_blocks: int) -> None:
        """A block published: `size` and `object_size` are what the block and its object cost on
        disk (footprint.py), which is what the policy weighs."""
        self._event((FILL, prefix, index, size, object_size, object_blocks))

    def admit(self, cost: int) -> None:
        """Before the keeper hears of a block costing `cost` from a worker that does not keep the
        policy: wait (ADMIT_WAIT at most, on a store thread) while what the workers published and the
        keeper has not applied yet leaves no room for it (half the slack, or this one block). The
        keeper's own blocks are applied as they are published."""
        bound = max(int(self.capacity * footprint.SLACK / 2), cost)
        deadline = time.monotonic() + ADMIT_WAIT
        while self.policy is None and self.unapplied.read(0) + cost > bound and time.monotonic() < deadline:
            time.sleep(FLUSH / 5)

    def touched(self, prefixes: list[str]) -> None:
        for prefix in prefixes:
            self._event((TOUCH, prefix, 0, 0, 0, 0))

    def forgotten(self, prefix: str) -> None:
        self._event((FORGET, prefix, 0, 0, 0, 0))

    def dropped(self, prefix: str, index: int) -> None:
        """A block the store removed itself (damaged): no longer in the cache."""
        self._event((DROP, prefix, index, 0, 0, 0))

    def _event(self, event: Event) -> None:
        with self._lock:
            if self.policy is not None:
                self._apply(event)
                return
            self._pending.append(event)
        if event[0] == FILL:
            self.unapplied.bump(0, event[3])

    # --- the keeper's work -------------------------------------------------------
    def _apply(self, event: Event) -> None:
        kind, prefix, index, size, object_size, object_blocks = event
        policy = self.policy
        assert policy is not None
        if kind == FILL:
            outcome = policy.fill(prefix, index, size, object_size, object_blocks)
            self.counts["refused" if isinstance(outcome, Refused) else "admitted"] += 1
            held = policy.held(prefix)
            gone = [] if held is not None and index in held else [f"{prefix}{index}"]
            self._execute(outcome.evicted, gone, prefix)
        elif kind == TOUCH:
            self._execute(policy.touch(prefix))
        elif kind == DROP:
            policy.drop(prefix, index)
        else:
            policy.forget(prefix)

    def _execute(self, evicted: tuple[Eviction, ...], gone: list[str] | None = None, prefix: str = "") -> None:
        """Remove the evicted blocks (and `gone`, a block just published that the policy does not
        hold), then the metadata of objects left without blocks."""
        policy = self.policy
        assert policy is not None
        keys = gone or []
        for eviction in evicted:
            keys.append(f"{eviction.key}{eviction.block}")
            self.counts["evicted_" + eviction.reason.value] += 1
        if not keys:
            return
        self.blocks.remove_blocks(keys)
        emptied = {str(e.key) for e in evicted} | ({prefix} if gone else set())
        self.blocks.remove_objects(sorted(k for k in emptied if policy.held(k) is None))

    def tick(self) -> None:
        """One round: keep the policy if nobody does; as keeper, apply the journal and remove
        refused blocks whose time is up; else hand this process's events to the journal."""
        with self._lock:
            if self.policy is None:
                self._try_keep()
            if self.policy is None:
                self._hand_over()
                return
        healed = self.blocks.healings("objects")
        if healed != self._objects_healed:  # the blocks' database was replaced: hold what it holds now
            self._objects_healed = healed
            with self._lock:
                assert self.policy is not None
                self._reconcile(self.policy)
        self._take_journal()
        self._settle_unheard()
        with self._lock:
            self._fit()
            self._bound_metadata()
            self._write_figures()
            if time.monotonic() - self._saved >= SAVE_EVERY:
                self._save()

    def between(self) -> None:
        """Between rounds, every FLUSH: another worker hands its events over; the keeper applies
        them (and makes room) when blocks were published elsewhere."""
        with self._lock:
            if self.policy is None:
                self._hand_over()
                return
        if self.unapplied.read(0) > 0:
            self._take_journal()
        with self._lock:
            self._fit(measure=False)

    def _hand_over(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self.journal.append(pending)

    def _take_journal(self) -> None:
        """Apply the journal's events (other workers'), in order."""
        while True:
            events = self.journal.take(BATCH)
            with self._lock:
                for event in events:
                    self._apply(event)
            self.unapplied.settle(0, sum(event[3] for event in events if event[0] == FILL))
            if events:
                self._owed_since = None
            if len(events) < BATCH:
                break

    def _settle_unheard(self) -> None:
        """Blocks counted as published elsewhere that no event has told of for UNHEARD seconds: their
        worker died before it handed its events over. The policy takes what the store holds (the
        blocks it was not told of are adopted, or removed), and they are no longer owed."""
        owed = self.unapplied.read(0)
        if owed == 0:
            self._owed_since = None
        elif self._owed_since is None:
            self._owed_since = time.monotonic()
        elif time.monotonic() - self._owed_since >= UNHEARD:
            log.warning("cache policy: %d bytes of blocks published by another worker never told of: "
                        "taking the blocks the store holds", owed)
            with self._lock:
                assert self.policy is not None
                self._reconcile(self.policy)
            self.unapplied.settle(0, owed)
            self._owed_since = None

    def charged(self) -> int:
        """Bytes of the databases the blocks on disk are charged (footprint.ENTRY_BYTES each)."""
        assert self.policy is not None
        return (self.policy.count + self.policy.refused_count()) * footprint.ENTRY_BYTES

    def _fit(self, measure: bool = True) -> None:
        """Give the blocks what the cache directory's other files leave of the limit: measured (or
        as last measured), the fills under way and the blocks published elsewhere as they are now."""
        policy = self.policy
        assert policy is not None
        if measure or self._others is None:
            # the policy's state twice: its next save writes the new one beside it
            self._others = self.blocks.overhead() + footprint.taken(os.path.join(self.directory, "state"))
        others = self._others + self.unapplied.read(0)  # blocks published elsewhere, about to be applied
        room = footprint.room(self.capacity, others, self.blocks.filling(), self.charged())
        current = policy.capacity + policy.linger
        fitted = footprint.fit(current, room, self.capacity)
        if fitted != current:
            self._execute(policy.resize(fitted))

    def _bound_metadata(self) -> None:
        """Metadata is small, but not nothing: beyond METADATA_SLACK of the capacity on top of what
        the blocks are charged for it, the oldest entries whose objects keep no block go (pass
        markers, say)."""
        policy = self.policy
        assert policy is not None
        while self.blocks.database_bytes() - self.charged() > self.capacity * METADATA_SLACK:
            gone = self.blocks.cull_metadata(lambda prefix: policy.find(prefix) is not None)
            self.counts["evicted_metadata"] += gone
            if not gone:
                return

    def _run(self) -> None:
        """A round at once (this thread opens its SQLite files when the store opens, not later), then one
        every TICK, and what happens between rounds every FLUSH."""
        self.journal.connect()
        last = -TICK
        while True:
            try:
                if time.monotonic() - last >= TICK:
                    last = time.monotonic()
                    self.tick()
                else:
                    self.between()
            except Exception as e:  # noqa: BLE001 - the store's troubles must not end the keeping
                log.warning("cache policy round failed: %s", e)
            if self._stop.wait(FLUSH):
                return

    # --- keeping: taking over, saving --------------------------------------------
    def keeping(self) -> bool:
        """Does this process keep the policy now?"""
        return self.policy is not None

    def _try_keep(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        policy, counts, saved = self._load()
        self.policy = policy
        self.counts = counts
        self.unapplied.set(0, 0)  # what was published is reconciled below; later events come through the journal
        self._fit()
        if not saved:  # a cache kept before this policy (or its state lost): its objects' blocks are named anew
            self.blocks.index_objects()
        self._reconcile(policy)
        for event in self._pending:
            self._apply(event)
        self._pending.clear()
        self._saved = time.monotonic()
        log.debug("keeping the cache policy of %s", os.path.dirname(self.directory))

    def _load(self) -> tuple[AdaptivePolicy, dict[str, int], bool]:
        """The saved policy and figures (and True), or new ones."""
        path = os.path.join(self.directory, "state")
        try:
            with open(path, "rb") as f:
                saved = pickle.load(f)
            fmt, policy, counts = saved
            if fmt == STATE_FORMAT and isinstance(policy, AdaptivePolicy) and \
                    policy.max_entries == self.max_entries and policy.block_size == self.block_size:
                return policy, {**self.counts, **counts}, True
        except FileNotFoundError:
            pass
        except (OSError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, EOFError) as e:
            log.warning("cache policy state unreadable, starting anew: %s", e)
        return AdaptivePolicy(self.capacity, self.block_size, self.max_entries), dict(self.counts), False

    def _reconcile(self, policy: AdaptivePolicy) -> None:
        """Make the policy hold exactly the blocks the store holds."""
        seen: set[tuple[str, int]] = set()
        for key, size in self.blocks.stored_blocks():
            prefix, index = split(key)
            held = policy.held(prefix)
            if held is not None and index in held:
                seen.add((prefix, index))
                continue
            found = self.blocks.object_of(prefix)
            unit = self.blocks.unit
            outcome = policy.adopt(prefix, index, footprint.block_cost(size, unit),
                                   footprint.object_cost(found[1], found[2], unit), found[2]) \
                if found is not None else Refused()
            if isinstance(outcome, Refused):
                self.blocks.remove_blocks([key])
            else:
                seen.add((prefix, index))
            self._decided_quietly(policy, outcome)
        for cached in [*policy.t1, *policy.t2, *policy.refused]:
            for index in [i for i in policy.held(cached) or {} if (str(cached), i) not in seen]:
                policy.drop(cached, index)

    def _decided_quietly(self, policy: AdaptivePolicy, outcome: Fill) -> None:
        keys = [f"{e.key}{e.block}" for e in outcome.evicted]
        if keys:
            self.blocks.remove_blocks(keys)
            self.blocks.remove_objects(sorted({str(e.key) for e in outcome.evicted if policy.held(e.key) is None}))

    def _save(self) -> None:
        path = os.path.join(self.directory, "state")
        temporary = f"{path}.{os.getpid()}"
        with open(temporary, "wb") as f:
            pickle.dump((STATE_FORMAT, self.policy, self.counts), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)
        self._saved = time.monotonic()

    def _write_figures(self) -> None:
        assert self.policy is not None
        figures: dict[str, float] = {**self.policy.figures(), **self.counts, "bytes": self.policy.used,
                                     "capacity": self.capacity}
        if figures == self._written:
            return
        self._written = figures
        path = os.path.join(self.directory, "figures.json")
        temporary = f"{path}.{os.getpid()}"
        with open(temporary, "w") as f:
            json.dump(figures, f)
        os.replace(temporary, path)

    def figures(self) -> dict[str, float]:
        """The keeper's latest figures (from any worker), or none yet."""
        try:
            with open(os.path.join(self.directory, "figures.json")) as f:
                loaded = json.load(f)
        except (OSError, ValueError):
            return {}
        return {k: float(v) for k, v in loaded.items() if isinstance(v, (int, float))}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self.tick()
            with self._lock:
                if self.policy is not None:
                    self._save()
        finally:
            self.journal.close()
            self.unapplied.close()
            os.close(self._lock_fd)  # releases the keeper's lock
