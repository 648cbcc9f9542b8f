"""Benchmark: byte miss ratio of edgecache's cache policy against libCacheSim's algorithms,
on one trace, at several cache sizes, in one run.

    python bench/efficiency.py [--trace ../shared/traces/video-v.csv.gz] [--sizes 1.4GiB,4.2GiB,14GiB,42GiB]
                               [--block-size 4MiB] [--plot efficiency.svg]

edgecache's policy (proxy/policy/adaptive.py) runs as the store runs it, in blocks of
--block-size, through the code `edgecache simulate` uses; its own plain LRU on the same
blocks is shown beside it. The references come from the PyPI package libcachesim (the
`bench` extra: pip install -e '.[bench]'), objects whole, sized in bytes: LRU, FIFO, ARC,
S3-FIFO, SIEVE, W-TinyLFU, GDSF, LHD and Belady (the offline optimum, which knows each
request's next one). The trace (time,object,size_kib CSV) is converted once to
libCacheSim's oracleGeneral binary format in a temporary directory. The table gives each
policy's byte miss ratio (bytes fetched from the origin / bytes requested; lower is
better), marks the best online algorithm at each size, and says whether edgecache's
policy is at or below it; --plot draws the same (matplotlib).
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from proxy.config import Settings, format_size, parse_size  # noqa: E402
from proxy.ops.simulate import load, simulate  # noqa: E402
from proxy.policy.blocks import entries_within  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TRACE = REPO.parent / "shared" / "traces" / "video-v.csv.gz"
SIZES = "1.4GiB,4.2GiB,14GiB,42GiB"
# libcachesim class name -> the name shown; Belady last (offline, not a contender)
REFERENCES = {"LRU": "LRU", "FIFO": "FIFO", "ARC": "ARC", "S3FIFO": "S3-FIFO", "Sieve": "SIEVE",
              "WTinyLFU": "W-TinyLFU", "GDSF": "GDSF", "LHD": "LHD", "Belady": "Belady"}
OFFLINE = {"Belady"}
_RECORD = struct.Struct("<IQIq")  # oracleGeneral: time, object id, size, the next request's index (-1: none)


def write_oracle(keys: list[object], sizes: list[int], path: str) -> None:
    """The trace in libCacheSim's oracleGeneral format, each request with its object's next one."""
    following = [-1] * len(keys)
    last: dict[object, int] = {}
    for i in range(len(keys) - 1, -1, -1):
        following[i] = last.get(keys[i], -1)
        last[keys[i]] = i
    with open(path, "wb") as out:
        buffer = bytearray()
        for i, (key, size) in enumerate(zip(keys, sizes, strict=True)):
            buffer += _RECORD.pack(i, int(key), size, following[i])  # type: ignore[call-overload]
            if len(buffer) >= 1 << 24:
                out.write(buffer)
                buffer.clear()
        out.write(buffer)


def references(path: str, sizes: list[int], console: Console) -> dict[str, list[float]]:
    import libcachesim

    ratios: dict[str, list[float]] = {}
    for cls, name in REFERENCES.items():
        for size in sizes:
            reader = libcachesim.TraceReader(path, libcachesim.TraceType.ORACLE_GENERAL_TRACE)
            began = time.monotonic()
            _, byte_miss = getattr(libcachesim, cls)(size).process_trace(reader)
            ratios.setdefault(name, []).append(byte_miss)
            console.log(f"{name} at {format_size(size)}: {byte_miss:.4f} ({time.monotonic() - began:.1f} s)")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(TRACE))
    parser.add_argument("--sizes", default=SIZES)
    parser.add_argument("--block-size", default=format_size(Settings.block_size))
    parser.add_argument("--policy-memory", default=format_size(Settings.policy_memory))
    parser.add_argument("--plot", help="write the figure here (.svg or .png)")
    args = parser.parse_args()
    try:
        import libcachesim  # noqa: F401
    except ImportError:
        sys.exit("bench/efficiency.py needs libcachesim: pip install -e '.[bench]'")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    console = Console(stderr=True)
    began = time.monotonic()
    trace = load(args.trace, "csv")
    console.log(f"{len(trace):,} requests read ({time.monotonic() - began:.1f} s)")
    ours = simulate(trace, sizes, parse_size(args.block_size), entries_within(parse_size(args.policy_memory)),
                    console)
    ratios = {"edgecache": [1 - r.figures.byte_hit_ratio for r in ours if r.policy == "edgecache"],
              "LRU (edgecache's blocks)": [1 - r.figures.byte_hit_ratio for r in ours if r.policy == "lru"]}
    console.log(f"edgecache's policy: {time.monotonic() - began:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        oracle = os.path.join(tmp, "trace.oracleGeneral.bin")
        write_oracle(trace.keys, list(trace.sizes), oracle)
        ratios |= references(oracle, sizes, console)
    online = [name for name in REFERENCES.values() if name not in OFFLINE]
    best = [min(online, key=lambda name: ratios[name][i]) for i in range(len(sizes))]
    Console().print(_table(sizes, ratios, best))
    for i, size in enumerate(sizes):
        mine, theirs = ratios["edgecache"][i], ratios[best[i]][i]
        verdict = "at or below" if mine <= theirs else "ABOVE"
        print(f"{format_size(size)}: edgecache {mine:.4f}, {verdict} the best online ({best[i]} {theirs:.4f}), "
              f"Belady {ratios['Belady'][i]:.4f}")
    print(f"{len(trace):,} requests, {len(sizes)} sizes, {time.monotonic() - began:.0f} s in all")
    if args.plot:
        _plot(sizes, ratios, args.plot)


def _table(sizes: list[int], ratios: dict[str, list[float]], best: list[str]) -> Table:
    table = Table(title="byte miss ratio (lower is better); * the best online algorithm at that size")
    table.add_column("policy")
    for size in sizes:
        table.add_column(format_size(size), justify="right")
    for name, values in ratios.items():
        cells = [f"{v:.4f}" + (" *" if best[i] == name else "") for i, v in enumerate(values)]
        table.add_row(name, *cells)
    return table


def _plot(sizes: list[int], ratios: dict[str, list[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    gib = [s / 1024**3 for s in sizes]
    for name, values in ratios.items():
        style = {"linewidth": 2.5, "color": "black"} if name == "edgecache" else \
            {"linestyle": ":"} if name in OFFLINE else {"alpha": 0.8}
        axes.plot(gib, values, marker="o", label=name, **style)
    axes.set_xscale("log")
    axes.minorticks_off()
    axes.set_xticks(gib, [format_size(s) for s in sizes])
    axes.set_xlabel("cache size")
    axes.set_ylabel("byte miss ratio")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    main()
