"""Planning rules for streams, as tables: what to prefetch after a request, which rendition a
request belongs to, and how long manifests and segments stay fresh when the origin says nothing."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import ConfigError, load_settings
from proxy.http.hls import MasterPlaylist, MediaPlaylist, parse_playlist
from proxy.http.lifetimes import Changes, StreamTtls, changes_of, stream_lifetime
from proxy.http.manifests import Kind, parse_manifest
from proxy.http.mpd import Mpd, parse_mpd
from proxy.http.prefetch import plan_prefetch, plan_start, rendition_of
from proxy.http.streams import Ref, local_target
from tests.streams import HLS_FMP4, Streams
from tests.streams import streams_fixture as streams_fixture  # noqa: F401 (the fixture)
from tests.test_hls import media_playlists

HERE = "http://edge.test/v/"
AST = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def playlist(body: str) -> MediaPlaylist:
    parsed = parse_playlist(("#EXTM3U\n#EXT-X-TARGETDURATION:2\n" + body).encode(), HERE + "index.m3u8")
    assert isinstance(parsed, MediaPlaylist), parsed
    return parsed


def vod(count: int = 6, changed_map_at: int | None = None) -> MediaPlaylist:
    lines = ['#EXT-X-MAP:URI="init.mp4"']
    for i in range(count):
        if i == changed_map_at:
            lines.append('#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="init2.mp4"')
        lines.append(f"#EXTINF:2,\ns{i}.m4s")
    return playlist("\n".join(lines) + "\n#EXT-X-ENDLIST\n")


def refs(*names: str) -> tuple[Ref, ...]:
    return tuple(Ref(HERE + n) for n in names)


@pytest.mark.parametrize("requested, count, have, planned", [
    ("s0.m4s", 2, (), ("init.mp4", "s1.m4s", "s2.m4s")),  # the segment's own map first, when not had
    ("s0.m4s", 2, ("init.mp4",), ("s1.m4s", "s2.m4s")),
    ("init.mp4", 2, (), ("s0.m4s", "s1.m4s")),  # a map comes before its first segment
    ("s3.m4s", 3, ("init.mp4", "s5.m4s"), ("s4.m4s",)),  # a seek: from there, what is had left out
    ("s4.m4s", 3, ("init.mp4",), ("s5.m4s",)),  # the end of the playlist
    ("s5.m4s", 3, ("init.mp4",), ()),
    ("s2.m4s", 0, (), ("init.mp4",)),
    ("other.m4s", 2, (), None),  # not part of this rendition
])
def test_the_next_segments_of_a_vod_playlist(requested: str, count: int, have: tuple[str, ...],
                                             planned: tuple[str, ...] | None) -> None:
    expected = None if planned is None else refs(*planned)
    assert plan_prefetch(vod(), Ref(HERE + requested), count, frozenset(refs(*have))) == expected


@settings(deadline=None)  # hypothesis's deadline is a wall-clock limit: none in unit tests
@given(media_playlists(), st.data())
def test_a_plan_is_what_follows_in_order(written: tuple[str, MediaPlaylist], data: st.DataObject) -> None:
    _, media = written
    named = [s.ref for s in media.segments] + [s.init for s in media.segments if s.init is not None]
    requested = data.draw(st.sampled_from(named) if named else st.just(Ref(HERE + "none.ts")))
    have = frozenset(data.draw(st.sets(st.sampled_from(named)) if named else st.just(set())))
    count = data.draw(st.integers(0, 6))
    plan = plan_prefetch(media, requested, count, have)
    located = media.locate(requested)
    if located is None:
        assert plan is None and not named
        return
    assert plan is not None and len(set(plan)) == len(plan) and not (set(plan) & (have | {requested}))
    if located.init and media.live:
        assert plan == ()  # a live player starts near the live edge, not at the top
        return
    start = located.index if located.init else located.index + 1
    following = media.segments[start:start + count]
    wanted = [s.ref for s in following]
    # Every segment that follows and is not had, in order; each initialization section before the
    # first of them that uses it (or first, for the requested segment's own).
    assert [r for r in plan if r in wanted] == list(dict.fromkeys(r for r in wanted if r not in have | {requested}))
    for n, s in enumerate(following):
        first_time = s.ref not in wanted[:n]  # a playlist may name one resource twice
        if first_time and s.init is not None and s.init in plan and s.ref in plan:
            assert plan.index(s.init) < plan.index(s.ref)
    inits = {s.init for s in following} | ({media.segments[located.index].init} if not located.init else set())
    assert {r for r in plan if r not in wanted} == {i for i in inits if i} - have - {requested} - set(wanted)


def test_a_new_map_comes_before_the_segments_that_use_it() -> None:
    assert plan_prefetch(vod(changed_map_at=3), Ref(HERE + "s1.m4s"), 3, frozenset(refs("init.mp4"))) == refs(
        "s2.m4s", "init2.mp4", "s3.m4s", "s4.m4s")


def test_byte_range_segments() -> None:
    media = playlist('#EXT-X-MAP:URI="all.mp4",BYTERANGE="100@0"\n' + "".join(
        f"#EXTINF:2,\n#EXT-X-BYTERANGE:{1000}\nall.mp4\n" if i else "#EXTINF:2,\n#EXT-X-BYTERANGE:1000@100\nall.mp4\n"
        for i in range(4)) + "#EXT-X-ENDLIST\n")
    url = HERE + "all.mp4"
    # A player's range inside segment 1 (bytes 1100-2099): the next two, each by its range.
    assert plan_prefetch(media, Ref(url, (1500, 1600)), 2) == (Ref(url, (0, 99)), Ref(url, (2100, 3099)),
                                                                Ref(url, (3100, 4099)))


def test_a_live_playlist_prefetches_only_what_it_lists() -> None:
    live = playlist('#EXT-X-MAP:URI="init.mp4"\n' + "".join(f"#EXTINF:2,\ns{i}.m4s\n" for i in range(5)))
    assert live.live
    assert plan_prefetch(live, Ref(HERE + "s2.m4s"), 4, frozenset(refs("init.mp4"))) == refs("s3.m4s", "s4.m4s")
    assert plan_prefetch(live, Ref(HERE + "s4.m4s"), 4, frozenset(refs("init.mp4"))) == ()  # the live edge
    assert plan_prefetch(live, Ref(HERE + "init.mp4"), 4) == ()  # a live player does not start at the top


LIVE_MPD = ('<MPD type="dynamic" availabilityStartTime="2023-11-14T22:13:20Z" minimumUpdatePeriod="PT2S">'
            '<Period id="p"><AdaptationSet><Representation id="v" bandwidth="1">'
            '<SegmentTemplate media="$Number$.m4s" initialization="init.mp4" duration="2"/>'
            "</Representation></AdaptationSet></Period></MPD>")


def test_a_dynamic_mpd_prefetches_up_to_the_live_edge() -> None:
    mpd = parse_mpd(LIVE_MPD.encode(), HERE + "live.mpd")
    assert isinstance(mpd, Mpd)
    rep = mpd.representations()[0]
    have = frozenset(refs("init.mp4"))
    now = AST + 20.5  # segments 1-10 have ended; 11 is being made
    assert plan_prefetch(rep, Ref(HERE + "7.m4s"), 5, have, now) == refs("8.m4s", "9.m4s", "10.m4s")
    assert plan_prefetch(rep, Ref(HERE + "10.m4s"), 5, have, now) == ()
    assert plan_prefetch(rep, Ref(HERE + "7.m4s"), 5, have, now + 4) == refs("8.m4s", "9.m4s", "10.m4s", "11.m4s",
                                                                            "12.m4s")
    assert plan_prefetch(rep, Ref(HERE + "init.mp4"), 5, frozenset(), now) == ()


def test_where_a_player_starts() -> None:
    assert plan_start(vod(), 2) == refs("init.mp4", "s0.m4s", "s1.m4s")
    assert plan_start(vod(), 9, frozenset(refs("s1.m4s"))) == refs("init.mp4", "s0.m4s", "s2.m4s", "s3.m4s",
                                                                    "s4.m4s", "s5.m4s")
    live = playlist('#EXT-X-MAP:URI="init.mp4"\n' + "".join(f"#EXTINF:2,\ns{i}.m4s\n" for i in range(6)))
    # Three target durations from the end (RFC 8216 section 6.3.3), and on to the live edge.
    assert plan_start(live, 2) == refs("init.mp4", "s3.m4s", "s4.m4s")
    assert plan_start(live, 9) == refs("init.mp4", "s3.m4s", "s4.m4s", "s5.m4s")
    short = playlist("#EXTINF:2,\ns0.m4s\n")
    assert plan_start(short, 4) == refs("s0.m4s")
    mpd = parse_mpd(LIVE_MPD.encode(), HERE + "live.mpd")
    assert isinstance(mpd, Mpd)
    assert plan_start(mpd.representations()[0], 2, now=AST + 20.5) == refs("init.mp4", "8.m4s", "9.m4s")
    assert plan_start(mpd.representations()[0], 2, now=AST + 1) == ()


def test_the_rendition_of_a_request() -> None:
    mpd = parse_mpd(b'<MPD type="static" mediaPresentationDuration="PT10S"><Period><AdaptationSet>'
                    b'<SegmentTemplate media="$RepresentationID$/$Number$.m4s" initialization="$RepresentationID$.mp4"'
                    b' duration="2"/><Representation id="hi" bandwidth="2"/><Representation id="lo" bandwidth="1"/>'
                    b"</AdaptationSet></Period></MPD>", HERE + "s.mpd")
    assert isinstance(mpd, Mpd)
    hi, lo = mpd.representations()
    assert rendition_of(mpd, Ref(HERE + "lo/3.m4s")) is lo
    assert rendition_of(mpd, Ref(HERE + "hi.mp4")) is hi
    assert rendition_of(mpd, Ref(HERE + "mid/3.m4s")) is None
    media = vod()
    assert rendition_of(media, Ref(HERE + "s3.m4s")) is media
    assert rendition_of(media, Ref(HERE + "s9.m4s")) is None
    assert rendition_of(MasterPlaylist(HERE + "m.m3u8", ()), Ref(HERE + "s3.m4s")) is None


def test_prefetch_through_ffmpeg_hls_names_its_files(streams: Streams) -> None:
    base = "http://edge.test/"
    media = parse_manifest(streams.read(HLS_FMP4.replace("master", "1/index")), base + "hls-fmp4/1/index.m3u8")
    assert isinstance(media, MediaPlaylist)
    planned = plan_prefetch(media, Ref(base + "hls-fmp4/1/seg010.m4s"), 3)
    assert planned == tuple(Ref(base + f"hls-fmp4/1/{name}") for name in (
        "init_1.mp4", "seg011.m4s", "seg012.m4s", "seg013.m4s"))
    for ref in planned:
        target = local_target(ref.url, base)
        assert target is not None and streams.read(target.lstrip("/"))


TTLS = StreamTtls(manifest=300, segment=86400)


def manifest(text: str) -> Changes | None:
    """What the manifest's body says about its changes (as kept with it when stored)."""
    return changes_of(parse_manifest(text.encode(), HERE + "m"))


