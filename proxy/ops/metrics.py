"""Prometheus metrics: what the edge counts, and one coherent scrape over every worker.

With `--workers N` every worker is its own process, so the CLI points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before any worker starts (see
metrics_dir.py): each process then keeps its values in memory-mapped files
there, and a scrape in any worker sums them all. That variable must be set
before prometheus_client is first imported (it picks its value class then).
Without it (tests, an app embedded in-process) the values live in this process.
"""
from __future__ import annotations

import asyncio
import glob
import os
import re
import threading
import weakref
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .metrics_dir import MULTIPROC_ENV

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REQUESTS = Counter("edgecache_requests", "Requests answered, by cache status (X-Cache) and status code",
                   ["cache", "status"])
RESPONSE_BYTES = Counter("edgecache_response_bytes", "Response body bytes sent to clients, by where they came "
                         "from: cache (hits, stale), origin (misses, bypass), edge (its own answers)", ["source"])
ORIGIN_REQUESTS = Counter("edgecache_origin_requests", "Requests the edge sent to the origin, by status code",
                          ["status"])
ORIGIN_BYTES = Counter("edgecache_origin_response_bytes", "Response body bytes read from the origin")
ORIGIN_ERRORS = Counter("edgecache_origin_errors", "Origin exchanges that failed, by kind "
                        "(timeout, unreachable, invalid)", ["kind"])
