"""`edgecache warm`: through a running edge and directly into a cache directory, MP4 indexes at the end."""
from __future__ import annotations

import dataclasses
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from proxy.cli import main
from proxy.config import Settings, format_size
from proxy.ops.mp4 import MoovSearch
from proxy.store.disk import Store
from tests.conftest import pattern
from tests.upstream import Obj

REPO = Path(__file__).resolve().parent.parent
BLOCK = 64 * 1024


def ffmpeg_mp4(path: Path, faststart: bool) -> bytes:
    """A small H.264 MP4 made by ffmpeg; without faststart its index (moov) comes after the media."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg; .ci/run installs it)")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=duration=2:size=320x240:rate=25",
         "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p",
         *(["-movflags", "+faststart"] if faststart else []), str(path)],
        check=True, timeout=60,
    )
    return path.read_bytes()


def walk(data: bytes) -> MoovSearch:
    search = MoovSearch(len(data))
    while (wanted := search.wanted) is not None:
        search.feed(data[wanted[0]:wanted[0] + wanted[1]])
    assert search.moov is not None
    return search


def moov_of(data: bytes) -> tuple[int, int]:
    moov = walk(data).moov
    assert moov is not None
    return moov.offset, moov.end - 1


@pytest.fixture
def videos(tmp_path: Path, upstream):  # type: ignore[no-untyped-def]
    """A non-faststart and a faststart MP4 on the counting origin, both over three blocks."""
    origin, _ = upstream
    made = {}
    for name, faststart in (("late.mp4", False), ("fast.mp4", True)):
        data = ffmpeg_mp4(tmp_path / name, faststart)
        assert len(data) > 2 * BLOCK
        origin.objects["/v/" + name] = Obj(data)
        made[name] = data
    late_moov, fast_moov = moov_of(made["late.mp4"]), moov_of(made["fast.mp4"])
    assert late_moov[0] >= 2 * BLOCK and fast_moov[1] < BLOCK  # what ffmpeg wrote, as the test needs it
    return made


def blocks_fetched(origin, path: str) -> list[int]:  # type: ignore[no-untyped-def]
    """Block numbers the edge asked the origin for, in order."""
    ranges = [h.headers.get("range", "") for h in origin.gets(path)]
    return [int(re.fullmatch(r"bytes=(\d+)-\d+", r).group(1)) // BLOCK for r in ranges]  # type: ignore[union-attr]


def edge_settings(http_settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(http_settings, block_size=BLOCK, cache_dir=str(tmp_path / "edge-cache"))


def check_warmed(origin, edge_url: str, videos: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    """A player's first request and its read of the index are hits that ask the origin nothing."""
    before = len(origin.hits)
    with httpx.Client(base_url=edge_url) as client:
        for name, data in videos.items():
            first, last = moov_of(data)
            for start, end in ((0, BLOCK - 1), (first, last)):
                r = client.get("/v/" + name, headers={"Range": f"bytes={start}-{end}"})
                assert r.status_code == 206 and r.content == data[start:end + 1]
                assert r.headers["cache-status"].startswith("edgecache; hit;") and r.headers["x-cache"] == "HIT"
        assert len(origin.hits) == before
        # The middle block was not warmed: reading it asks the origin.
        r = client.get("/v/late.mp4", headers={"Range": f"bytes={BLOCK}-{BLOCK + 9}"})
        assert r.content == videos["late.mp4"][BLOCK:BLOCK + 10] and blocks_fetched(origin, "/v/late.mp4")[-1] == 1


