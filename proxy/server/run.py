"""Running the edge: the listening sockets, a server in each worker process, and signals.

One worker runs in this process; N workers are N processes started fresh (`spawn`), watched
by this one: a worker that dies is started again, on the same sockets. On Linux each worker
listens on sockets of its own, bound to the same address with SO_REUSEPORT, and the kernel
spreads new connections over them evenly (by a hash of each connection's addresses and ports);
on one socket shared by all, whichever worker wakes first takes every connection waiting (wrk's
64 connections split 12/52, and once 64/0, between two workers). This process keeps every
socket open, so the connections meant for a worker being started again wait in its backlog.
Elsewhere the workers share one socket per address.

Signals: SIGINT or SIGTERM stop the edge gracefully: no new connections, requests in flight
have `shutdown_grace` seconds to finish, then what is left is answered 503 (a response under
way is cut); a second SIGINT stops at once. SIGHUP loads the TLS certificate and key again:
the next handshakes use them, and no connection is dropped. With N workers the first process
passes each signal on to every worker.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from ..app import app_from_env
from ..config import RESOLVED_ENV, Settings, dump_resolved, settings_for_worker
from ..ops.metrics_dir import multiprocess_dir, remove_multiprocess_dir
from ..ops.startup import log_to_console
from . import tls
from .protocol import EdgeProtocol, protocol_for

log = logging.getLogger("edgecache.server")
BACKLOG = 2048
_STOPPING = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Listener:
    sock: socket.socket
    tls: bool  # HTTPS on this socket


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options every edgecache server runs with (also used by the tests)."""
    return dict(
        loop="uvloop",
        # httptools (llhttp: rejects CL+TE, duplicate lengths, obs-fold with 400), plus sendfile and limits
        http=protocol_for(settings),
        ws="none",  # HTTP/1.1 only: an Upgrade is not taken
        lifespan="on",
        proxy_headers=False,  # X-Forwarded-* are trusted only where configured
        server_header=False,  # the app sends one Server header itself
        date_header=False,  # ... and one Date
        timeout_keep_alive=settings.keepalive_timeout,
        log_level=settings.log_level,
        access_log=False,  # the edge logs each request itself (proxy/server/front.py), with its cache status
        backlog=BACKLOG,
    )


# The kernel balances connections over the sockets of one port (see the module's docstring).
BALANCED = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


# What a listening socket is made of: family, type, protocol, address (getaddrinfo's).
Where = tuple[int, int, int, Any]


