"""The cache policy (proxy/policy/) of one cache directory, shared by the workers that open it.

One process at a time keeps the policy: the one holding an exclusive lock on
`policy/keeper.lock` (taken again by another worker within a tick when it dies). It
decides for its own fills as they are published; the other workers append what they
did (fills, hits, objects forgotten) to a journal in batches, which it applies every
tick. A hit costs no store transaction: the read path tallies hits in memory and hands
them over in batches (Store.add_hits), which the keeper applies as touches.

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
from .journal import DROP, FILL, FORGET, TOUCH, Event, Journal

log = logging.getLogger("edgecache.policy")

TICK = 0.5  # seconds between the keeper's rounds (journal, figures, metadata)
SAVE_EVERY = 60.0  # seconds between saves of the policy's state
STATE_FORMAT = 3
BATCH = 50_000  # journal events applied per round, at most
METADATA_SLACK = 0.02  # share of the capacity metadata may take beyond it


class Blocks(Protocol):
    """What the keeper asks of the store."""

    def object_of(self, prefix: str) -> tuple[str, int, int] | None:
        """(meta key, size, block count) of the object whose blocks' keys start with `prefix`."""

    def remove_blocks(self, keys: list[str]) -> None: ...

    def remove_objects(self, prefixes: list[str]) -> None:
        """Forget the objects' metadata (their blocks are gone)."""

    def stored_blocks(self) -> Iterator[tuple[str, int]]:
        """(key, size) of every stored block."""

    def volume(self) -> int:
        """Bytes the store takes on disk (blocks and metadata)."""

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
        self.capacity, self.block_size, self.max_entries = capacity, block_size, entries_within(memory)
        self.blocks = blocks
        self.journal = Journal(os.path.join(self.directory, "journal.db"), blocks)
        self._objects_healed = blocks.healings("objects")  # when the blocks were last reconciled
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
        self._event((FILL, prefix, index, size, object_size, object_blocks))

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
            else:
                self._pending.append(event)

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
                pending, self._pending = self._pending, []
                if pending:
                    self.journal.append(pending)
                return
        healed = self.blocks.healings("objects")
        if healed != self._objects_healed:  # the blocks' database was replaced: hold what it holds now
            self._objects_healed = healed
            with self._lock:
                assert self.policy is not None
                self._reconcile(self.policy)
        while True:
            events = self.journal.take(BATCH)
            with self._lock:
                for event in events:
                    self._apply(event)
            if len(events) < BATCH:
                break
        with self._lock:
            self._bound_metadata()
            self._write_figures()
            if time.monotonic() - self._saved >= SAVE_EVERY:
                self._save()

    def _bound_metadata(self) -> None:
        """Metadata is small, but not nothing: beyond METADATA_SLACK of the capacity on top of
        the blocks, the oldest entries whose objects keep no block go (pass markers, say)."""
        policy = self.policy
        assert policy is not None
        while self.blocks.volume() > (policy.capacity + policy.linger) * (1 + METADATA_SLACK):
            gone = self.blocks.cull_metadata(lambda prefix: policy.find(prefix) is not None)
            self.counts["evicted_metadata"] += gone
            if not gone:
                return

    def _run(self) -> None:
        """A round at once (this thread opens its SQLite files when the store opens, not later), then one
        every TICK."""
        self.journal.connect()
        while True:
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - the store's troubles must not end the keeping
                log.warning("cache policy round failed: %s", e)
            if self._stop.wait(TICK):
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
                    policy.capacity + policy.linger == self.capacity \
                    and policy.max_entries == self.max_entries and policy.block_size == self.block_size:
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
            outcome = policy.adopt(prefix, index, size, found[1], found[2]) if found is not None else Refused()
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
            os.close(self._lock_fd)  # releases the keeper's lock