HLS_HEAD = "#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6,\na.ts\n"
MPD_HEAD = '<MPD type="dynamic" availabilityStartTime="2023-11-14T22:13:20Z"'


@pytest.mark.parametrize("status, what, ttls, lifetime", [
    (200, manifest(HLS_HEAD), TTLS, 3.0),  # live: half the target duration (RFC 8216 section 6.3.4)
    (200, manifest(HLS_HEAD), StreamTtls(), 3.0),  # whatever the operator's defaults
    (200, manifest(HLS_HEAD + "#EXT-X-PLAYLIST-TYPE:EVENT\n"), TTLS, 3.0),
    (200, manifest(HLS_HEAD + "#EXT-X-ENDLIST\n"), TTLS, 300.0),
    (200, manifest(HLS_HEAD + "#EXT-X-ENDLIST\n"), StreamTtls(), None),
    (200, manifest(HLS_HEAD.replace(":6", ":0")), TTLS, 0.0),
    (200, manifest("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\na.m3u8\n"), TTLS, 300.0),
    (200, manifest(MPD_HEAD + ' minimumUpdatePeriod="PT4S"/>'), TTLS, 2.0),  # ISO/IEC 23009-1 section 5.4.1
    (200, manifest(MPD_HEAD + ' minimumUpdatePeriod="PT0S"/>'), TTLS, 0.0),
    (200, manifest(MPD_HEAD + "/>"), TTLS, 300.0),  # no @minimumUpdatePeriod: it does not change
    (200, manifest('<MPD type="static" minimumUpdatePeriod="PT4S"/>'), TTLS, 300.0),
    (206, Kind.SEGMENT, TTLS, 86400.0),
    (203, Kind.SEGMENT, TTLS, 86400.0),
    (200, Kind.SEGMENT, StreamTtls(manifest=300), None),
    (200, Kind.OTHER, TTLS, None),
    (200, Kind.HLS, TTLS, None),  # a playlist not parsed: nothing to go by
    (200, manifest("#EXTM3U\n"), TTLS, None),  # not understood
    (404, manifest(HLS_HEAD), TTLS, None),
    (404, Kind.SEGMENT, TTLS, None),  # a segment not published yet keeps the RFC's rules
])
def test_stream_lifetimes(status: int, what: Changes | Kind | None, ttls: StreamTtls,
                          lifetime: float | None) -> None:
    assert stream_lifetime(status, what, ttls) == lifetime


def test_stream_settings_and_their_bounds() -> None:
    settings = load_settings(environ={"EDGECACHE_PREFETCH_SEGMENTS": "4", "EDGECACHE_MANIFEST_TTL": "0"})
    assert (settings.prefetch_segments, settings.manifest_ttl, settings.segment_ttl) == (4, 0, 86400)
    for name, value, message in (("PREFETCH_SEGMENTS", "65", "'prefetch_segments': must be between 0 and 64"),
                                 ("MANIFEST_TTL", "-1", "'manifest_ttl': must be between 0 and 2147483648"),
                                 ("SEGMENT_TTL", "1d", "'segment_ttl': expected a whole number")):
        with pytest.raises(ConfigError, match=message):
            load_settings(environ={"EDGECACHE_" + name: value})
