"""Prometheus metrics: one coherent scrape over every worker, counters that follow the traffic."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.ops import metrics
from proxy.ops.metrics_dir import multiprocess_dir, remove_multiprocess_dir
from proxy.store.disk import Store
from tests.edge_process import free_port
from tests.test_cache_processes import MOVIE, REPO, movie_origin, start_edgecache, stop  # noqa: F401

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and all((k, labels[k]) in ls for k in labels))


async def test_two_workers_report_one_coherent_set(movie_origin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    origin, url = movie_origin
    log = tmp_path / "stdout.log"
    with log.open("wb") as out:
        proc, edge = start_edgecache(url, tmp_path / "cache", workers=2, access_log=True, stdout=out)
        try:
            async def get() -> bytes:
                async with httpx.AsyncClient(base_url=edge, timeout=60) as c:  # a new connection: any worker
                    return (await c.get("/movie.mp4")).content

            origin.gate = threading.Event()  # the origin holds the first fill until the others wait for it
            gets = asyncio.gather(*(get() for _ in range(20)))
            try:
                give_up = time.monotonic() + 30  # a bound on a failing run, not a measurement
                async with httpx.AsyncClient(base_url=edge, timeout=60) as c:
                    while total(samples((await c.get("/_edge/metrics")).text),
                                "edgecache_collapsed_requests_total") < 19:
                        assert time.monotonic() < give_up, "19 requests never waited for the first one's fill"
                        await asyncio.sleep(0.05)
            finally:
                origin.gate.set()
            assert all(body == MOVIE for body in await gets)
            scrapes = [samples(httpx.get(edge + "/_edge/metrics").text) for _ in range(4)]
            purged = httpx.post(edge + "/_edge/purge?prefix=/")
            after = samples(httpx.get(edge + "/_edge/metrics").text)
        finally:
            stop(proc)
    assert purged.json() == {"purged": ["/movie.mp4"], "count": 1}
    origin_gets = len(origin.gets("/movie.mp4"))
    for found in [*scrapes, after]:  # whichever worker answers the scrape, the figures are the same
        assert total(found, "edgecache_requests_total", cache="hit") + \
            total(found, "edgecache_requests_total", cache="miss") == 20
        assert total(found, "edgecache_requests_total", status="200", cache="miss") + \
            total(found, "edgecache_requests_total", status="200", cache="hit") == 20
        assert total(found, "edgecache_response_bytes_total", source="cache") + \
            total(found, "edgecache_response_bytes_total", source="origin") == 20 * len(MOVIE)
        assert total(found, "edgecache_origin_requests_total") == origin_gets == 9  # one per block
        assert total(found, "edgecache_origin_response_bytes_total") == len(MOVIE)
        assert total(found, "edgecache_origin_response_seconds_count") == 9
        assert total(found, "edgecache_collapsed_requests_total") >= 19  # all but the first fill's leader
        assert total(found, "edgecache_fills_in_flight") == 0
    assert total(scrapes[0], "edgecache_store_entries") == 10  # metadata and 9 blocks
    assert total(scrapes[0], "edgecache_store_size_bytes") >= len(MOVIE)
    assert total(scrapes[0], "edgecache_purges_total") == 0
    assert total(after, "edgecache_purges_total") == 1
    assert total(after, "edgecache_store_entries") == 0
    # the scrapes count themselves, as the edge's own answers
    assert total(after, "edgecache_requests_total", cache="none", status="200") >= 4
    # exactly one access log line per request: the edge's, none of uvicorn's
    lines = log.read_text().splitlines()
    assert len([line for line in lines if '"GET /movie.mp4 HTTP/1.1" 200' in line]) == 20, lines
    assert not [line for line in lines if "/movie.mp4" in line and not line.startswith("127.0.0.1 - - [")]


def test_live_gauges_of_dead_workers_are_dropped(tmp_path: Path) -> None:
    """A worker that dies in a fill (no goodbye) leaves its gauge file; the next scrape drops it."""
    code = ("from proxy.ops import metrics; import os; metrics.FILLS.inc();"
            " metrics.REQUESTS.labels('hit', '200').inc(); print(os.getpid(), flush=True); os._exit(0)")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    dead = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()
    assert list(tmp_path.glob(f"gauge_livesum_{dead}.db"))
    # The scrape, in a worker of the same server (prometheus_client imported with the variable set).
    scrape = "import sys; from proxy.ops import metrics; sys.stdout.write(metrics.scrape(None).decode())"
    found = samples(subprocess.run([sys.executable, "-c", scrape], cwd=REPO, env=env, check=True,
                                   capture_output=True, text=True).stdout)
    assert total(found, "edgecache_fills_in_flight") == 0
    assert total(found, "edgecache_requests_total", cache="hit") == 1  # counters of the dead stay counted
    assert not list(tmp_path.glob(f"gauge_livesum_{dead}.db"))


def test_evictions_are_counted(tmp_path: Path) -> None:
    evicted: list[int] = []
    store = Store(str(tmp_path / "cache"), size_limit=1024 * 1024, on_evict=evicted.append)
    try:
        for i in range(12):
            fd, path = store.new_part()
            os.write(fd, bytes(256 * 1024))
            os.close(fd)
            store.publish_block(f"b|x|{i}", path, 256 * 1024)
        kept = store.entry_count()
    finally:
        store.close()
    assert sum(evicted) == 12 - kept > 0


async def test_uploads_and_origin_errors_are_counted(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from proxy.app import create_app

    before = samples(metrics.scrape(None).decode())
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as c:
        assert (await c.put("/up/new.bin", content=b"x" * 1000)).status_code == 201
        assert (await c.put("/up/new.bin", content=b"y" * 10)).status_code == 200
        assert (await c.put("/up/.hidden", content=b"z")).status_code == 400  # refused before the origin
    dead = create_app(dataclasses.replace(settings, origin="http://127.0.0.1:9", origin_connect_timeout=1.0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dead), base_url="http://edge.test") as c:
        assert (await c.get("/x.mp4")).status_code == 502
    found = samples(metrics.scrape(None).decode())

    def moved(name: str, **labels: str) -> float:
        return total(found, name, **labels) - total(before, name, **labels)

    assert moved("edgecache_uploads_total", status="201") == 1
    assert moved("edgecache_uploads_total", status="200") == 1
    assert moved("edgecache_upload_bytes_total") == 1010
    assert moved("edgecache_origin_errors_total", kind="unreachable") == 1
    assert moved("edgecache_requests_total", cache="miss", status="502") == 1


def test_metric_directories_of_killed_servers_are_removed_at_start(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"edgecache-metrics-{int(gone.stdout)}-abc"  # its server was killed with -9
    live = tmp_path / f"edgecache-metrics-{os.getppid()}-def"
    other = tmp_path / "edgecache-metrics-notours"
    for d in (dead, live, other):
        d.mkdir()
    fresh = multiprocess_dir()
    try:
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, Path(fresh).name])
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == fresh and Path(fresh).name.startswith(
            f"edgecache-metrics-{os.getpid()}-")
    finally:
        remove_multiprocess_dir(fresh)
    assert not Path(fresh).exists() and "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def _serving(tmp_path: Path, how: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start an edge `how` the README and the image do."""
    port = free_port()
    env = {**os.environ, "EDGECACHE_ORIGIN": str(tmp_path / "assets"), "EDGECACHE_CACHE_DIR": str(tmp_path / "cache"),
           "EDGECACHE_PORT": str(port), "EDGECACHE_ACCESS_LOG": "false", "EDGECACHE_LOG_LEVEL": "warning"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    script = str(Path(sys.executable).parent / "edgecache")
    commands = {
        "edgecache serve": [script, "serve"],
        "--workers 2": [script, "serve", "--workers", "2"],
        "python -m proxy": [sys.executable, "-m", "proxy", "serve"],
        "the app factory": [sys.executable, "-m", "uvicorn", "--factory", "proxy.app:app_from_env", "--port", str(port),
                            "--log-level", "warning"],
    }
    return commands[how], {**env, "EDGECACHE__PORT_SEEN": str(port)}


@pytest.mark.parametrize("how", ["edgecache serve", "--workers 2", "python -m proxy", "the app factory"])
def test_every_way_of_starting_the_edge_counts_its_requests(tmp_path: Path, how: str) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "a.txt").write_bytes(b"counted")
    command, env = _serving(tmp_path, how)
    url = f"http://127.0.0.1:{env.pop('EDGECACHE__PORT_SEEN')}"
    proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/_edge/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, f"{how}: the edge did not start"
                time.sleep(0.1)
        with httpx.Client(base_url=url) as c:  # new connections: any worker may answer any of them
            statuses = [httpx.get(url + "/a.txt").headers["x-cache"] for _ in range(30)]
            found = samples(c.get("/_edge/metrics").text)
    finally:
        stop(proc)
    assert statuses.count("MISS") >= 1 and statuses.count("HIT") >= 25
    assert total(found, "edgecache_requests_total", status="200", cache="hit") == statuses.count("HIT")
    assert total(found, "edgecache_requests_total", status="200", cache="miss") == statuses.count("MISS")
    assert total(found, "edgecache_response_bytes_total", source="cache") + \
        total(found, "edgecache_response_bytes_total", source="origin") == 30 * len(b"counted")
    assert total(found, "edgecache_origin_requests_total") >= 1