def where(host: str, port: int) -> Where:
    """Where to listen for `host`:`port` (IPv4 or IPv6): its first address."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    return family, kind, proto, address


def listen(at: Where, reuse_port: bool = False) -> socket.socket:
    """A bound, listening socket; with `reuse_port`, one of several bound to one address (SO_REUSEPORT)."""
    family, kind, proto, address = at
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(BACKLOG)  # connections wait in the backlog while the workers start
    except OSError:
        sock.close()
        raise
    return sock


def listeners_for(settings: Settings, workers: int = 1) -> list[list[Listener]]:
    """The sockets of each worker: `port` (HTTPS when a certificate is set and no `tls_port`), and
    `tls_port` (HTTPS). One set shared by all workers where the kernel does not balance
    connections (or with one worker); else a set for each, each socket bound to the address of
    the first set's (its host looked up once: a port 0 is the free one the first set got).

    SO_REUSEPORT would also share a port with another process's sockets (an edge left running,
    say) instead of failing: a fixed port is first bound alone, to check that nothing listens
    there (two edges started at the same instant could still both pass), and fixed ports are
    bound before a port 0, so that it is never given one of them."""
    wanted = [(settings.port, bool(settings.tls_cert) and not settings.tls_port)]
    if settings.tls_port:
        wanted.append((settings.tls_port, True))
    each = workers > 1 and BALANCED
    bound: dict[int, Listener] = {}  # the first set's, by their place in `wanted`
    sets: list[list[Listener]] = []
    try:
        for index in sorted(range(len(wanted)), key=lambda i: wanted[i][0] == 0):
            port, secure = wanted[index]
            at = where(settings.host, port)
            if each and port:
                listen(at).close()
            bound[index] = Listener(listen(at, reuse_port=each), secure)
        sets.append([bound[index] for index in range(len(wanted))])
        for _ in range(1, workers if each else 1):
            more: list[Listener] = []
            sets.append(more)
            for listener in sets[0]:
                sock = listener.sock
                more.append(Listener(listen((sock.family, sock.type, sock.proto, sock.getsockname()), True),
                                     listener.tls))
    except OSError:
        close_all([list(bound.values()), *sets[1:]])
        raise
    return sets


def close_all(sets: list[list[Listener]]) -> None:
    for listeners in sets:
        for listener in listeners:
            listener.sock.close()


class EdgeServer(uvicorn.Server):
    """uvicorn's server with a TLS context for each listener that wants one, the shutdown
    described in the module's docstring, and SIGHUP for a new certificate."""

    def __init__(self, config: uvicorn.Config, settings: Settings, listeners: list[Listener]) -> None:
        super().__init__(config)
        self.settings = settings
        self.listeners = listeners
        self.tls = tls.server_context(settings.tls_cert, settings.tls_key) \
            if any(listener.tls for listener in listeners) else None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config, loop = self.config, asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            made: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state)
            return made

        self.servers = [await loop.create_server(protocol, sock=listener.sock, backlog=config.backlog,
                                                 ssl=self.tls if listener.tls else None)
                        for listener in self.listeners]
        self.started = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        connections = self.server_state.connections
        for connection in list(connections):
            connection.shutdown()  # idle ones close now; busy ones after their answer
        deadline = time.monotonic() + self.settings.shutdown_grace
        while (connections or self.server_state.tasks) and time.monotonic() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        if connections:
            log.warning("shutting down: %d connection(s) still busy after %g s (shutdown_grace): unanswered "
                        "requests get 503, answers under way are cut", len(connections), self.settings.shutdown_grace)
            for connection in list(connections):
                if isinstance(connection, EdgeProtocol):
                    connection.stop_now()
                else:
                    connection.transport.abort()
        await _settle(self.server_state.tasks)
        if not self.force_exit:
            await self.lifespan.shutdown()

    def reload_tls(self) -> None:
        if self.tls is None:
            log.warning("SIGHUP: no TLS certificate to load again (tls_cert is not set)")
            return
        try:
            tls.reload(self.tls, self.settings.tls_cert, self.settings.tls_key)
        except tls.TLSError as e:
            log.error("SIGHUP: the TLS certificate was not replaced: %s", e)
            return
        log.info("SIGHUP: TLS certificate loaded again from %s", self.settings.tls_cert)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """SIGINT and SIGTERM stop the server (uvicorn's handler), SIGHUP loads the certificate
        again; the process then ends normally (a stop is not re-raised as a signal, so what the
        caller does after `run` returns, removing the metrics directory say, still happens)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_event_loop()
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOPPING}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: loop.call_soon_threadsafe(self.reload_tls))
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def _settle(tasks: set[asyncio.Task[None]]) -> None:
    """Let requests told to stop finish their own clean-up (a second at most), then cancel the rest."""
    deadline = time.monotonic() + 1.0
    while tasks and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    for task in list(tasks):
        task.cancel("the server is shutting down")
    if tasks:
        await asyncio.wait(list(tasks), timeout=1.0)


def server_for(settings: Settings, app: Any, listeners: list[Listener]) -> EdgeServer:
    return EdgeServer(uvicorn.Config(app, **uvicorn_options(settings)), settings, listeners)


GC_YOUNG = 20_000  # allocations between collections of the youngest generation (collect_less)


def run_worker(listeners: list[Listener]) -> None:
    """One worker: the app from the settings the first process resolved, on its sockets."""
    settings = settings_for_worker()
    log_to_console(logging.getLogger("edgecache"), settings.log_level)
    app = app_from_env()
    collect_less()
    server_for(settings, app, listeners).run()


def collect_less() -> None:
    """The cyclic garbage collector of a worker: what exists once it is started (modules, the
    app) is never looked at again (gc.freeze), and the youngest generation is collected every
    GC_YOUNG allocations rather than 700: a request allocates thousands of objects, nearly all
    freed by their reference counts, and each collection walked every object in flight."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


