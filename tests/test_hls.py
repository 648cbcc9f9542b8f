"""HLS playlists (RFC 8216) as tables, and with hypothesis: random playlists never raise, and a
playlist written from a model parses back to that model."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.hls import MasterPlaylist, Media, MediaPlaylist, Variant, parse_playlist
from proxy.http.streams import MAX_MANIFEST_BYTES, Located, NotUnderstood, Ref, Segment

URL = "http://edge.test/v/a/index.m3u8"
HERE = "http://edge.test/v/a/"


def parse(text: str, url: str = URL) -> MasterPlaylist | MediaPlaylist | NotUnderstood:
    return parse_playlist(text.encode(), url)


def media(text: str) -> MediaPlaylist:
    playlist = parse(text)
    assert isinstance(playlist, MediaPlaylist), playlist
    return playlist


def test_a_vod_playlist() -> None:
    playlist = media("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:7\n"
                     "#EXT-X-PLAYLIST-TYPE:VOD\n#EXTINF:6.006,first\ns0.ts\n#EXTINF:5,\ns1.ts\n#EXT-X-ENDLIST\n")
    assert playlist == MediaPlaylist(URL, 6, (Segment(Ref(HERE + "s0.ts"), 6.006, 7),
                                              Segment(Ref(HERE + "s1.ts"), 5.0, 8)), 7, True, "VOD")
    assert not playlist.live and playlist.key == URL


@pytest.mark.parametrize("tags, live", [
    ("#EXT-X-ENDLIST\n", False),
    ("", True),  # a live playlist: segments are still added (RFC 8216 section 6.2.2)
    ("#EXT-X-PLAYLIST-TYPE:EVENT\n", True),
    ("#EXT-X-PLAYLIST-TYPE:VOD\n", False),  # section 4.3.3.5: a VOD playlist cannot change
])
def test_live_or_not(tags: str, live: bool) -> None:
    assert media("#EXTM3U\n#EXT-X-TARGETDURATION:4\n" + tags + "#EXTINF:4,\na.ts\n").live is live


def test_byte_ranges_with_and_without_offsets() -> None:
    playlist = media("#EXTM3U\n#EXT-X-TARGETDURATION:4\n"
                     "#EXTINF:4,\n#EXT-X-BYTERANGE:100@20\nall.ts\n"
                     "#EXTINF:4,\n#EXT-X-BYTERANGE:50\nall.ts\n"  # follows the previous sub-range (4.3.2.2)
                     "#EXTINF:4,\n#EXT-X-BYTERANGE:10@0\nall.ts\n"
                     "#EXTINF:4,\nwhole.ts\n")
    assert [s.ref for s in playlist.segments] == [
        Ref(HERE + "all.ts", (20, 119)), Ref(HERE + "all.ts", (120, 169)), Ref(HERE + "all.ts", (0, 9)),
        Ref(HERE + "whole.ts")]


def test_maps_with_byte_ranges_and_a_change_after_a_discontinuity() -> None:
    playlist = media("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"one.mp4\",BYTERANGE=\"720@0\"\n"
                     "#EXTINF:2,\n#EXT-X-BYTERANGE:1000@720\none.mp4\n"
                     "#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"../b/init.mp4\",BYTERANGE=\"300\"\n"
                     "#EXTINF:2,\nb1.m4s\n#EXT-X-MAP:URI=\"init2.mp4\"\n#EXTINF:2,\nb2.m4s\n")
    assert [s.init for s in playlist.segments] == [
        Ref(HERE + "one.mp4", (0, 719)), Ref("http://edge.test/v/b/init.mp4", (0, 299)), Ref(HERE + "init2.mp4")]


def test_other_tags_comments_blank_lines_crlf_and_a_bom_are_tolerated() -> None:
    text = ("\ufeff#EXTM3U\r\n#EXT-X-TARGETDURATION:2\r\n# a comment\r\n\r\n#EXT-X-KEY:METHOD=NONE\r\n"
            "#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00Z\r\n#EXTINF:2,\r\n#EXT-X-GAP\r\na.ts\r\n"
            "#EXT-X-DISCONTINUITY\r\n#EXT-X-SOMETHING-NEW:X=1\r\n#EXTINF:2,title, with commas\r\nb.ts\r\n"
            "#EXT-X-PART:DURATION=0.5,URI=\"p.ts\"\r\n#EXT-X-ENDLIST\r\n")
    assert [s.ref.url for s in media(text).segments] == [HERE + "a.ts", HERE + "b.ts"]


@pytest.mark.parametrize("uri, url", [
    ("seg.ts", HERE + "seg.ts"),
    ("../b/seg.ts", "http://edge.test/v/b/seg.ts"),
    ("/abs/seg.ts", "http://edge.test/abs/seg.ts"),
    ("seg.ts?token=a%2Fb", HERE + "seg.ts?token=a%2Fb"),
    ("seg.ts#t=10", HERE + "seg.ts"),  # a fragment is never sent (RFC 3986 section 3.5)
    ("https://cdn.example/seg.ts", "https://cdn.example/seg.ts"),
    ("//cdn.example/seg.ts", "http://cdn.example/seg.ts"),
])
def test_uris_are_resolved_against_the_playlist(uri: str, url: str) -> None:
    assert media(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{uri}\n").segments[0].ref.url == url


def test_a_master_playlist() -> None:
    playlist = parse(
        "#EXTM3U\n"
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="English",LANGUAGE="en",URI="audio/en.m3u8"\n'
        '#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID="cc",NAME="CC1",INSTREAM-ID="CC1"\n'
        '#EXT-X-STREAM-INF:BANDWIDTH=1280000,AVERAGE-BANDWIDTH=1000000,RESOLUTION=1280x720,'
        'CODECS="avc1.4d401f,mp4a.40.2",AUDIO="aac",CLOSED-CAPTIONS="cc"\n'
        "hi/index.m3u8\n"
        "# the low one\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=300000\n"
        "\n"
        "http://other.example/lo.m3u8\n"
        '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=86000,URI="hi/iframes.m3u8"\n')
    assert playlist == MasterPlaylist(
        URL,
        (Variant(HERE + "hi/index.m3u8", 1280000, (1280, 720), "avc1.4d401f,mp4a.40.2", (("AUDIO", "aac"),)),
         Variant("http://other.example/lo.m3u8", 300000)),
        (Variant(HERE + "hi/iframes.m3u8", 86000),),
        (Media(HERE + "audio/en.m3u8", "AUDIO", "aac", "English"),))


@pytest.mark.parametrize("text, reason", [
    ("#EXT-X-TARGETDURATION:2\n#EXTINF:2,\na.ts\n", "the first line is not #EXTM3U"),
    ("#EXTM3U\n", "neither a master nor a media playlist"),
    ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\na.m3u8\n#EXTINF:2,\na.ts\n", "both master and media"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:2\na.ts\n", "a URI line without #EXTINF"),
    ("#EXTM3U\n#EXTINF:2,\na.ts\n", "no #EXT-X-TARGETDURATION"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:two\n#EXTINF:2,\na.ts\n", "'two' is not a decimal-integer"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:-1,\na.ts\n", "'-1' is not a duration"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:nan,\na.ts\n", "'nan' is not a duration"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n#EXT-X-BYTERANGE:10\na.ts\n", "without an offset"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n#EXT-X-BYTERANGE:10@0\na.ts\n"
     "#EXTINF:2,\n#EXT-X-BYTERANGE:10\nb.ts\n", "without an offset"),  # another resource
    ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n#EXT-X-BYTERANGE:0@5\na.ts\n", "not a byte range"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:BYTERANGE=\"5@0\"\n#EXTINF:2,\na.ts\n", "without URI"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"i.mp4\"junk\n#EXTINF:2,\na.ts\n", "attribute-list"),
    ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n", "without a URI line"),
    ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n#EXT-X-STREAM-INF:BANDWIDTH=2\nb.m3u8\n", "without a URI line"),
    ("#EXTM3U\n#EXT-X-STREAM-INF:RESOLUTION=1x1\na.m3u8\n", "without BANDWIDTH"),
    ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=lots\na.m3u8\n", "not a decimal-integer"),
    ("#EXTM3U\n#EXT-X-MEDIA:GROUP-ID=\"a\",URI=\"a.m3u8\"\n", "without TYPE"),
    ("#EXTM3U\n#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1\n", "without URI"),
    ("#EXTM3U\nmaster.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=1\na.m3u8\n", "a URI line without #EXT-X-STREAM-INF"),
])
def test_playlists_not_understood_say_why(text: str, reason: str) -> None:
    outcome = parse(text)
    assert isinstance(outcome, NotUnderstood) and reason in outcome.reason, outcome


def test_not_utf8_and_too_large_are_not_understood() -> None:
    assert parse_playlist(b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n\xff.ts\n", URL) == \
        NotUnderstood("not UTF-8 (RFC 8216 section 4.1)")
    big = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n" + b"#EXTINF:2,\na.ts\n" * (MAX_MANIFEST_BYTES // 16)
    assert parse_playlist(big, URL) == NotUnderstood(f"larger than {MAX_MANIFEST_BYTES} bytes")


def test_a_request_is_located_by_url_and_first_byte() -> None:
    playlist = media("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"f.mp4\",BYTERANGE=\"100@0\"\n"
                     "#EXTINF:2,\n#EXT-X-BYTERANGE:400@100\nf.mp4\n#EXTINF:2,\n#EXT-X-BYTERANGE:300\nf.mp4\n"
                     "#EXT-X-MAP:URI=\"g-init.mp4\"\n#EXTINF:2,\ng.m4s\n")
    f, g = HERE + "f.mp4", HERE + "g.m4s"
    assert playlist.locate(Ref(f, (100, 499))) == Located(0)
    assert playlist.locate(Ref(f, (650, 700))) == Located(1)  # a range inside the second segment
    assert playlist.locate(Ref(f, (0, 99))) == Located(0, init=True)
    assert playlist.locate(Ref(f)) == Located(0, init=True)  # the whole file: its first byte is the map's
    assert playlist.locate(Ref(f, (800, 900))) is None  # past every segment
    assert playlist.locate(Ref(g)) == Located(2)
    assert playlist.locate(Ref(g, (5, 10))) == Located(2)
    assert playlist.locate(Ref(HERE + "g-init.mp4")) == Located(2, init=True)
    assert playlist.locate(Ref(HERE + "h.m4s")) is None
    assert playlist.available(None) == range(3) and playlist.segment(2).ref == Ref(g)
    assert playlist.directories() == frozenset({HERE})


# --- hypothesis ---------------------------------------------------------------------------

_TAGS = ["#EXTM3U", "#EXTINF:{n},", "#EXTINF:{n}.{n}", "#EXT-X-TARGETDURATION:{n}", "#EXT-X-MEDIA-SEQUENCE:{n}",
         "#EXT-X-ENDLIST", "#EXT-X-BYTERANGE:{n}", "#EXT-X-BYTERANGE:{n}@{n}", '#EXT-X-MAP:URI="{u}"',
         '#EXT-X-MAP:URI="{u}",BYTERANGE="{n}@{n}"', '#EXT-X-MAP:URI="{u}",BYTERANGE="{n}"', "#EXT-X-DISCONTINUITY",
         "#EXT-X-STREAM-INF:BANDWIDTH={n}", '#EXT-X-STREAM-INF:BANDWIDTH={n},RESOLUTION={n}x{n},AUDIO="{u}"',
         '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{u}",URI="{u}"', '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={n},URI="{u}"',
         "#EXT-X-PLAYLIST-TYPE:{u}", "{u}", "", "# {u}", "#EXT-X-{u}:{u}"]
_words = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=12)
_line = st.builds(lambda tag, n, u: tag.replace("{n}", str(n)).replace("{u}", u),
                  st.sampled_from(_TAGS), st.integers(-3, 10**20), _words)


@settings(deadline=None)  # hypothesis's deadline is a wall-clock limit: none in unit tests
@given(st.lists(_line, max_size=40), st.booleans())
def test_tag_soup_never_raises(lines: list[str], header: bool) -> None:
    outcome = parse("\n".join((["#EXTM3U"] if header else []) + lines))
    assert isinstance(outcome, MasterPlaylist | MediaPlaylist | NotUnderstood)
    if isinstance(outcome, MediaPlaylist):
        for i in outcome.available(None):
            assert outcome.locate(outcome.segment(i).ref) is not None


@settings(deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_never_raise(body: bytes) -> None:
    assert isinstance(parse_playlist(body, URL), MasterPlaylist | MediaPlaylist | NotUnderstood)
    assert isinstance(parse_playlist(b"#EXTM3U\n" + body, URL), MasterPlaylist | MediaPlaylist | NotUnderstood)


_name = st.text("abcxyz019-_", min_size=1, max_size=6)


@st.composite
def media_playlists(draw: st.DrawFn) -> tuple[str, MediaPlaylist]:
    """A media playlist's text and the model it stands for."""
    target = draw(st.integers(0, 20))
    sequence = draw(st.integers(0, 10**6))
    lines = ["#EXTM3U", f"#EXT-X-TARGETDURATION:{target}", f"#EXT-X-MEDIA-SEQUENCE:{sequence}"]
    segments: list[Segment] = []
    init: Ref | None = None
    for i in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            init_name = draw(_name) + ".mp4"
            span = draw(st.none() | st.tuples(st.integers(1, 999), st.integers(0, 10**6)))
            init = Ref(HERE + init_name, None if span is None else (span[1], span[1] + span[0] - 1))
            lines += [f'#EXT-X-MAP:URI="{init_name}"' + (f',BYTERANGE="{span[0]}@{span[1]}"' if span else "")]
            lines += ["#EXT-X-DISCONTINUITY"] if draw(st.booleans()) else []
        duration = draw(st.integers(0, 10**4)) / 1000
        lines.append(f"#EXTINF:{duration},{draw(_name)}")
        name = draw(_name) + ".ts"
        previous = segments[-1].ref if segments else None
        ranged = draw(st.sampled_from(["none", "offset", "follows"]))
        byte_range = None
        if ranged == "follows" and previous is not None and previous.byte_range is not None:
            length = draw(st.integers(1, 10**6))
            lines.append(f"#EXT-X-BYTERANGE:{length}")
            name = previous.url.rpartition("/")[2]
            byte_range = (previous.byte_range[1] + 1, previous.byte_range[1] + length)
        elif ranged != "none":
            length, offset = draw(st.integers(1, 10**6)), draw(st.integers(0, 10**9))
            lines.append(f"#EXT-X-BYTERANGE:{length}@{offset}")
            byte_range = (offset, offset + length - 1)
        lines.append(name)
        segments.append(Segment(Ref(HERE + name, byte_range), duration, sequence + i, init))
    ended = draw(st.booleans())
    return "\n".join(lines + (["#EXT-X-ENDLIST"] if ended else [])) + "\n", MediaPlaylist(
        URL, target, tuple(segments), sequence, ended)


