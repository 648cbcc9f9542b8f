"""Recognising manifests, resolving their URIs, and parsing what ffmpeg writes (HLS fMP4, MPEG-TS
and byte ranges; DASH with a SegmentTimeline and with a @duration)."""
from __future__ import annotations

import subprocess
import sys
from urllib.parse import urldefrag, urljoin

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.hls import MasterPlaylist, MediaPlaylist
from proxy.http.manifests import Kind, kind_of, parse_manifest, tracks
from proxy.http.mpd import Mpd
from proxy.http.streams import Located, NotUnderstood, Ref, directory, local_target, resolve
from tests.streams import BYTES_FMP4, BYTES_TS, DASH_NUMBER, DASH_TIMELINE, HLS_FMP4, HLS_TS, SEGMENTS, Streams
from tests.streams import streams_fixture as streams_fixture  # noqa: F401 (the fixture)

BASE = "http://edge.test/"


@pytest.mark.parametrize("path, content_type, head, kind", [
    ("/a/index.m3u8", None, None, Kind.HLS),
    ("/a/INDEX.M3U", None, None, Kind.HLS),
    ("/live", "application/vnd.apple.mpegurl", None, Kind.HLS),
    ("/live", "Application/X-MpegURL; charset=utf-8", None, Kind.HLS),
    ("/live", "audio/mpegurl", None, Kind.HLS),
    ("/a/stream.mpd", None, None, Kind.DASH),
    ("/live", "application/dash+xml", None, Kind.DASH),
    ("/a.m3u8", "application/dash+xml", None, Kind.DASH),  # the type wins over the name
    ("/a/seg1.ts", None, None, Kind.SEGMENT),
    ("/a/seg1.m4s", "application/octet-stream", None, Kind.SEGMENT),
    ("/a/chunk", "video/MP2T", None, Kind.SEGMENT),
    ("/a/chunk", "video/iso.segment", None, Kind.SEGMENT),
    ("/a/film.mp4", "video/mp4", None, Kind.OTHER),  # a whole file, unless a manifest names it
    ("/page.html", "text/html", None, Kind.OTHER),
    # The body decides for manifests.
    ("/playlist", "application/octet-stream", b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n", Kind.HLS),
    ("/p", "text/plain", b"\xef\xbb\xbf#EXTM3U\r\n", Kind.HLS),
    ("/p", None, b"#EXTM3U", Kind.HLS),
    ("/p.m3u8", None, b"#EXTM3UX\n", Kind.OTHER),
    ("/p.m3u8", "application/vnd.apple.mpegurl", b"<html>not found</html>", Kind.OTHER),
    ("/m", "text/xml", b'<?xml version="1.0"?>\n<!-- made by hand -->\n<MPD type="static">', Kind.DASH),
    ("/m", None, b"<dash:MPD xmlns:dash='urn:mpeg:dash:schema:mpd:2011'/>", Kind.DASH),
    ("/m.mpd", None, b"<MPDX/>", Kind.OTHER),
    ("/m.mpd", None, b"", Kind.OTHER),
    ("/seg.ts", "video/mp2t", b"G@\x11\x10", Kind.SEGMENT),
])
def test_kind_of(path: str, content_type: str | None, head: bytes | None, kind: Kind) -> None:
    assert kind_of(path, content_type, head) is kind


# RFC 3986 section 5.4: the reference resolution examples, against http://a/b/c/d;p?q.
@pytest.mark.parametrize("reference, resolved", [
    ("g:h", "g:h"), ("g", "http://a/b/c/g"), ("./g", "http://a/b/c/g"), ("g/", "http://a/b/c/g/"),
    ("/g", "http://a/g"), ("//g", "http://g"), ("?y", "http://a/b/c/d;p?y"), ("g?y", "http://a/b/c/g?y"),
    ("#s", "http://a/b/c/d;p?q"), ("g#s", "http://a/b/c/g"), ("g?y#s", "http://a/b/c/g?y"),
    (";x", "http://a/b/c/;x"), ("g;x", "http://a/b/c/g;x"), ("", "http://a/b/c/d;p?q"), (".", "http://a/b/c/"),
    ("./", "http://a/b/c/"), ("..", "http://a/b/"), ("../", "http://a/b/"), ("../g", "http://a/b/g"),
    ("../..", "http://a/"), ("../../", "http://a/"), ("../../g", "http://a/g"),
    ("../../../g", "http://a/g"), ("../../../../g", "http://a/g"), ("/./g", "http://a/g"), ("/../g", "http://a/g"),
    ("g.", "http://a/b/c/g."), (".g", "http://a/b/c/.g"), ("g..", "http://a/b/c/g.."), ("..g", "http://a/b/c/..g"),
    ("./../g", "http://a/b/g"), ("./g/.", "http://a/b/c/g/"), ("g/./h", "http://a/b/c/g/h"),
    ("g/../h", "http://a/b/c/h"), ("g;x=1/./y", "http://a/b/c/g;x=1/y"), ("g;x=1/../y", "http://a/b/c/y"),
    ("g?y/./x", "http://a/b/c/g?y/./x"), ("g?y/../x", "http://a/b/c/g?y/../x"),
    ("http:g", "http://a/b/c/g"),  # section 5.4.2: what a parser that is not strict gives (also allowed)
    ("  g  ", "http://a/b/c/g"),  # a playlist line's or BaseURL's surrounding blanks are not part of it
])
def test_references_resolve_as_rfc_3986_says(reference: str, resolved: str) -> None:
    assert resolve("http://a/b/c/d;p?q", reference) == resolved


@settings(deadline=None)  # hypothesis's deadline is a wall-clock limit: none in unit tests
@given(st.sampled_from(["http://a/b/c/d;p?q", "https://edge.test/v/x.m3u8", "http://e", "http://e/v/../w/x.m3u8",
                        "http://E:8080/./v/", "/v/x.m3u8", "HTTP://e/%2E%2E/x", "http://e/a//b/x", "http://e/a;x/b"]),
       st.text(st.characters(codec="utf-8") | st.sampled_from("ab./?#:;=%@ 2\t"), max_size=14))
def test_resolve_is_what_urljoin_gives(base: str, reference: str) -> None:
    """The shortcut for plain relative paths gives what the general resolution does."""
    assert resolve(base, reference) == urldefrag(urljoin(base, reference.strip())).url


@pytest.mark.parametrize("url, target", [
    ("http://edge.test/v/a.ts", "/v/a.ts"),
    ("HTTP://Edge.Test/v/a.ts?x=1", "/v/a.ts?x=1"),
    ("http://edge.test", "/"),
    ("https://edge.test/v/a.ts", None),
    ("http://edge.test:8080/v/a.ts", None),
    ("http://cdn.test/v/a.ts", None),
])
def test_local_targets(url: str, target: str | None) -> None:
    assert local_target(url, "http://edge.test/v/master.m3u8") == target


def test_directories() -> None:
    assert directory("http://e/v/a/seg.ts?x=/y") == "http://e/v/a/"
    assert directory("http://e/seg.ts") == "http://e/"


def test_parse_manifest_goes_by_the_body() -> None:
    assert isinstance(parse_manifest(b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\na.m3u8\n", BASE), MasterPlaylist)
    assert isinstance(parse_manifest(b'<MPD type="static"/>', BASE), Mpd)
    assert parse_manifest(b"\x00\x00\x00\x18ftypmp42", BASE) == NotUnderstood("neither an HLS playlist nor a DASH MPD")
    assert tracks(MasterPlaylist(BASE, ())) == ()


def test_the_parsers_need_nothing_but_the_standard_library() -> None:
    code = ("import sys, proxy.http.manifests, proxy.http.prefetch, proxy.http.lifetimes;"
            "bad = [m for m in ('starlette', 'httpx', 'anyio', 'diskcache', 'uvicorn', 'socket', 'asyncio')"
            " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- what ffmpeg writes -----------------------------------------------------------------------

def parsed(streams: Streams, name: str) -> MasterPlaylist | MediaPlaylist | Mpd:
    manifest = parse_manifest(streams.read(name), BASE + name)
    assert not isinstance(manifest, NotUnderstood), manifest
    assert kind_of("/" + name, None, streams.read(name)[:64]) is (Kind.DASH if isinstance(manifest, Mpd) else Kind.HLS)
    return manifest


def named(streams: Streams, ref: Ref) -> bytes:
    """The bytes `ref` names among the streams' files."""
    target = local_target(ref.url, BASE)
    assert target is not None
    data = streams.read(target.lstrip("/"))
    return data if ref.byte_range is None else data[ref.byte_range[0]:ref.byte_range[1] + 1]


@pytest.mark.parametrize("master, extension, init", [(HLS_FMP4, ".m4s", "init_{}.mp4"), (HLS_TS, ".ts", None)])
def test_ffmpeg_hls_with_two_renditions(streams: Streams, master: str, extension: str, init: str | None) -> None:
    playlist = parsed(streams, master)
    assert isinstance(playlist, MasterPlaylist) and not playlist.iframes and not playlist.media
    folder = master.partition("/")[0]
    assert [(v.url, v.resolution) for v in playlist.variants] == [
        (f"{BASE}{folder}/0/index.m3u8", (64, 48)), (f"{BASE}{folder}/1/index.m3u8", (32, 24))]
    assert playlist.variants[0].bandwidth > playlist.variants[1].bandwidth
    files = streams.files(folder)
    for i, variant in enumerate(playlist.variants):
        media = parsed(streams, variant.url.removeprefix(BASE))
        assert isinstance(media, MediaPlaylist) and media.ended and not media.live
        assert media.target_duration == 1 and len(media.segments) == SEGMENTS
        assert [s.number for s in media.segments] == list(range(SEGMENTS))
        assert sum(s.duration for s in media.segments) == pytest.approx(SEGMENTS)
        segment_names = [f"{folder}/{i}/seg{n:03d}{extension}" for n in range(SEGMENTS)]
        assert [s.ref for s in media.segments] == [Ref(BASE + name) for name in segment_names]
        assert sorted(p for p in files if p.startswith(f"{folder}/{i}/seg")) == segment_names  # no file left out
        expected_init = Ref(f"{BASE}{folder}/{i}/{init.format(i)}") if init else None
        assert {s.init for s in media.segments} == {expected_init}
        if expected_init is not None:
            assert named(streams, expected_init)[4:8] == b"ftyp"
            assert media.locate(expected_init) == Located(0, init=True)
        assert all(media.locate(s.ref) == Located(n) for n, s in enumerate(media.segments))


@pytest.mark.parametrize("name, init", [(BYTES_FMP4, True), (BYTES_TS, False)])
def test_ffmpeg_hls_byte_ranges_cover_their_file(streams: Streams, name: str, init: bool) -> None:
    media = parsed(streams, name)
    assert isinstance(media, MediaPlaylist) and len(media.segments) == SEGMENTS
    whole = streams.read(name.replace(".m3u8", ".m4s" if init else ".ts"))
    first = media.segments[0].init
    assert (first is not None) is init
    refs = ([first] if first is not None else []) + [s.ref for s in media.segments]
    spans = [ref.byte_range for ref in refs if ref.byte_range is not None]
    assert len(spans) == len(refs)
    # One after the other from the first byte to the last: every byte named once.
    assert [span[0] for span in spans] == [0] + [span[1] + 1 for span in spans[:-1]]
    assert spans[-1][1] == len(whole) - 1
    if first is not None:
        assert named(streams, first)[4:8] == b"ftyp"
    for segment in media.segments:  # a media segment's first box; an MPEG-TS packet's sync byte
        data = named(streams, segment.ref)
        assert data[4:8] in (b"styp", b"sidx", b"moof") if init else data[0] == 0x47
    for n, (first_byte, _) in enumerate(spans[1:] if init else spans):
        assert media.locate(Ref(media.segments[n].ref.url, (first_byte + 5, first_byte + 9))) == Located(n)


@pytest.mark.parametrize("name", [DASH_TIMELINE, DASH_NUMBER])
def test_ffmpeg_dash(streams: Streams, name: str) -> None:
    mpd = parsed(streams, name)
    assert isinstance(mpd, Mpd) and not mpd.dynamic and mpd.media_presentation_duration == pytest.approx(SEGMENTS, 0.01)
    reps = mpd.representations()
    assert [(r.id, r.content_type, r.width, r.height) for r in reps] == [
        ("0", "video", 64, 48), ("1", "video", 32, 24), ("2", "audio", None, None)]
    folder = name.partition("/")[0]
    referenced = set()
    for rep in reps:
        window = rep.available(None)
        assert window == range(SEGMENTS)
        segments = [rep.segment(i) for i in window]
        assert sum(s.duration for s in segments) == pytest.approx(SEGMENTS, abs=0.2)
        assert {s.init for s in segments} == {Ref(f"{BASE}{folder}/init-stream{rep.id}.m4s")}
        assert named(streams, Ref(f"{BASE}{folder}/init-stream{rep.id}.m4s"))[4:8] == b"ftyp"
        for i, s in enumerate(segments):
            assert named(streams, s.ref)[4:8] in (b"styp", b"moof")  # a media segment's first box
            assert rep.locate(s.ref) == Located(i)
            referenced.add(s.ref.url.removeprefix(BASE))
        if name == DASH_NUMBER:
            assert segments[9].ref.url == f"{BASE}{folder}/chunk-stream{rep.id}-00010.m4s"
    made = {p for p in streams.files(folder) if "chunk" in p}
    assert referenced <= made and len(referenced) == 3 * SEGMENTS
