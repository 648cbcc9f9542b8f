"""The command line: --version, bare help, the start-up line and warnings, cache-directory checks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proxy import __version__
from proxy.config import Settings, format_size, unknown_env
from proxy.ops.startup import origin_problem, startup_line
from proxy.store.disk import Store
from tests.test_config import _free_port

REPO = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def test_version() -> None:
    done = run("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"edgecache {__version__}\n", "")


def test_a_bare_edgecache_prints_the_whole_help_as_a_usage_error() -> None:
    done = run()
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("usage: edgecache [-h] [--version] COMMAND ...\n")
    for command in ("serve", "purge", "warm"):
        assert f"\n    {command} " in done.stderr


def test_unknown_environment_variables_are_named_with_the_closest_setting() -> None:
    environ = {"EDGECACHE_PROT": "1", "EDGECACHE_BLOCKSIZE": "1", "EDGECACHE_PORT": "1", "EDGECACHE_CONFIG": "x",
               "EDGECACHE_ZZZZZZZZ": "1", "EDGECACHE__RESOLVED": "{}", "PATH": "/bin", "EDGECACHE_port": "1"}
    assert unknown_env(environ) == [("EDGECACHE_BLOCKSIZE", "EDGECACHE_BLOCK_SIZE"),
                                    ("EDGECACHE_PROT", "EDGECACHE_PORT"), ("EDGECACHE_ZZZZZZZZ", None),
                                    ("EDGECACHE_port", "EDGECACHE_PORT")]


def test_origin_problems(tmp_path: Path) -> None:
    assert origin_problem(Settings(origin=str(tmp_path))) is None
    assert origin_problem(Settings(origin="http://127.0.0.1:9")) is None
    assert origin_problem(Settings(origin=str(tmp_path / "gone"))) == (
        f"the origin directory {tmp_path}/gone does not exist: every request will be 404")
    (tmp_path / "file").write_bytes(b"")
    assert origin_problem(Settings(origin=str(tmp_path / "file"))) == (
        f"the origin {tmp_path}/file is not a directory: every request will be 404")


def test_startup_line_variants() -> None:
    line = startup_line(Settings(origin="http://10.0.0.5:8000/media", host="::1", port=9000, workers=3,
                                 cache_dir="/var/cache/edge", cache_size_limit=1536 * 1024**2,
                                 max_object_size=512 * 1024**2))
    assert line == (f"edgecache {__version__}: origin http://10.0.0.5:8000/media, cache /var/cache/edge "
                    f"(limit 1.5 GiB), 3 workers, listening on http://[::1]:9000")
    assert ", cache off, 1 worker," in startup_line(Settings(origin="/srv", cache_enabled=False))
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 20 * 1024**3)] == ["0 B", "1023 B", "1 KiB", "1.5 KiB",
                                                                             "20 GiB"]


def test_serve_says_what_it_serves_and_warns(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--origin", "missing-videos", "--port", str(port)],
        cwd=tmp_path, env={**os.environ, "EDGECACHE_PROT": "9000", "EDGECACHE_CACHE_SIZE_LIMIT": "1GiB",
                           "EDGECACHE_MAX_OBJECT_SIZE": "100MiB"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/_edge/health", timeout=2).status_code
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        assert status == 503  # the origin directory is missing
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    lines = err.splitlines()
    assert lines[:3] == [
        "WARNING:  EDGECACHE_PROT is not a setting and is ignored (did you mean EDGECACHE_PORT?)",
        f"WARNING:  the origin directory {tmp_path}/missing-videos does not exist: every request will be 404",
        f"INFO:     edgecache {__version__}: origin {tmp_path}/missing-videos, cache {tmp_path}/.edgecache "
        f"(limit 1 GiB), 1 worker, listening on http://127.0.0.1:{port}",
    ]
    assert lines[3].startswith("INFO:     Started server process")


@pytest.mark.parametrize("command", [["purge", "--prefix", "/"], ["warm", "/video/a.mp4"]])
def test_commands_refuse_a_directory_that_is_not_a_cache(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "cahce"
    done = run(*command, "--cache-dir", str(typo))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"edgecache {command[0]}: {typo} does not exist (edgecache serve creates one)\n"
    assert not typo.exists()
    (tmp_path / "notes.txt").write_text("mine")
    done = run(*command, "--cache-dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr == (f"edgecache {command[0]}: {tmp_path} is not an edgecache cache directory "
                           "(edgecache serve creates one)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_purge_works_on_a_real_cache(tmp_path: Path) -> None:
    Store(str(tmp_path / "cache"), 64 * 1024**2).close()
    done = run("purge", "--cache-dir", str(tmp_path / "cache"), "--prefix", "/video/")
    assert (done.returncode, done.stdout) == (0, '{"purged": [], "count": 0}\n')


@pytest.mark.parametrize(("args", "message"), [
    ([], "nothing to warm: give paths or URLs, or --from FILE"),
    (["--edge", "ftp://x", "/a.mp4"], "--edge must be the edge's URL, e.g. http://127.0.0.1:8080 (got 'ftp://x')"),
    (["--edge", "http://127.0.0.1:9", "--cache-dir", "c", "/a"],
     "--origin and --cache-dir are for warming a cache directory, not with --edge"),
    (["--from", "/nonexistent/list.txt"], "cannot read /nonexistent/list.txt: No such file or directory"),
    (["--head-size", "lots", "/a.mp4"], "--head-size must be a size such as 8MiB (got 'lots')"),
    (["ftp://host/a.mp4"], "not a path or an http(s) URL: 'ftp://host/a.mp4'"),
])
def test_warm_usage_errors(args: list[str], message: str) -> None:
    done = run("warm", *args)
    assert (done.returncode, done.stderr) == (2, f"edgecache warm: {message}\n")


def test_warm_through_an_edge_that_is_not_there() -> None:
    port = _free_port()
    done = run("warm", "--edge", f"http://127.0.0.1:{port}", "/a.mp4", "b.mp4")
    assert done.returncode == 1
    assert sorted(done.stderr.splitlines()) == [f"edgecache warm: /{name}: ConnectError: All connection attempts failed"
                                                for name in ("a.mp4", "b.mp4")]
    assert done.stdout.startswith("warmed 0 of 2 files, 0 B in ")
    assert done.stdout.endswith(": 0 hits, 0 misses, 2 errors\n")


def test_an_s3_or_http_origin_is_not_a_directory_to_check() -> None:
    assert origin_problem(Settings(origin="s3://videos/edge")) is None
    assert origin_problem(Settings(origin="http://127.0.0.1:9/media")) is None
