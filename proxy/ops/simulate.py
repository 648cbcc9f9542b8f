"""`edgecache simulate TRACE`: a trace replayed through edgecache's policy and plain LRU,
at each cache size, with the very code the store decides with (proxy/policy/)."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from array import array
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..config import Settings, format_size, parse_size
from ..policy.adaptive import AdaptivePolicy
from ..policy.blocks import BlockCache, entries_within
from ..policy.lru import LruPolicy
from ..policy.replay import Figures, replay
from .traces import FORMATS_READ, TraceError, open_text, read_trace

POLICIES: dict[str, type[BlockCache]] = {"edgecache": AdaptivePolicy, "lru": LruPolicy}
DEFAULT_SIZES = "256MiB,1GiB,4GiB"


@dataclass(frozen=True)
class Result:
    size: int
    policy: str
    figures: Figures

    def as_dict(self) -> dict[str, object]:
        f = self.figures
        return {"size": self.size, "policy": self.policy, "requests": f.requests, "bytes": f.bytes,
                "hit_requests": f.hit_requests, "hit_bytes": f.hit_bytes,
                "request_hit_ratio": round(f.request_hit_ratio, 6), "byte_hit_ratio": round(f.byte_hit_ratio, 6)}


class Trace:
    """A trace in memory, column by column (objects, object sizes, first byte, end)."""

    def __init__(self) -> None:
        self.keys: list[Hashable] = []
        self.sizes = array("q")
        self.starts = array("q")
        self.ends = array("q")

    def __len__(self) -> int:
        return len(self.keys)

    def requests(self) -> Iterator[tuple[Hashable, int, int, int]]:
        return zip(self.keys, self.sizes, self.starts, self.ends, strict=True)


def load(path: str, fmt: str) -> Trace:
    trace = Trace()
    with open_text(path) as lines:
        for key, size, start, end in read_trace(lines, fmt):
            trace.keys.append(key)
            trace.sizes.append(size)
            trace.starts.append(start)
            trace.ends.append(end)
    return trace


# The trace and the progress counter the worker processes inherit (fork): never pickled.
_shared: tuple[Trace, int, int, Synchronized[int]] | None = None


def _run(task: tuple[int, str]) -> Result:
    assert _shared is not None
    trace, block_size, max_entries, done = _shared
    size, name = task

    def advance(n: int) -> None:
        with done.get_lock():
            done.value += n

    policy = POLICIES[name](size, block_size, max_entries)
    return Result(size, name, replay(trace.requests(), policy, advance))


def simulate(trace: Trace, sizes: list[int], block_size: int, max_entries: int, console: Console) -> list[Result]:
    """Every size through every policy, in parallel processes, a progress bar on a terminal."""
    global _shared
    tasks = [(size, name) for size in sizes for name in POLICIES]
    context = multiprocessing.get_context("fork")
    done = context.Value("q", 0)
    _shared = (trace, block_size, max_entries, done)
    try:
        with context.Pool(min(len(tasks), os.cpu_count() or 1)) as pool:
            pending = pool.map_async(_run, tasks, chunksize=1)
            progress = Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("requests"),
                                TimeRemainingColumn(), console=console, disable=not console.is_terminal,
                                transient=True)
            with progress:
                bar = progress.add_task("simulate", total=len(trace) * len(tasks))
                while not pending.ready():
                    pending.wait(0.1)
                    progress.update(bar, completed=done.value)
            return pending.get()
    finally:
        _shared = None


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    simulate = commands.add_parser(
        "simulate", help="replay a trace through edgecache's cache policy and plain LRU, at cache sizes")
    simulate.add_argument("trace", metavar="TRACE", help="a CSV trace (time,object,size_kib; gzip'd or not) or "
                          "edgecache's access log (json or combined)")
    simulate.add_argument("--size", default=DEFAULT_SIZES, help=f"cache sizes (default {DEFAULT_SIZES})")
    simulate.add_argument("--block-size", dest="block_size", default=format_size(Settings.block_size),
                          help="the store's block size (default %(default)s)")
    simulate.add_argument("--policy-memory", dest="policy_memory", default=format_size(Settings.policy_memory),
                          help="the policy's memory bound, as the policy_memory setting (default %(default)s)")
    simulate.add_argument("--format", dest="trace_format", choices=("auto", *FORMATS_READ), default="auto",
                          help="the trace's format (default: from its first line)")
    simulate.add_argument("--json", dest="as_json", action="store_true",
                          help="one JSON object a line, per size and policy, instead of a table")
    simulate.add_argument("--plot", metavar="FILE", help="draw byte hit ratio against cache size (.svg or .png; "
                          "needs the plot extra: pip install 'edgecache[plot]')")


def run(trace: str, size: str, block_size: str, policy_memory: str, trace_format: str, as_json: bool,
        plot: str | None) -> int:
    try:
        sizes = sorted({parse_size(part) for part in size.split(",") if part.strip()})
        block = parse_size(block_size)
        memory = parse_size(policy_memory)
    except ValueError as e:
        return _usage(f"sizes are numbers with a unit, e.g. 256MiB,1GiB,4.2GiB (got {e})")
    if not sizes or min(sizes) < 1 or block < 1:
        return _usage("--size and --block-size must be positive")
    if plot is not None:
        problem = _plot_problem(plot)
        if problem is not None:
            return _usage(problem)
    console = Console(stderr=True)
    started = time.monotonic()
    try:
        with console.status("reading the trace", spinner="dots") if console.is_terminal else _nothing():
            loaded = load(trace, trace_format)
    except OSError as e:
        print(f"edgecache simulate: cannot read {trace}: {e.strerror or e}", file=sys.stderr)
        return 2
    except TraceError as e:
        print(f"edgecache simulate: {trace}: {e}", file=sys.stderr)
        return 2
    results = simulate(loaded, sizes, block, entries_within(memory), console)
    if as_json:
        for result in results:
            print(json.dumps(result.as_dict()))
    else:
        Console().print(_table(results))
        console.print(f"{len(loaded):,} requests, {len(sizes)} size{'s' if len(sizes) > 1 else ''}, "
                      f"{time.monotonic() - started:.1f} s")
    if plot is not None:
        _plot(results, plot)
    return 0


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _usage(message: str) -> int:
    print(f"edgecache simulate: {message}", file=sys.stderr)
    return 2


def _table(results: list[Result]) -> Table:
    table = Table(title="byte hit ratio: bytes served from the cache / bytes requested")
    for column in ("cache size", "policy", "requests", "bytes", "request hit ratio", "byte hit ratio"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for r in results:
        f = r.figures
        table.add_row(format_size(r.size), r.policy, f"{f.requests:,}", format_size(f.bytes),
                      f"{f.request_hit_ratio:.4f}", f"{f.byte_hit_ratio:.4f}")
    return table


def _plot_problem(path: str) -> str | None:
    if not path.lower().endswith((".svg", ".png")):
        return f"--plot writes .svg or .png files (got {path!r})"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib: pip install 'edgecache[plot]'"
    return None


def _plot(results: list[Result], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in POLICIES:
        mine = [r for r in results if r.policy == name]
        axes.plot([r.size / 1024**3 for r in mine], [r.figures.byte_hit_ratio for r in mine], marker="o",
                  label=name)
    axes.set_xscale("log")
    axes.set_xlabel("cache size (GiB)")
    axes.set_ylabel("byte hit ratio")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
