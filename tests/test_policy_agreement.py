"""What the store does is what `edgecache simulate` says: a trace replayed through a real edge
over HTTP, in front of a counting origin, costs the origin the bytes the simulation predicts."""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import io
import itertools
import json
import random
from pathlib import Path

import httpx
import pytest

from proxy import cli, service
from proxy.config import Settings
from tests.conftest import RunningServer
from tests.upstream import Obj, Upstream

MiB = 1024 * 1024
CACHE = 64 * MiB  # the smallest cache the settings allow
BLOCK = 256 * 1024


def scaled_trace(requests: int = 12_000, popular: int = 3000, once: float = 0.4,
                 seed: int = 20) -> list[tuple[int, int]]:
    """(object, size in KiB): a CDN's video traffic in miniature. A catalogue whose popularity
    follows Zipf's law (0.8), sizes log-normal around 40 KiB (the shared trace's median, 531 KiB,
    scaled down) up to 1.9 MiB; and a share of requests for objects asked for once only."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(popular)))

    def size() -> int:
        return max(1, min(int(rng.lognormvariate(0, 1.2) * 40), 48 * 40))

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


class Catalogue(dict[str, Obj]):
    """The origin's objects, made when first asked for (bytes differ from object to object)."""

    def __init__(self, sizes: dict[int, int]) -> None:
        super().__init__()
        self.sizes = sizes
        self.noise = random.Random(7).randbytes(2 * MiB + 4096)

    def get(self, path: str, default: Obj | None = None) -> Obj | None:  # type: ignore[override]
        if path not in self and path.startswith("/o/") and int(path[3:]) in self.sizes:
            number = int(path[3:])
            start = number % 4096
            self[path] = Obj(self.noise[start: start + self.sizes[number] * 1024],
                             {"cache-control": "public, max-age=86400"})
        return super().get(path, default)


def simulated(trace_file: Path, policy: str) -> dict[str, int]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["simulate", str(trace_file), "--size", f"{CACHE}", "--block-size", f"{BLOCK}", "--json"]) == 0
    return next(r for r in map(json.loads, out.getvalue().splitlines()) if r["policy"] == policy)


def test_the_origin_pays_what_the_simulation_says(tmp_path: Path, settings: Settings, make_server,  # type: ignore[no-untyped-def]
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    trace = scaled_trace()
    trace_file = tmp_path / "trace.csv"
    trace_file.write_text("# time,object,size_kib\n" + "".join(f"{t},{o},{k}\n" for t, (o, k) in enumerate(trace)))
    ours, lru = simulated(trace_file, "edgecache"), simulated(trace_file, "lru")
    predicted, predicted_lru = ours["bytes"] - ours["hit_bytes"], lru["bytes"] - lru["hit_bytes"]
    assert predicted_lru > 1.08 * predicted  # the policies differ enough for the test to tell them apart

    # The read path hands hits to the policy in batches every FLUSH_INTERVAL (2 s); requests
    # come a few hundred a second here, so a batch every 10 ms keeps the order as it was.
    monkeypatch.setattr(service, "FLUSH_INTERVAL", 0.01)
    origin = Upstream()
    origin.objects = Catalogue(dict(trace))
    with RunningServer(dataclasses.replace(settings, server_name=""), app=origin) as upstream:
        edge = make_server(settings, origin=upstream.url, cache_size_limit=CACHE, block_size=BLOCK,
                           max_object_size=16 * MiB, chunk_size=64 * 1024)
        served = 0
        with httpx.Client(base_url=edge.url, timeout=30) as client:
            for number, kib in trace:
                r = client.get(f"/o/{number}")
                assert r.status_code == 200 and len(r.content) == kib * 1024
                served += len(r.content)
    assert served == ours["bytes"]
    fetched = origin.bytes_sent
    assert abs(fetched - predicted) <= 0.03 * predicted, (fetched, predicted, predicted_lru)
