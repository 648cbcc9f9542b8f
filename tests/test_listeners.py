"""The listening sockets of the workers (server/run.py, listeners_for): on Linux a set of its own
for each worker, bound to one port with SO_REUSEPORT, over which the kernel spreads connections;
never a port some other socket already listens on."""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.config import Settings
from proxy.server import run
from proxy.server.run import Listener, close_all, listeners_for
from tests.edge_process import free_port

linux_only = pytest.mark.skipif(not run.BALANCED, reason="the kernel balances SO_REUSEPORT sockets on Linux only")


@pytest.fixture
def sets() -> Iterator[list[list[list[Listener]]]]:
    """Sets made in a test, closed after it."""
    made: list[list[list[Listener]]] = []
    yield made
    for each in made:
        close_all(each)


def _settings(tmp_path: Path, **options: object) -> Settings:
    return Settings(origin=str(tmp_path), cache_dir=str(tmp_path / "cache"), host="127.0.0.1",
                    **options)  # type: ignore[arg-type]


def _reuse_port(listener: Listener) -> int:
    return listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)


@linux_only
def test_each_worker_has_sockets_of_its_own_on_the_same_ports(tmp_path: Path, sets: list) -> None:  # type: ignore[type-arg]
    tls_port = free_port()
    made = listeners_for(_settings(tmp_path, port=0, tls_port=tls_port, workers=3, tls_cert=str(tmp_path / "c.pem"),
                                   tls_key=str(tmp_path / "k.pem")), 3)  # (only their names are read here)
    sets.append(made)
    assert len(made) == 3 and all(len(listeners) == 2 for listeners in made)
    port = made[0][0].sock.getsockname()[1]
    assert port != 0
    assert [[listener.sock.getsockname()[1] for listener in listeners] for listeners in made] == [[port, tls_port]] * 3
    assert [[listener.tls for listener in listeners] for listeners in made] == [[False, True]] * 3
    assert len({listener.sock.fileno() for listeners in made for listener in listeners}) == 6
    assert all(_reuse_port(listener) for listeners in made for listener in listeners)


@linux_only
def test_the_kernel_spreads_connections_over_the_workers_sockets(tmp_path: Path, sets: list) -> None:  # type: ignore[type-arg]
    """64 connections to the port land on both workers' sockets (each would get none with
    probability 2**-64), and every one on exactly one."""
    made = listeners_for(_settings(tmp_path, port=0, workers=2), 2)
    sets.append(made)
    port = made[0][0].sock.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
    try:
        accepted = [0] * len(made)
        for (listener,) in made:
            listener.sock.setblocking(False)
        deadline = time.monotonic() + 10
        while sum(accepted) < 64 and time.monotonic() < deadline:  # (a handshake may still be on its way)
            for at, (listener,) in enumerate(made):
                try:
                    connection, _ = listener.sock.accept()
                except BlockingIOError:
                    continue
                connection.close()
                accepted[at] += 1
        assert sum(accepted) == 64 and min(accepted) > 0, accepted
    finally:
        for client in clients:
            client.close()


@linux_only
@pytest.mark.parametrize("holder", ["a plain socket", "another edge's workers"])
def test_a_port_another_socket_listens_on_is_refused(tmp_path: Path, sets: list, holder: str) -> None:  # type: ignore[type-arg]
    """SO_REUSEPORT would let the new sockets share the port with the old ones: the edge checks
    that it is free first, and fails to start as it does with a single socket."""
    if holder == "a plain socket":
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
    else:
        other = listeners_for(_settings(tmp_path, port=0, workers=2), 2)
        sets.append(other)
        held, port = None, other[0][0].sock.getsockname()[1]
    try:
        with pytest.raises(OSError):
            listeners_for(_settings(tmp_path, port=port, workers=2), 2)
    finally:
        if held is not None:
            held.close()


def test_one_worker_or_no_balancing_means_one_shared_set(tmp_path: Path, sets: list,  # type: ignore[type-arg]
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    one = listeners_for(_settings(tmp_path, port=0), 1)
    sets.append(one)
    assert len(one) == 1 and len(one[0]) == 1 and not _reuse_port(one[0][0])
    monkeypatch.setattr(run, "BALANCED", False)
    shared = listeners_for(_settings(tmp_path, port=0, workers=3), 3)
    sets.append(shared)
    assert len(shared) == 1 and not _reuse_port(shared[0][0])


def test_a_worker_started_again_gets_the_sockets_of_the_one_it_replaces() -> None:
    """Supervisor._start(index): worker `index`'s own set, or the one shared set."""
    started: list[list[Listener]] = []

    class Recorded:
        def __init__(self, target: object, args: tuple[list[Listener]], name: str) -> None:
            started.append(args[0])

        def start(self) -> None:
            pass

    class Context:
        Process = Recorded

    a, b = [Listener(socket.socket(), False)], [Listener(socket.socket(), False)]
    try:
        supervisor = run.Supervisor(2, [a, b], 1.0)
        supervisor.context = Context()  # type: ignore[assignment]
        for index in (0, 1, 1, 0):
            supervisor._start(index)
        shared = run.Supervisor(2, [a], 1.0)
        shared.context = Context()  # type: ignore[assignment]
        shared._start(1)
        assert started == [a, b, b, a, a]
    finally:
        close_all([a, b])


@linux_only
def test_a_failure_part_way_closes_every_socket_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The third worker's socket cannot be made: the first two workers' are closed, and the error
    is the caller's (the edge does not start)."""
    made: list[socket.socket] = []
    real = run.listen

    def listen(at: run.Where, reuse_port: bool = False) -> socket.socket:
        if len(made) == 2:
            raise OSError("no more descriptors")
        sock = real(at, reuse_port)
        made.append(sock)
        return sock

    monkeypatch.setattr(run, "listen", listen)
    with pytest.raises(OSError, match="no more descriptors"):
        listeners_for(_settings(tmp_path, port=0, workers=3), 3)
    assert len(made) == 2 and all(sock.fileno() == -1 for sock in made)


@linux_only
def test_a_fixed_port_is_checked_and_bound_before_a_port_0(tmp_path: Path, sets: list,  # type: ignore[type-arg]
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A port 0 is bound last, so that the kernel cannot give it a fixed port not yet bound (which
    SO_REUSEPORT would then share between HTTP and HTTPS); the fixed one is checked alone first."""
    bound: list[tuple[int, bool]] = []
    real = run.listen

    def listen(at: run.Where, reuse_port: bool = False) -> socket.socket:
        bound.append((at[3][1], reuse_port))
        return real(at, reuse_port)

    monkeypatch.setattr(run, "listen", listen)
    tls_port = free_port()
    made = listeners_for(_settings(tmp_path, port=0, tls_port=tls_port, workers=2, tls_cert=str(tmp_path / "c.pem"),
                                   tls_key=str(tmp_path / "k.pem")), 2)
    sets.append(made)
    port = made[0][0].sock.getsockname()[1]
    assert bound == [(tls_port, False), (tls_port, True), (0, True), (port, True), (tls_port, True)]
    assert [listener.tls for listener in made[0]] == [False, True]