def test_warm_through_a_running_edge(upstream, http_settings, make_server, videos, tmp_path) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    edge = make_server(edge_settings(http_settings, tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "warm", "--edge", edge.url, "--head-size", "64KiB", "/v/late.mp4",
         f"{edge.url}/v/fast.mp4"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert (done.returncode, done.stderr) == (0, "")
    # Not on a terminal: no progress bar, one summary line. The bytes: two heads, the late file's
    # index, and 16 bytes for each atom header read to find the indexes (ftyp, free, mdat, moov; ftyp, moov).
    index = moov_of(videos["late.mp4"])
    headers = [len(walk(data).atoms) for data in videos.values()]
    assert headers == [4, 2]
    read = 2 * BLOCK + (index[1] - index[0] + 1) + 16 * sum(headers)
    assert re.fullmatch(r"warmed 2 of 2 files, \S+ \S+ in \d+\.\d s \(.+/s\): 0 hits, 2 misses, 0 errors, "
                        r"1 MP4 index at the end\n", done.stdout)
    assert done.stdout.startswith(f"warmed 2 of 2 files, {format_size(read)} in ")
    # The late file's first and last blocks were fetched, not the one between; the fast one's first only.
    assert blocks_fetched(origin, "/v/late.mp4") == [0, 2]
    assert blocks_fetched(origin, "/v/fast.mp4") == [0]
    check_warmed(origin, edge.url, videos)


def test_warm_directly_into_a_cache_directory(upstream, http_settings, make_server, videos, tmp_path,
                                              capsys) -> None:  # type: ignore[no-untyped-def]
    origin, running = upstream
    settings = edge_settings(http_settings, tmp_path)
    Store(settings.cache_dir, settings.cache_size_limit).close()  # a cache directory, as serve leaves one
    origin.objects["/whole.bin"] = Obj(pattern(3 * BLOCK + 5))
    listing = tmp_path / "list.txt"
    listing.write_text("# videos\n/v/late.mp4\n\nhttp://anywhere.example/v/fast.mp4\n/missing.mp4\n")
    args = ["warm", "--origin", running.url, "--cache-dir", settings.cache_dir, "--from", str(listing)]
    env = {"EDGECACHE_BLOCK_SIZE": "64KiB", "EDGECACHE_CACHE_SIZE_LIMIT": "64MiB",
           "EDGECACHE_MAX_OBJECT_SIZE": "32MiB"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main([*args, "--head-size", "64KiB"]) == 1  # the missing file
        out, err = capsys.readouterr()
        assert err == "edgecache warm: /missing.mp4: status 404\n"
        assert out.endswith(": 0 hits, 2 misses, 1 error, 1 MP4 index at the end\n")
        assert out.startswith("warmed 2 of 3 files, ")
        assert blocks_fetched(origin, "/v/late.mp4") == [0, 2] and blocks_fetched(origin, "/v/fast.mp4") == [0]
        # Whole files: every block once; warming again finds them stored.
        assert main(["warm", "--origin", running.url, "--cache-dir", settings.cache_dir, "/whole.bin"]) == 0
        assert main(["warm", "--origin", running.url, "--cache-dir", settings.cache_dir, "/whole.bin"]) == 0
        out, _ = capsys.readouterr()
        first, second = out.splitlines()
        assert first.startswith("warmed 1 of 1 file, 192 KiB in ") and first.endswith(": 0 hits, 1 miss, 0 errors")
        assert second.endswith(": 1 hit, 0 misses, 0 errors")
        assert sorted(blocks_fetched(origin, "/whole.bin")) == [0, 1, 2, 3]
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    edge = make_server(settings)
    check_warmed(origin, edge.url, videos)
    r = httpx.get(edge.url + "/whole.bin")
    assert r.content == pattern(3 * BLOCK + 5) and r.headers["x-cache"] == "HIT"
    assert sorted(blocks_fetched(origin, "/whole.bin")) == [0, 1, 2, 3]


def test_a_terminal_gets_a_progress_bar(upstream, http_settings, make_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/a.bin"] = Obj(pattern(2 * BLOCK))
    edge = make_server(edge_settings(http_settings, tmp_path))
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "warm", "--edge", edge.url, "/a.bin"], cwd=REPO,
                            stdout=terminal, stderr=terminal, env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    os.close(terminal)
    shown = b""
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # the program ended and closed the terminal
            break
        if not data:
            break
        shown += data
    os.close(controller)
    assert proc.wait(timeout=60) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode())
    assert "warming" in text and "1/1 files" in text and "128.0/128.0 KiB" in text
    assert text.rstrip().splitlines()[-1].startswith("warmed 1 of 1 file, 128 KiB in ")