@settings(deadline=None)
@given(media_playlists())
def test_a_media_playlist_parses_back_to_its_model(written: tuple[str, MediaPlaylist]) -> None:
    text, model = written
    assert parse(text) == model


@st.composite
def master_playlists(draw: st.DrawFn) -> tuple[str, MasterPlaylist]:
    lines = ["#EXTM3U"]
    variants, iframes, renditions = [], [], []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["variant", "iframe", "media"]))
        name, bandwidth = draw(_name), draw(st.integers(0, 10**12))
        if kind == "variant":
            size = draw(st.none() | st.tuples(st.integers(1, 8000), st.integers(1, 8000)))
            group = draw(st.none() | _name)
            attrs = f"BANDWIDTH={bandwidth}" + (f",RESOLUTION={size[0]}x{size[1]}" if size else "") + (
                f',AUDIO="{group}"' if group else "")
            lines += [f"#EXT-X-STREAM-INF:{attrs}", f"{name}.m3u8"]
            variants.append(Variant(HERE + name + ".m3u8", bandwidth, size, None, (("AUDIO", group),) if group else ()))
        elif kind == "iframe":
            lines.append(f'#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={bandwidth},URI="{name}.m3u8"')
            iframes.append(Variant(HERE + name + ".m3u8", bandwidth))
        else:
            lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{name}",NAME="{name}",URI="{name}/a.m3u8"')
            renditions.append(Media(HERE + name + "/a.m3u8", "AUDIO", name, name))
    return "\n".join(lines), MasterPlaylist(URL, tuple(variants), tuple(iframes), tuple(renditions))


@settings(deadline=None)
@given(master_playlists())
def test_a_master_playlist_parses_back_to_its_model(written: tuple[str, MasterPlaylist]) -> None:
    text, model = written
    assert parse(text) == model