def serve(settings: Settings, announce: Callable[[], None] = lambda: None) -> int:
    """Run the edge until it is stopped (`announce` once it listens); the exit status (2: it
    could not start)."""
    _raise_open_files(settings)
    try:
        sets = listeners_for(settings, settings.workers)
        if settings.tls_cert:
            tls.server_context(settings.tls_cert, settings.tls_key)  # refused now, not in each worker
    except OSError as e:
        ports = f"{settings.port} and {settings.tls_port}" if settings.tls_port else str(settings.port)
        log.error("cannot listen on %s port %s: %s", settings.host, ports, e.strerror or e)
        return 2
    except tls.TLSError as e:
        close_all(sets)
        log.error("TLS: %s", e)
        return 2
    os.environ[RESOLVED_ENV] = dump_resolved(settings)
    announce()
    try:
        if settings.workers == 1:
            run_worker(sets[0])
            return 0
        metrics_dir = multiprocess_dir()  # before any worker imports prometheus_client
        try:
            return Supervisor(settings.workers, sets, settings.shutdown_grace).run()
        finally:
            remove_multiprocess_dir(metrics_dir)
    finally:
        close_all(sets)


def _raise_open_files(settings: Settings) -> None:
    """Take the hard limit on open files, as nginx's worker_rlimit_nofile does: each connection
    costs a socket, and a zero-copy send a duplicate and a block file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1024 * 1024)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    if soft != resource.RLIM_INFINITY and soft < 3 * settings.max_connections + 256:
        log.warning("the open-files limit (%d) is low for max_connections = %d: raise `ulimit -n` or lower "
                    "max_connections", soft, settings.max_connections)


class Supervisor:
    """Starts N worker processes, starts again any that dies, passes signals on, and at a stop
    waits for the workers' graceful shutdown (then kills what is left)."""

    def __init__(self, workers: int, sets: list[list[Listener]], grace: float) -> None:
        self.count = workers
        self.sets = sets  # the sockets of each worker, or one set for all (listeners_for)
        self.grace = grace
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[multiprocessing.process.BaseProcess] = []
        self.stopping = False
        self.relay: list[int] = []  # signals to pass on to the workers

    def run(self) -> int:
        handlers = {sig: signal.signal(sig, self._signalled) for sig in (*_STOPPING, signal.SIGHUP)}
        try:
            self.workers = [self._start(i) for i in range(self.count)]
            while not self.stopping:
                multiprocessing.connection.wait([w.sentinel for w in self.workers], timeout=0.5)
                self._pass_on()
                for i, worker in enumerate(self.workers):
                    if not worker.is_alive() and not self.stopping:
                        log.error("worker %s ended (exit code %s): starting another", worker.pid, worker.exitcode)
                        self.workers[i] = self._start(i)
            self._pass_on()
            self._join()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return 0

    def _start(self, index: int) -> multiprocessing.process.BaseProcess:
        """Worker `index`, on its own sockets (the same ones as the worker it replaces)."""
        listeners = self.sets[index % len(self.sets)]
        worker = self.context.Process(target=run_worker, args=(listeners,), name="edgecache-worker")
        worker.start()
        return worker

    def _signalled(self, sig: int, frame: FrameType | None) -> None:
        self.relay.append(sig)
        if sig in _STOPPING:
            self.stopping = True

    def _pass_on(self) -> None:
        while self.relay:
            sig = self.relay.pop(0)
            for worker in self.workers:
                if worker.pid is not None and worker.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGTERM if sig in _STOPPING else sig)

    def _join(self) -> None:
        deadline = time.monotonic() + self.grace + 5
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            if worker.is_alive():
                log.error("worker %s did not stop in time: killed", worker.pid)
                worker.kill()
                worker.join(5)

