"""What edgecache takes from the inside of its dependencies, checked: the private parts of uvicorn,
httptools and diskcache that proxy/server/ and proxy/store/ were written against. When an upgrade
changes one, this fails here, saying what moved, rather than somewhere in a request. What to check
before raising a version bound: docs/architecture.md, "Dependency contracts"."""
from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path

import diskcache
import httptools
import pytest
import uvicorn
from diskcache.core import MODE_BINARY, UNKNOWN
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from proxy.server.limits import Limits
from proxy.server.protocol import EdgeProtocol

SEE = "(see docs/architecture.md, 'Dependency contracts')"


def _has(owner: object, names: list[str], where: str) -> None:
    missing = [name for name in names if not hasattr(owner, name)]
    assert not missing, f"{where} no longer has {missing}: proxy/server/ relies on them {SEE}"


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_uvicorns_httptools_protocol() -> None:
    """server/zerocopy.py and server/protocol.py subclass HttpToolsProtocol: its callbacks, what
    they keep on the instance, and how a connection's requests are queued."""
    _has(HttpToolsProtocol, ["connection_made", "connection_lost", "data_received", "on_message_begin", "on_url",
                             "on_header", "on_headers_complete", "on_body", "on_message_complete",
                             "on_response_complete", "shutdown", "pause_writing", "resume_writing",
                             "_unset_keepalive_if_required", "_unsupported_upgrade_warning", "send_400_response"],
         "uvicorn's HttpToolsProtocol")
    assert _parameters(HttpToolsProtocol.__init__)[:4] == ["self", "config", "server_state", "app_state"], SEE
    source = inspect.getsource(HttpToolsProtocol)
    for kept in ("self.pipeline", "self.cycle", "self.flow", "self.scope", "self.headers", "self.parser",
                 "self.client", "self.connections", "self.transport", "self.pipeline.appendleft",
                 "self.flow.pause_reading()"):
        assert kept in source, f"HttpToolsProtocol no longer keeps {kept} {SEE}"
    assert b"HTTP/1.1 200 OK\r\n" == STATUS_LINE[200], SEE


def test_uvicorns_request_response_cycle() -> None:
    """ZeroCopyCycle writes response heads itself and keeps uvicorn's framing state right."""
    source = inspect.getsource(RequestResponseCycle)
    for state in ("response_started", "response_complete", "chunked_encoding", "expected_content_length",
                  "keep_alive", "disconnected", "more_body", "message_event", "default_headers", "access_log",
                  "waiting_for_100_continue", "flow", "transport", "on_response"):
        assert f"self.{state}" in source, f"RequestResponseCycle no longer keeps self.{state} {SEE}"
    _has(RequestResponseCycle, ["send", "receive", "run_asgi"], "RequestResponseCycle")
    _has(FlowControl(None), ["read_paused", "write_paused", "drain", "pause_reading", "resume_reading"],  # type: ignore[arg-type]
         "uvicorn's FlowControl")


def test_uvicorns_server() -> None:
    """server/run.py's EdgeServer overrides startup, shutdown and capture_signals."""
    _has(uvicorn.Server, ["startup", "shutdown", "main_loop", "capture_signals", "handle_exit", "run", "serve"],
         "uvicorn.Server")
    server = uvicorn.Server(uvicorn.Config(lambda *_: None))
    _has(server, ["server_state", "started", "should_exit", "force_exit", "config"], "a uvicorn.Server")
    _has(server.server_state, ["connections", "tasks", "default_headers"], "uvicorn's ServerState")
    assert _parameters(uvicorn.Server.startup) == ["self", "sockets"], SEE
    assert isinstance(STARTUP_FAILURE, int), SEE
    config = uvicorn.Config(lambda *_: None, http=HttpToolsProtocol, backlog=16)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol and config.backlog == 16, SEE


def test_httptools_reports_a_callbacks_own_exception() -> None:
    """The protocol stops the parser from a callback (too many fields, a pipeline too deep) and
    finds its own exception as the parser error's __context__."""

    class Stop(Exception):
        pass

    class Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            raise Stop()

    parser = httptools.HttpRequestParser(Callbacks())
    with pytest.raises(httptools.HttpParserError) as raised:
        parser.feed_data(b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n")
    assert isinstance(raised.value.__context__, Stop), SEE


def test_diskcaches_private_parts(tmp_path: Path) -> None:
    """proxy/store/ moves finished files into place through Disk.store, counts culls in Cache._cull,
    and reads its Cache table with Cache._sql."""
    assert _parameters(diskcache.Disk.store) == ["self", "value", "read", "key"], SEE
    assert _parameters(diskcache.Disk.filename)[:3] == ["self", "key", "value"], SEE
    assert _parameters(diskcache.Cache._cull) == ["self", "now", "sql", "cleanup", "limit"], SEE
    assert (MODE_BINARY, UNKNOWN is not None) == (MODE_BINARY, True) and isinstance(MODE_BINARY, int), SEE
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    try:
        columns = {row[1] for row in cache._sql("PRAGMA table_info(Cache)").fetchall()}
        assert {"key", "raw", "store_time", "expire_time", "access_time", "size", "mode", "filename", "value",
                "tag"} <= columns, \
            f"diskcache's Cache table changed: {sorted(columns)} {SEE}"
        with cache.transact():
            cache.set("k", b"v")
        assert cache.get("k") == b"v" and cache.add("k", b"w") is False
    finally:
        cache.close()
    assert issubclass(diskcache.Timeout, Exception) and issubclass(sqlite3.OperationalError, sqlite3.Error), SEE


def test_the_versions_are_those_the_bounds_admit() -> None:
    """pyproject.toml bounds uvicorn, httptools and diskcache to the versions checked here."""
    from importlib.metadata import version

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    for name in ("uvicorn", "httptools", "diskcache"):
        assert f'"{name}' in text and "<" in text.split(f'"{name}', 1)[1].split('"', 1)[0], \
            f"pyproject.toml must bound {name} from above {SEE}"
    assert version("uvicorn").startswith("0.55.") and version("diskcache").startswith("5.6."), SEE


_NAMES = st.sampled_from([b"Expect", b"expect", b"EXPECT", b"Host", b"X-A", b"Range"])
_VALUES = st.lists(st.sampled_from([b"100-continue", b"100-Continue", b" ", b"\t", b"a", b"x y", b"\xff"]),
                   max_size=4).map(b"".join)


def _taken(cls: type[HttpToolsProtocol], lines: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The fields and the Expect flag `cls.on_header` keeps of `lines` (on an instance with nothing
    else: on_header is all that is asked)."""
    protocol = cls.__new__(cls)
    protocol.headers, protocol.expect_100_continue = [], False
    if issubclass(cls, EdgeProtocol):
        protocol.fields, protocol.limits = 0, Limits()
    for name, value in lines:
        cls.on_header(protocol, name, value)
    return protocol.headers, protocol.expect_100_continue


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=6))
def test_field_lines_are_taken_as_uvicorn_takes_them(lines: list[tuple[bytes, bytes]]) -> None:
    """EdgeProtocol.on_header does uvicorn's work itself (one call per line, not two): the same
    fields (names lower-case, values without trailing whitespace) and the same Expect flag."""
    assert _taken(EdgeProtocol, lines) == _taken(HttpToolsProtocol, lines), SEE