ORIGIN_SECONDS = Histogram("edgecache_origin_response_seconds", "Time from asking the origin to its response "
                           "headers", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
FILLS = Gauge("edgecache_fills_in_flight", "Origin exchanges this edge leads right now (single flight)",
              multiprocess_mode="livesum")
COLLAPSED = Counter("edgecache_collapsed_requests", "Requests that waited for another request's origin exchange "
                    "instead of asking the origin themselves")
EVICTIONS = Counter("edgecache_evictions", "Store entries (metadata, blocks, hit counts) evicted for space or expiry")
PURGES = Counter("edgecache_purges", "Cache keys purged (purge API and command, not invalidations by writes)")
UPLOADS = Counter("edgecache_uploads", "Uploads handled, by status code", ["status"])
UPLOAD_BYTES = Counter("edgecache_upload_bytes", "Bytes stored at the origin by successful uploads")
CONNECTIONS = Gauge("edgecache_client_connections", "Client connections open", multiprocess_mode="livesum")
CLIENT_REFUSALS = Counter("edgecache_client_refusals", "Requests and connections refused or cut off at a limit, by "
                          "reason (head_too_large, head_timeout, body_timeout, send_timeout, too_many_connections, "
                          "...)", ["reason"])
LOG_DROPPED = Counter("edgecache_access_log_dropped_lines", "Access log lines dropped because the log writer "
                      "fell behind")


class StoreFigures(Protocol):
    def volume(self) -> int: ...

    def entry_count(self) -> int: ...

    def policy_figures(self) -> dict[str, float]: ...

    def integrity_figures(self) -> dict[str, float]: ...


class _StoreCollector:
    """The store's size and entry count, read at scrape time (one store, shared by all workers)."""

    def __init__(self, store: StoreFigures) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("edgecache_store_size_bytes", "Bytes the cache store takes on disk",
                                value=self.store.volume())
        yield GaugeMetricFamily("edgecache_store_entries", "Entries in the cache store (metadata and blocks)",
                                value=self.store.entry_count())
        yield from policy_metrics(self.store.policy_figures())
        yield from integrity_metrics(self.store.integrity_figures())


def integrity_metrics(figures: dict[str, float]) -> Iterator[Metric]:
    """What the checks of stored blocks and of the store's databases found (proxy/store/integrity.py),
    counted by every worker of the cache directory, kept across restarts."""
    damaged = CounterMetricFamily("edgecache_store_damaged_blocks", "Stored blocks found damaged and dropped "
                                  "(then fetched again from the origin), by what was wrong: checksum (other bytes), "
                                  "length (truncated or another block's file), missing (the file is gone)",
                                  labels=["reason"])
    for reason in ("checksum", "length", "missing"):
        damaged.add_metric([reason], figures.get("damaged_" + reason, 0.0))
    yield damaged
    yield CounterMetricFamily("edgecache_scrub_bytes", "Bytes of stored blocks the scrub read again and checked",
                              value=figures.get("scrubbed_bytes", 0.0))
    yield CounterMetricFamily("edgecache_scrub_blocks", "Stored blocks the scrub read again and checked",
                              value=figures.get("scrubbed_blocks", 0.0))
    yield CounterMetricFamily("edgecache_scrub_passes", "Complete passes of the scrub over the stored blocks",
                              value=figures.get("scrub_passes", 0.0))
    repairs = CounterMetricFamily("edgecache_store_repairs", "Damaged store databases moved aside and replaced, by "
                                  "database and outcome: rebuilt (from what could still be read) or emptied",
                                  labels=["database", "outcome"])
    for name, value in sorted(figures.items()):
        outcome, _, database = name.partition("_")
        if outcome in ("rebuilt", "emptied"):
            repairs.add_metric([database, outcome], value)
    yield repairs


def policy_metrics(figures: dict[str, float]) -> Iterator[Metric]:
    """The cache policy's figures, as its keeper last wrote them (proxy/store/keeper.py): the
    same in every worker, and across restarts."""
    if not figures:
        return
    admissions = CounterMetricFamily("edgecache_policy_admissions", "Blocks the cache policy kept or refused "
                                     "when they were filled from the origin", labels=["outcome"])
    admissions.add_metric(["kept"], figures.get("admitted", 0.0))
    admissions.add_metric(["refused"], figures.get("refused", 0.0))
    yield admissions
    evictions = CounterMetricFamily("edgecache_policy_evictions", "Store entries the cache policy evicted, by "
                                    "reason: space (a block, for room), entries (a block, for policy_memory), "
                                    "refused (a block not kept, once readers had their moment), metadata (an "
                                    "entry without kept blocks, for room)", labels=["reason"])
    for reason in ("space", "entries", "refused", "metadata"):
        evictions.add_metric([reason], figures.get("evicted_" + reason, 0.0))
    yield evictions
    yield GaugeMetricFamily("edgecache_policy_recency_share", "The share of the cache the policy gives to objects "
                            "requested once (adapted to the traffic; the rest is for objects requested again)",
                            value=figures.get("recency_share", 0.0))
    cached = GaugeMetricFamily("edgecache_policy_bytes", "Bytes of blocks the policy keeps, by list: recency "
                               "(requested once), frequency (requested again)", labels=["list"])
    cached.add_metric(["recency"], figures.get("recency_bytes", 0.0))
    cached.add_metric(["frequency"], figures.get("frequency_bytes", 0.0))
    yield cached
    yield GaugeMetricFamily("edgecache_policy_ghosts", "Objects the policy remembers without their blocks",
                            value=figures.get("ghosts", 0.0))


class _ThisProcess:
    """The process-global registry's metrics, when not in multiprocess mode."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


_WORKER_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


def mark_dead_workers(directory: str) -> None:
    """Drop the live gauges of worker processes that are gone (a crash skips their own goodbye)."""
    pids = {int(m.group(1)) for path in glob.glob(os.path.join(directory, "gauge_live*_*.db"))
            if (m := _WORKER_FILE.fullmatch(os.path.basename(path)))}
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, someone else's


def scrape(store: StoreFigures | None) -> bytes:
    """The exposition text of every worker's metrics and the store's (blocking: run in a thread).
    This process's counts not yet written are written first; other workers' are written at their
    loop's next turn."""
    write_counted()
    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get(MULTIPROC_ENV) if in_files() else None
    if directory:
        mark_dead_workers(directory)
        MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    if store is not None:
        registry.register(_StoreCollector(store))
    return generate_latest(registry)


def in_files() -> bool:
    """Does this process keep its values in the multiprocess directory? prometheus_client chose
    when it was first imported: where PROMETHEUS_MULTIPROC_DIR was set only later (a single
    worker, in the process that read the settings), the values are in this process's memory,
    and a scrape must read them there, not from the directory."""
    return values.ValueClass is not values.MutexValue


def write_counted() -> None:
    """Write every meter's counts of this process to its counters now."""
    for meter in list(_METERS):
        meter.write()


def worker_exit() -> None:
    """A worker's goodbye: what it counted is written, and its live gauges stop counting."""
    write_counted()
    directory = os.environ.get(MULTIPROC_ENV) if in_files() else None
    if directory:
        mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


_METERS: weakref.WeakSet[RequestMeter] = weakref.WeakSet()  # every meter of this process (see write_counted)
_SOURCES = {b"HIT": "cache", b"STALE": "cache", b"MISS": "origin", b"BYPASS": "origin", b"": "edge"}


class RequestMeter:
    """Counts answered requests: added up in the process, and written to the two counters once per
    turn of the event loop (each increment of a worker's counter writes its memory-mapped file,
    after a getpid(): per request, that cost as much as the rest of a ready answer) and before any
    scrape. Label children are looked up once each."""

    def __init__(self) -> None:
        self._requests: dict[tuple[bytes, int], Counter] = {}
        self._bytes: dict[bytes, Counter] = {}
        self._counted: dict[tuple[bytes, int], int] = {}  # not yet written to the counters
        self._sent: dict[bytes, int] = {}
        self._lock = threading.Lock()  # (a scrape in a worker thread writes them too)
        self._due = False  # a write is due at the loop's next turn
        _METERS.add(self)

    def record(self, x_cache: bytes, status: int, sent: int) -> None:
        if x_cache not in _SOURCES:  # a relayed origin's own X-Cache is no label of ours
            x_cache = b""
        with self._lock:
            counted, key = self._counted, (x_cache, status)
            counted[key] = counted.get(key, 0) + 1
            if sent:
                self._sent[x_cache] = self._sent.get(x_cache, 0) + sent
            if self._due:
                return
            self._due = True
        try:
            asyncio.get_running_loop().call_soon(self.write)
        except RuntimeError:  # no loop: written now
            self.write()

    def write(self) -> None:
        """Write what was counted to the counters."""
        with self._lock:
            counted, sent, self._counted, self._sent, self._due = self._counted, self._sent, {}, {}, False
        for (x_cache, status), count in counted.items():
            child = self._requests.get((x_cache, status))
            if child is None:
                label = x_cache.decode("latin-1").lower() or "none"
                child = self._requests[(x_cache, status)] = REQUESTS.labels(label, str(status))
            child.inc(count)
        for x_cache, count in sent.items():
            source = self._bytes.get(x_cache)
            if source is None:
                source = self._bytes[x_cache] = RESPONSE_BYTES.labels(_SOURCES[x_cache])
            source.inc(count)
