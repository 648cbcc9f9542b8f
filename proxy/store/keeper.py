"""The cache policy (proxy/policy/) of one cache directory, shared by the workers that open it.

One process at a time keeps the policy: the one holding an exclusive lock on
`policy/keeper.lock` (taken again by another worker within a tick when it dies). It
decides for its own fills as they are published; the other workers append what they
did (fills, hits, objects forgotten) to a journal in batches, which it applies every
tick. A hit costs no store transaction: the read path tallies hits in memory and hands
them over in batches (Store.add_hits), which the keeper applies as touches.

A refused block stays readable for GRACE seconds (a reader may be about to open it), and
only while the cache has room for it beside what the policy keeps; then it goes. A hit on
it meanwhile is the second request that admits it, as in the simulator. When an object's
last block goes, its metadata goes with it.

The keeper saves the policy's state every SAVE_EVERY seconds and when it closes
(`policy/state`, with the refused blocks still to remove). A new keeper loads it, removes
those, then reconciles the policy with the blocks the store holds (blocks it does not know
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
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

from ..policy.adaptive import AdaptivePolicy
from ..policy.blocks import Fill, Refused, entries_within
from .journal import FILL, FORGET, TOUCH, Event, Journal

log = logging.getLogger("edgecache.policy")

TICK = 0.5  # seconds between the keeper's rounds (journal, refused blocks, figures)
GRACE = 5.0  # seconds a refused block stays readable
SAVE_EVERY = 60.0  # seconds between saves of the policy's state
STATE_FORMAT = 2
BATCH = 50_000  # journal events applied per round, at most
LINGERING = 100_000  # refused blocks awaiting removal, at most (beyond it they go at once)
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


Lingering = tuple[float, list[tuple[int, int]], tuple[int, int]]


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
        self.clock = time.monotonic  # when refused blocks are due (tests set their own)
        self.journal = Journal(os.path.join(self.directory, "journal.db"))
        self.policy: AdaptivePolicy | None = None  # while this process keeps it
        self.counts: dict[str, int] = {"admitted": 0, "refused": 0, "evicted_space": 0, "evicted_entries": 0,
                                       "evicted_refused": 0, "evicted_metadata": 0}
        self._lock = threading.RLock()
        self._pending: list[Event] = []  # this process's events, for the journal (when another keeps)
        # refused blocks still readable, by object: (when they go, [(block, size)], (object size, blocks))
        self._lingering: OrderedDict[str, Lingering] = OrderedDict()
        self._lingering_bytes = 0
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

    def _event(self, event: Event) -> None:
        with self._lock:
            if self.policy is not None:
                self._apply(event, self.clock())
            else:
                self._pending.append(event)

    # --- the keeper's work -------------------------------------------------------
    def _apply(self, event: Event, now: float) -> None:
        kind, prefix, index, size, object_size, object_blocks = event
        policy = self.policy
        assert policy is not None
        if kind == FILL:
            outcome = policy.fill(prefix, index, size, object_size, object_blocks)
            self._decided(prefix, index, size, (object_size, object_blocks), outcome, now)
        elif kind == TOUCH:
            if policy.find(prefix) is not None:
                policy.touch(prefix)
            elif prefix in self._lingering:  # a request for an object refused: the one that may admit it
                _, refused, shape = self._lingering.pop(prefix)
                self._lingering_bytes -= sum(size for _, size in refused)
                for block, block_size in refused:
                    self._decided(prefix, block, block_size, shape, policy.fill(prefix, block, block_size, *shape),
                                  now)
        else:
            policy.forget(prefix)
            _, refused, _ = self._lingering.pop(prefix, (0.0, [], (0, 0)))
            self._lingering_bytes -= sum(size for _, size in refused)

    def _decided(self, prefix: str, index: int, size: int, shape: tuple[int, int], outcome: Fill,
                 now: float) -> None:
        keys = []
        emptied = set()
        for eviction in outcome.evicted:
            keys.append(f"{eviction.key}{eviction.block}")
            self.counts["evicted_" + eviction.reason.value] += 1
            if self.policy is not None and self.policy.find(eviction.key) is None:
                emptied.add(str(eviction.key))
        if isinstance(outcome, Refused):
            self.counts["refused"] += 1
            _, refused, _ = self._lingering.pop(prefix, (0.0, [], shape))
            self._lingering[prefix] = (now + GRACE, [*refused, (index, size)], shape)
            self._lingering_bytes += size
        else:
            self.counts["admitted"] += 1
        if keys:
            self.blocks.remove_blocks(keys)
        if emptied:
            self.blocks.remove_objects(sorted(emptied))
        policy = self.policy
        assert policy is not None
        while self._lingering and (len(self._lingering) > LINGERING or
                                   policy.used + self._lingering_bytes > policy.capacity):
            self._remove_lingering(*self._lingering.popitem(last=False))

    def _remove_lingering(self, prefix: str, item: Lingering) -> None:
        self._lingering_bytes -= sum(size for _, size in item[1])
        entry = self.policy.find(prefix) if self.policy is not None else None
        keys = [f"{prefix}{block}" for block, _ in item[1] if entry is None or block not in entry.blocks]
        self.counts["evicted_refused"] += len(keys)
        self.blocks.remove_blocks(keys)
        if entry is None:
            self.blocks.remove_objects([prefix])

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
        while True:
            events = self.journal.take(BATCH)
            now = self.clock()
            with self._lock:
                for event in events:
                    self._apply(event, now)
            if len(events) < BATCH:
                break
        with self._lock:
            now = self.clock()
            while self._lingering and next(iter(self._lingering.values()))[0] <= now:
                self._remove_lingering(*self._lingering.popitem(last=False))
            self._bound_metadata()
            self._write_figures()
            if time.monotonic() - self._saved >= SAVE_EVERY:
                self._save()

    def _bound_metadata(self) -> None:
        """Metadata is small, but not nothing: beyond METADATA_SLACK of the capacity on top of
        the blocks, the oldest entries whose objects keep no block go (pass markers, say)."""
        policy = self.policy
        assert policy is not None
        while self.blocks.volume() - self._lingering_bytes > policy.capacity * (1 + METADATA_SLACK):
            gone = self.blocks.cull_metadata(lambda prefix: policy.find(prefix) is not None)
            self.counts["evicted_metadata"] += gone
            if not gone:
                return

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - the store's troubles must not end the keeping
                log.warning("cache policy round failed: %s", e)

    # --- keeping: taking over, saving --------------------------------------------
    def _try_keep(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        policy, counts, lingering = self._load()
        self.policy = policy
        self.counts = counts
        for prefix, item in lingering.items():  # refused blocks the last keeper left: their time is up
            self._remove_lingering(prefix, item)
        self._reconcile(policy)
        for event in self._pending:
            self._apply(event, self.clock())
        self._pending.clear()
        self._saved = time.monotonic()
        log.debug("keeping the cache policy of %s", os.path.dirname(self.directory))

    def _load(self) -> tuple[AdaptivePolicy, dict[str, int], dict[str, Lingering]]:
        path = os.path.join(self.directory, "state")
        try:
            with open(path, "rb") as f:
                saved = pickle.load(f)
            fmt, policy, counts, lingering = saved
            if fmt == STATE_FORMAT and isinstance(policy, AdaptivePolicy) and policy.capacity == self.capacity \
                    and policy.max_entries == self.max_entries and policy.block_size == self.block_size:
                return policy, {**self.counts, **counts}, lingering
        except FileNotFoundError:
            pass
        except (OSError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, EOFError) as e:
            log.warning("cache policy state unreadable, starting anew: %s", e)
        return AdaptivePolicy(self.capacity, self.block_size, self.max_entries), dict(self.counts), {}

    def _reconcile(self, policy: AdaptivePolicy) -> None:
        """Make the policy hold exactly the blocks the store holds."""
        seen: set[tuple[str, int]] = set()
        for key, size in self.blocks.stored_blocks():
            prefix, index = split(key)
            entry = policy.find(prefix)
            if entry is not None and index in entry.blocks:
                seen.add((prefix, index))
                continue
            found = self.blocks.object_of(prefix)
            outcome = policy.adopt(prefix, index, size, found[1], found[2]) if found is not None else Refused()
            if isinstance(outcome, Refused):
                self.blocks.remove_blocks([key])
            else:
                seen.add((prefix, index))
            self._decided_quietly(policy, outcome)
        for queue in (policy.t1, policy.t2):
            for cached, entry in list(queue.items()):
                for index in [i for i in entry.blocks if (str(cached), i) not in seen]:
                    policy.drop(cached, index)

    def _decided_quietly(self, policy: AdaptivePolicy, outcome: Fill) -> None:
        keys = [f"{e.key}{e.block}" for e in outcome.evicted]
        if keys:
            self.blocks.remove_blocks(keys)
            self.blocks.remove_objects(sorted({str(e.key) for e in outcome.evicted if policy.find(e.key) is None}))

    def _save(self) -> None:
        path = os.path.join(self.directory, "state")
        temporary = f"{path}.{os.getpid()}"
        with open(temporary, "wb") as f:
            pickle.dump((STATE_FORMAT, self.policy, self.counts, self._lingering), f, protocol=pickle.HIGHEST_PROTOCOL)
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
