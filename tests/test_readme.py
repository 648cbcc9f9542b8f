"""The README tells the truth: its walk-through, run as it says (the server from its first command,
in a copy of the repository's assets), prints what the README shows, line for line; and its two
commands are the ones CI runs."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.edge_process import EdgeProcess

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (.ci/run installs it)")
README = (REPO_ROOT / "README.md").read_text()
_END = "@@edgecache-readme-end@@"
# What changes from one run to the next: ETags (a file's mtime), dates, a multipart boundary, ttl.
_CHANGING = [
    (re.compile(r'[0-9a-f]{16}-[0-9a-f]+'), "ETAG"),
    (re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT"), "DATE"),
    (re.compile(r"boundary=[0-9a-f]+"), "boundary=B"),
    (re.compile(r"ttl=\d+"), "ttl=N"),
]


def walk_through() -> list[tuple[str, list[str]]]:
    """The walk-through's commands and the lines the README shows after each."""
    section = README.split("## A walk-through with curl", 1)[1].split("\n## ", 1)[0]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif not line.startswith("# "):
            steps[-1][1].append(line)
    return steps


def _normal(lines: list[str], port: int) -> list[str]:
    out = []
    for line in lines:
        line = line.replace("127.0.0.1:8080", f"127.0.0.1:{port}").rstrip("\r")
        for pattern, replacement in _CHANGING:
            line = pattern.sub(replacement, line)
        out.append(line)
    return out


def _copy_assets(to: Path) -> None:
    """The repository's own assets, as git tracks them: not the files a walk-through run by hand
    left there (its uploads would turn the walk-through's 201s into 200s)."""
    listed = subprocess.run(["git", "ls-files", "-z", "assets"], cwd=REPO_ROOT, capture_output=True)
    names = [name for name in listed.stdout.decode().split("\0") if name] if listed.returncode == 0 else []
    if not names:  # not a git checkout: all of it
        shutil.copytree(REPO_ROOT / "assets", to / "assets")
        return
    for name in names:
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, to / name)


def test_the_walk_through_prints_what_the_readme_shows(tmp_path: Path) -> None:
    _copy_assets(tmp_path)
    steps = walk_through()
    assert len(steps) >= 10
    console = str(Path(sys.executable).parent / "edgecache")
    with EdgeProcess(tmp_path, env={"EDGECACHE_ACCESS_LOG": "true"}, command=[console, "serve"],
                     quiet_start=True) as edge:
        script = "".join(f"{command.replace('127.0.0.1:8080', f'127.0.0.1:{edge.port}')}\nprintf '{_END}\\n'\n"
                         for command, _ in steps)
        run = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin"})
    outputs = run.stdout.split(_END + "\n")
    for (command, shown), printed in zip(steps, outputs, strict=False):
        assert _normal(printed.splitlines(), edge.port) == _normal(shown, edge.port), command
    assert len(outputs) == len(steps) + 1 and run.returncode == 0, run.stderr


def test_the_two_commands_are_the_ones_ci_runs() -> None:
    run, test = re.findall(r"```sh\n(python3 -m venv .*)\n```", README)[:2]
    assert run == "python3 -m venv .venv && .venv/bin/pip install -q . && .venv/bin/edgecache serve"
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'" in ci
    assert test == "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest"
    assert ".venv/bin/python -m pytest" in ci


def test_the_readme_stays_short() -> None:
    assert len(README.splitlines()) <= 260
