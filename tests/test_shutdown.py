"""Stopping the edge (SIGINT, SIGTERM) through the real command line: requests in flight finish
within shutdown_grace, what is left is answered 503 (no traceback, no temporary file left), and
the metrics directory goes with the server."""
from __future__ import annotations

import glob
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.edge_process import EdgeProcess


def _upload(port: int, total: int, pace: float, answers: list[bytes]) -> None:
    """PUT `total` bytes in 64 KiB pieces, one every `pace` seconds; the answer goes in `answers`."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"PUT /films/up.mp4 HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % total)
        sent = 0
        try:
            while sent < total:
                piece = min(64 * 1024, total - sent)
                s.sendall(b"u" * piece)
                sent += piece
                time.sleep(pace)
        except OSError:
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
        answers.append(answer)


def _edge(tmp_path: Path, workers: int = 1) -> EdgeProcess:
    (tmp_path / "assets" / "films").mkdir(parents=True, exist_ok=True)
    env = {"EDGECACHE_SHUTDOWN_GRACE": "1", "EDGECACHE_WORKERS": str(workers)}
    return EdgeProcess(tmp_path, "--origin", str(tmp_path / "assets"), "--cache-dir", str(tmp_path / "cache"), env=env)


def _leftovers(origin: Path) -> list[str]:
    return sorted(p.name for p in origin.rglob("*") if p.is_file())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_upload_cut_by_a_stop_gets_503_and_leaves_nothing(tmp_path: Path, sig: int) -> None:
    with _edge(tmp_path) as edge:
        answers: list[bytes] = []
        slow = threading.Thread(target=_upload, args=(edge.port, 100 * 64 * 1024, 0.05, answers))
        slow.start()
        time.sleep(0.5)  # under way
        edge.send_signal(sig)
        slow.join(30)
        assert edge.proc.wait(30) == 0
    assert answers[0].startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answers
    assert answers[0].endswith(b"\r\n\r\nthe server is shutting down; try again\n")
    output = edge.output()
    assert "Traceback" not in output and "CancelledError" not in output and "Exception" not in output, output
    assert _leftovers(tmp_path / "assets") == []


def test_an_upload_that_ends_within_the_grace_is_answered(tmp_path: Path) -> None:
    with _edge(tmp_path) as edge:
        answers: list[bytes] = []
        quick = threading.Thread(target=_upload, args=(edge.port, 8 * 64 * 1024, 0.05, answers))
        quick.start()
        time.sleep(0.1)
        edge.send_signal(signal.SIGTERM)
        quick.join(30)
        assert edge.proc.wait(30) == 0
    assert answers[0].startswith(b"HTTP/1.1 201 Created\r\n"), answers
    assert (tmp_path / "assets" / "films" / "up.mp4").read_bytes() == b"u" * 8 * 64 * 1024


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_workers_stop_and_the_metrics_directory_goes(tmp_path: Path, sig: int) -> None:
    with _edge(tmp_path, workers=2) as edge:
        pattern = os.path.join(tempfile.gettempdir(), f"edgecache-metrics-{edge.proc.pid}-*")
        assert len(glob.glob(pattern)) == 1
        workers = edge.workers()
        assert len(workers) == 2
        edge.send_signal(sig)
        assert edge.proc.wait(30) == 0
    assert glob.glob(pattern) == []
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
