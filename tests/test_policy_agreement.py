"""What the store does is what `edgecache simulate` says: a trace replayed through a real edge
over HTTP, in front of a counting origin, costs the origin the bytes the simulation predicts."""
from __future__ import annotations

import bisect
import contextlib
import http.client
import io
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import cli, service
from proxy.config import Settings
from tests.catalogue_origin import body_of
from tests.conftest import REPO_ROOT

MiB = 1024 * 1024
CACHE = 64 * MiB  # the smallest cache the settings allow
BLOCK = 256 * 1024


def scaled_trace(requests: int = 6000, popular: int = 1500, once: float = 0.35, median: int = 50,
                 seed: int = 20) -> list[tuple[int, int]]:
    """(object, size in KiB): a CDN's video traffic in miniature. A catalogue whose popularity
    follows Zipf's law (0.8), sizes log-normal around `median` KiB (the shared trace's median,
    531 KiB, scaled down) up to 48 times that; and a share of requests for objects asked for
    once only. About 550 MiB in all, for a cache of 64 MiB (the smallest the settings allow)."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(popular)))

    def size() -> int:
        return max(1, min(int(rng.lognormvariate(0, 1.2) * median), 48 * median))

    sizes = [size() for _ in range(popular)]
    trace, new = [], popular
    for _ in range(requests):
        if rng.random() < once:
            trace.append((new, size()))
            new += 1
        else:
            chosen = bisect.bisect(cumulative, rng.random() * cumulative[-1])
            trace.append((chosen, sizes[chosen]))
    return trace


def simulated(trace_file: Path) -> dict[str, dict[str, int]]:
    """`edgecache simulate --json` at the cache's size and block size: its lines by policy."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["simulate", str(trace_file), "--size", f"{CACHE}", "--block-size", f"{BLOCK}", "--json"]) == 0
    return {r["policy"]: r for r in map(json.loads, out.getvalue().splitlines())}


def test_the_origin_pays_what_the_simulation_says(tmp_path: Path, settings: Settings, make_server,  # type: ignore[no-untyped-def]
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    trace = scaled_trace()
    trace_file = tmp_path / "trace.csv"
    trace_file.write_text("# time,object,size_kib\n" + "".join(f"{t},{o},{k}\n" for t, (o, k) in enumerate(trace)))
    figures = simulated(trace_file)
    ours, lru = figures["edgecache"], figures["lru"]
    predicted, predicted_lru = ours["bytes"] - ours["hit_bytes"], lru["bytes"] - lru["hit_bytes"]
    assert predicted_lru > 1.07 * predicted  # the policies differ enough for the test to tell them apart

    # The edge as it runs, its origin in a process of its own; one request at a time, in the
    # trace's order. Hits reach the policy in batches (FLUSH_INTERVAL, 2 s): at this small size a
    # refused block stays on disk for some 20 requests (1/64 of 64 MiB), a fraction of a second
    # here, so batches come every 50 ms, as short beside it as 2 s is in a cache of gigabytes.
    monkeypatch.setattr(service, "FLUSH_INTERVAL", 0.05)
    origin = subprocess.Popen([sys.executable, "-m", "tests.catalogue_origin"], cwd=REPO_ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert origin.stdout is not None and origin.stdin is not None
        port = int(origin.stdout.readline())
        edge = make_server(settings, origin=f"http://127.0.0.1:{port}", cache_size_limit=CACHE, block_size=BLOCK,
                           max_object_size=16 * MiB, chunk_size=64 * 1024)
        client = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=30)
        served = 0
        for number, kib in trace:
            client.request("GET", f"/o/{number}-{kib}")
            response = client.getresponse()
            body = response.read()
            assert response.status == 200 and body == body_of(number, kib)
            served += len(body)
        client.close()
        count = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        count.request("GET", "/_count")
        fetched = json.loads(count.getresponse().read())["bytes"]
        count.close()
    finally:
        if origin.stdin is not None:
            origin.stdin.close()
        origin.wait(timeout=10)
    assert served == ours["bytes"]
    assert abs(fetched - predicted) <= 0.03 * predicted, (fetched, predicted, predicted_lru)
