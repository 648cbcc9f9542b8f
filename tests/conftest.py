"""Shared fixtures: an origin directory, the app in-process, and a real uvicorn on loopback."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.app import create_app
from proxy.config import Settings
from proxy.server.run import Listener, server_for
from proxy.store.disk import Store

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_SIZE = 3 * 1024 * 1024 + 12345  # several chunks, not a multiple of any


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes where every offset differs from its neighbours."""
    block = bytes((i * 7 + seed + (i >> 8)) & 0xFF for i in range(65536 + 251))
    reps = size // len(block) + 1
    return (block * reps)[:size]


@pytest.fixture
def origin_dir(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    (root / "video").mkdir(parents=True)
    (root / "video" / "clip.mp4").write_bytes(pattern(SAMPLE_SIZE))
    (root / "small.txt").write_bytes(b"hello, edge\n")
    (root / "empty.bin").write_bytes(b"")
    (root / ".secret").write_bytes(b"dotfile")
    (root / "dir").mkdir()
    (root / "dir" / "a b.webm").write_bytes(pattern(1000, 3))
    (tmp_path / "outside.txt").write_bytes(b"outside the root")
    os.symlink(tmp_path / "outside.txt", root / "escape.txt")
    os.symlink(root / "small.txt", root / "inside-link.txt")
    return root


@pytest.fixture(autouse=True)
def _stores_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every store an app opens during a test is closed after it. An app used in-process without
    its lifespan never closes its own: its keeper and scrub threads would walk its directory for
    the rest of the session, and hundreds of them slowed the whole suite down."""
    import proxy.app

    opened: list[Store] = []
    real = proxy.app.open_store

    def recorded(settings: Settings) -> Store | None:
        store = real(settings)
        if store is not None:
            opened.append(store)
        return store

    monkeypatch.setattr(proxy.app, "open_store", recorded)
    yield
    for store in opened:
        store.close()


@pytest.fixture
def settings(origin_dir: Path, tmp_path: Path) -> Settings:
    return Settings(
        origin=str(origin_dir),
        cache_dir=str(tmp_path / "cache"),
        chunk_size=256 * 1024,
        log_level="warning",
        access_log=False,
    )


@pytest.fixture
async def client(settings: Settings) -> Iterator[httpx.AsyncClient]:
    """The app in-process (buffered: for correctness, not streaming)."""
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as c:
        yield c


class RunningServer:
    """A real uvicorn server in a thread, on a loopback port (edgecache, or any ASGI app)."""

    def __init__(self, settings: Settings, app=None, tls: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.settings = settings
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        quick = dataclasses.replace(settings, shutdown_grace=min(settings.shutdown_grace, 1))
        self.server = server_for(quick, app or create_app(settings), [Listener(self.sock, tls=tls)])
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.thread.is_alive():  # graceful shutdown stuck: force it, as a second Ctrl-C would
            self.server.force_exit = True
            self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def server(settings: Settings) -> Iterator[RunningServer]:
    with RunningServer(settings) as running:
        yield running


@pytest.fixture
def make_server():
    """Start servers with other settings; all are stopped at the end of the test."""
    started: list[RunningServer] = []

    def start(settings: Settings, **changes: object) -> RunningServer:
        running = RunningServer(dataclasses.replace(settings, **changes)).__enter__()
        started.append(running)
        return running

    yield start
    for running in started:
        running.__exit__(None, None, None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"



@pytest.fixture(params=["in-process", "uvicorn", "uvicorn-uncached"])
async def edge(request: pytest.FixtureRequest, settings: Settings) -> Iterator[httpx.AsyncClient]:
    """The same client API against the app in-process and through a real uvicorn, cached or not."""
    if request.param == "uvicorn-uncached":
        settings = dataclasses.replace(settings, cache_enabled=False)
    if request.param == "in-process":
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as c:
            yield c
    else:
        with RunningServer(settings) as running:
            async with httpx.AsyncClient(base_url=running.url) as c:
                yield c


@pytest.fixture
def upstream(settings: Settings):  # type: ignore[no-untyped-def]
    """A counting upstream origin on a loopback port."""
    from tests.upstream import Upstream

    origin = Upstream()
    with RunningServer(dataclasses.replace(settings, server_name=""), app=origin) as running:
        yield origin, running


@pytest.fixture
def http_settings(settings: Settings, upstream) -> Settings:  # type: ignore[no-untyped-def]
    """edgecache settings with the upstream as its origin, small blocks."""
    _, running = upstream
    return dataclasses.replace(
        settings,
        origin=running.url,
        block_size=256 * 1024,
        cache_size_limit=64 * 1024 * 1024,
        max_object_size=32 * 1024 * 1024,
        chunk_size=64 * 1024,
        origin_response_timeout=3.0,
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    """Let the interpreter exit even if a server thread's event loop died with idle AnyIO
    worker threads (non-daemon) still waiting for work: tell them to stop."""
    for thread in threading.enumerate():
        queue = getattr(thread, "queue", None)
        if type(thread).__name__ == "WorkerThread" and queue is not None:
            with contextlib.suppress(Exception):
                queue.put_nowait(None)
