"""Settings: precedence, validation messages, and the command line."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proxy.config import ConfigError, Settings, load_settings, parse_size

REPO = Path(__file__).resolve().parent.parent


def test_defaults() -> None:
    s = load_settings(environ={})
    assert (s.origin, s.host, s.port, s.workers) == ("./assets", "127.0.0.1", 8080, 1)


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('port = 9001\nhost = "0.0.0.0"\nchunk_size = "1MiB"\nmax_ranges = 3\n')
    env = {"EDGECACHE_PORT": "9002", "EDGECACHE_HOST": "::1"}
    s = load_settings(flags={"port": "9003", "host": None}, environ=env, config_file=str(config))
    assert s.port == 9003  # flag
    assert s.host == "::1"  # env (flag not given)
    assert s.chunk_size == 1024 * 1024 and s.max_ranges == 3  # file
    assert s.workers == 1  # default
    assert load_settings(environ={**env, "EDGECACHE_CONFIG": str(config)}).max_ranges == 3


def test_edgecache_table_in_toml(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text("[edgecache]\nserve_dotfiles = true\n")
    assert load_settings(environ={}, config_file=str(config)).serve_dotfiles is True


def test_example_config_documents_every_field_with_its_default() -> None:
    import tomllib

    example = REPO / "config" / "edgecache.example.toml"
    values = tomllib.loads(example.read_text())
    defaults = Settings()
    assert set(values) == set(Settings.__dataclass_fields__)
    for name, value in values.items():
        expected = getattr(defaults, name)
        assert (parse_size(value) if isinstance(value, str) and isinstance(expected, int) else value) == expected, name


@pytest.mark.parametrize(
    "flags, env, message",
    [
        ({"port": "http"}, {}, "invalid setting 'port': expected a whole number (got 'http')"),
        ({"port": "70000"}, {}, "invalid setting 'port': must be between 0 and 65535 (got 70000)"),
        ({}, {"EDGECACHE_WORKERS": "0"}, "invalid setting 'workers': must be between 1 and 64 (got 0)"),
        ({}, {"EDGECACHE_CHUNK_SIZE": "lots"}, "invalid setting 'chunk_size': expected a size in bytes"),
        ({}, {"EDGECACHE_CACHE_SIZE_LIMIT": "1MiB"},
         "invalid setting 'cache_size_limit': must be between 64 MiB and 1 EiB (got 1 MiB)"),
        ({}, {"EDGECACHE_SERVE_DOTFILES": "maybe"}, "invalid setting 'serve_dotfiles': expected true or false"),
        ({}, {"EDGECACHE_LOG_LEVEL": "loud"}, "invalid setting 'log_level': must be one of"),
        ({}, {"EDGECACHE_CACHE_CONTROL": "a\nb"}, "invalid setting 'cache_control': control characters"),
        ({"origin": " "}, {}, "invalid setting 'origin': must not be empty"),
    ],
)
def test_invalid_settings_name_the_setting(flags: dict, env: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(flags=flags, environ=env)
    assert str(e.value).startswith(message)


def test_unknown_and_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_settings(environ={}, config_file=str(bad))
    bad.write_text("port = [\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(environ={}, config_file=str(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(environ={}, config_file=str(tmp_path / "missing.toml"))


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_cli_invalid_setting_is_one_line_and_exit_2() -> None:
    proc = _cli("serve", "--port", "nope")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err == "edgecache: invalid setting 'port': expected a whole number (got 'nope')\n"
    proc = _cli("serve", env={"EDGECACHE_WORKERS": "-3"})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and err.count("\n") == 1 and "'workers'" in err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_processes(pid: int) -> list[str]:
    """Command lines of the spawned worker processes (not multiprocessing's resource tracker)."""
    out = subprocess.run(["ps", "-ww", "-o", "args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "spawn_main" in line]


def test_cli_serves_with_real_worker_processes(origin_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    proc = _cli(
        "serve", "--origin", str(origin_dir), "--port", str(port), "--workers", "2",
        "--cache-dir", str(tmp_path / "cache"), "--log-level", "warning",
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/small.txt", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.2)
        assert r.status_code == 200 and r.content == b"hello, edge\n"
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = _worker_processes(proc.pid)
            time.sleep(0.2)
        assert len(workers) == 2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
