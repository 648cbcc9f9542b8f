"""`edgecache warm` on HLS playlists and DASH MPDs made by ffmpeg, through the real command line:
into a cache directory and through a running edge, every file asked of the origin once, and a
player's requests afterwards all hits."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import httpx
import pytest

from proxy.cli import main
from proxy.config import Settings
from proxy.http.headers import content_type_for
from proxy.store.disk import Store
from tests.streams import SEGMENTS, Streams
from tests.streams import streams_fixture as streams_fixture  # noqa: F401 (the fixture)
from tests.upstream import Obj, Upstream

BLOCK = 64 * 1024
SUMMARY = r"warmed (\d+) of (\d+) files?, \S+ \S+ in \d+\.\d s \(.+/s\): (\d+) hits?, (\d+) miss(?:es)?, (\d+) errors?"


def publish(origin: Upstream, streams: Streams, folder: str) -> dict[str, bytes]:
    """The folder's files on the counting origin, by path ('/hls-ts/0/seg000.ts')."""
    files = {"/" + name: data for name, data in streams.files(folder).items()}
    for path, data in files.items():
        origin.objects[path] = Obj(data, headers={"content-type": content_type_for(path)})
    return files


def edge_settings(http_settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(http_settings, block_size=BLOCK, cache_dir=str(tmp_path / "edge-cache"))


def summary(out: str) -> tuple[int, ...]:
    """warmed, files, hits, misses, errors."""
    m = re.match(SUMMARY, out)
    assert m is not None, out
    return tuple(int(g) for g in m.groups())


def played(edge_url: str, files: dict[str, bytes], origin: Upstream) -> None:
    """Every file, read as a player reads it, is a hit with its exact bytes, asking the origin nothing."""
    before = len(origin.hits)
    with httpx.Client(base_url=edge_url) as client:
        for path, data in files.items():
            r = client.get(path)
            assert (r.status_code, r.headers["x-cache"]) == (200, "HIT"), (path, r.headers.get("cache-status"))
            assert r.content == data
    assert len(origin.hits) == before


def test_an_hls_master_into_a_cache_directory(upstream, http_settings, make_server, streams, tmp_path,  # type: ignore[no-untyped-def]
                                              capsys) -> None:
    origin, _ = upstream
    files = publish(origin, streams, "hls-fmp4")
    settings = edge_settings(http_settings, tmp_path)
    Store(settings.cache_dir, settings.cache_size_limit).close()  # a cache directory, as serve leaves one
    config = tmp_path / "edge.toml"
    config.write_text("".join(f"{name} = {json.dumps(getattr(settings, name))}\n" for name in (
        "origin", "cache_dir", "block_size", "cache_size_limit", "max_object_size", "log_level", "access_log")))
    assert main(["warm", "--config", str(config), "/hls-fmp4/master.m3u8"]) == 0
    out, err = capsys.readouterr()
    # The master, two media playlists, and each rendition's initialization section and segments.
    count = 3 + 2 * (1 + SEGMENTS)
    assert err == "" and out.endswith(", 3 manifests with 2 renditions\n")
    assert summary(out) == (count, count, 0, count, 0)
    assert len(files) == count and sorted(h.path for h in origin.hits) == sorted(files)  # each file once
    played(make_server(settings).url, files, origin)


def test_dash_renditions_through_a_running_edge(upstream, http_settings, make_server, streams, tmp_path,  # type: ignore[no-untyped-def]
                                                capsys) -> None:
    origin, _ = upstream
    files = publish(origin, streams, "dash-timeline")
    edge = make_server(edge_settings(http_settings, tmp_path))
    assert main(["warm", "--edge", edge.url, "--renditions", "lowest", "/dash-timeline/stream.mpd"]) == 0
    out, err = capsys.readouterr()
    # The lowest video Representation (1: 32x24) and the audio (2) that plays with it; not video 0.
    wanted = {path: data for path, data in files.items()
              if path.endswith(".mpd") or re.search(r"/(init-stream|chunk-)[12][-.]", path)}
    assert len(wanted) == 1 + 2 * (1 + SEGMENTS)
    assert err == "" and out.endswith(", 1 manifest with 2 renditions\n")
    assert summary(out) == (len(wanted), len(wanted), 0, len(wanted), 0)
    assert sorted(h.path for h in origin.hits) == sorted(wanted)
    played(edge.url, wanted, origin)


def test_byte_range_playlists_through_a_running_edge(upstream, http_settings, make_server, streams,  # type: ignore[no-untyped-def]
                                                     tmp_path, capsys) -> None:
    origin, _ = upstream
    files = publish(origin, streams, "hls-bytes")
    edge = make_server(edge_settings(http_settings, tmp_path))
    assert main(["warm", "--edge", edge.url, "--concurrency", "8", "/hls-bytes/ts.m3u8", "/hls-bytes/fmp4.m3u8"]) == 0
    out, err = capsys.readouterr()
    count = (1 + SEGMENTS) + (1 + 1 + SEGMENTS)  # each playlist, its map, its segments' ranges
    warmed, total, hits, misses, errors = summary(out)
    assert err == "" and (warmed, total, errors, hits + misses) == (count, count, 0, count)
    for name in ("/hls-bytes/ts.ts", "/hls-bytes/fmp4.m4s"):
        blocks = sorted(int(re.fullmatch(r"bytes=(\d+)-\d+", h.headers["range"])[1]) // BLOCK  # type: ignore[index]
                        for h in origin.gets(name))
        assert blocks == list(range(-(-len(files[name]) // BLOCK)))  # every block of the file, once
    before = len(origin.hits)
    with httpx.Client(base_url=edge.url) as client:
        for name, data in files.items():
            assert client.get(name).content == data
    assert len(origin.hits) == before


def test_what_cannot_be_warmed_is_said(upstream, http_settings, make_server, streams, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    publish(origin, streams, "hls-ts")
    edge = make_server(edge_settings(http_settings, tmp_path))
    origin.objects["/bad.m3u8"] = Obj(b"<html>moved</html>")
    origin.objects["/mixed.m3u8"] = Obj(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{edge.url}/hls-ts/0/seg000.ts\n#EXTINF:1,\n"
        "http://cdn.other.test/a.ts\n#EXTINF:1,\nhls-ts/0/seg001.ts\n#EXT-X-ENDLIST\n".encode())
    items = ["/bad.m3u8", "/mixed.m3u8", "/missing.mpd", "/hls-ts/master.m3u8"]
    assert main(["warm", "--edge", edge.url, "--concurrency", "1", "--renditions", "2160p", *items]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "edgecache warm: /bad.m3u8: not a manifest edgecache understands: neither an HLS playlist nor a DASH MPD",
        "edgecache warm: /mixed.m3u8: 1 file on other servers not warmed (http://cdn.other.test/a.ts, ...)",
        "edgecache warm: /missing.mpd: status 404",
        "edgecache warm: /hls-ts/master.m3u8: --renditions matches none of its renditions",
    ]
    # The four items, and the two segments named on this edge (one by its absolute URL).
    assert summary(out) == (2, 6, 0, 5, 4) and out.endswith(", 2 manifests with 1 rendition\n")
    assert {h.path for h in origin.hits} == {*items, "/hls-ts/0/seg000.ts", "/hls-ts/0/seg001.ts"}


@pytest.mark.parametrize("value", ["huge", "all,720p", ""])
def test_a_bad_selection_is_a_usage_error(value: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["warm", "--edge", "http://127.0.0.1:9", "--renditions", value, "/a.m3u8"]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("edgecache warm: --renditions: ") and "is not one of all, best, lowest" in err
