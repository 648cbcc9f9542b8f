"""The pure rules behind streams, soft purges and cache tags, as tables: how long manifests and
segments stay fresh (after RFC 9111's own rules), which responses are stored whole to be read
once, how a soft purge ends a stored response's lifetime, and which tags a response has."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cache.segments import MANIFEST_BASE, read_manifest
from proxy.http import cache as hc
from proxy.http import freshness as fr
from proxy.http.headers import format_http_date
from proxy.http.lifetimes import Changes, StreamTtls, changes_of
from proxy.http.manifests import stored_whole, tracks
from proxy.http.prefetch import rendition_of
from proxy.http.streams import MAX_MANIFEST_BYTES, directory
from proxy.http.tags import MAX_TAG_LENGTH, is_tag, response_tags, without_tags
from tests.test_hls import _line as playlist_lines

NOW = 1_800_000_000.0
STREAMS = fr.Policy(streams=StreamTtls(manifest=300, segment=86400))
LM = format_http_date(NOW - 100_000)  # a heuristic of 10,000 s
LIVE, STATIC = Changes(6.0), Changes(None)


def h(**fields: str) -> list[tuple[str, str]]:
    return [(k.replace("_", "-"), v) for k, v in fields.items()]


@pytest.mark.parametrize("path, headers, changes, policy, lifetime", [
    # a manifest, by what its body said when stored (lifetimes.py)
    ("/live/a.m3u8", h(last_modified=LM), LIVE, STREAMS, 3.0),
    ("/live/a.m3u8", h(), LIVE, fr.Policy(), 3.0),  # whatever the operator's defaults
    ("/vod/a.m3u8", h(last_modified=LM), STATIC, STREAMS, 300.0),
    ("/vod/a.m3u8", h(last_modified=LM), STATIC, fr.Policy(), 10_000.0),  # no default: the heuristic
    ("/live/a.mpd", h(), Changes(0.0), STREAMS, 0.0),
    ("/live/a.m3u8", h(last_modified=LM), None, STREAMS, 10_000.0),  # not read when stored: nothing to go by
    # RFC 9111 first, whenever the origin says something (section 4.2.1)
    ("/live/a.m3u8", h(cache_control="max-age=30"), LIVE, STREAMS, 30.0),
    ("/live/a.m3u8", h(cache_control="s-maxage=1, max-age=30"), LIVE, STREAMS, 1.0),
    ("/live/a.m3u8", h(expires=format_http_date(NOW + 50), date=format_http_date(NOW)), LIVE, STREAMS, 50.0),
    ("/live/a.m3u8", h(expires="0"), LIVE, STREAMS, 0.0),
    ("/live/a.m3u8", h(cache_control="public"), LIVE, STREAMS, 3.0),  # public says nothing about freshness
    # a segment, by its name or type
    ("/v/seg1.ts", h(), None, STREAMS, 86400.0),
    ("/v/seg1.m4s?token=1", h(), None, STREAMS, 86400.0),
    ("/v/seg1", h(content_type="video/mp2t"), None, STREAMS, 86400.0),
    ("/v/seg1.ts", h(last_modified=LM), None, fr.Policy(), 10_000.0),
    ("/v/a.mp4", h(last_modified=LM), None, STREAMS, 10_000.0),  # not a segment: the heuristic
    # the operator's default_ttls rules come before the streams' defaults
    ("/v/seg1.ts", h(), None, fr.Policy(default_ttls=(("*.ts", 7),), streams=STREAMS.streams), 7.0),
])
def test_stream_freshness_comes_after_the_origins_word(path: str, headers: list[tuple[str, str]],
                                                      changes: Changes | None, policy: fr.Policy,
                                                      lifetime: float) -> None:
    assert fr.freshness_lifetime(200, headers, path, NOW, policy, changes) == lifetime


def test_a_live_playlist_is_stale_after_half_its_target_duration() -> None:
    playlist = hc.Stored(200, h(etag='"1"'), NOW, NOW, changes=LIVE)
    request = hc.Request("GET", [], "/live/a.m3u8")
    assert hc.decide(request, playlist, hc.Fwd.URI_MISS, NOW + 2.5, STREAMS) == hc.Serve(2.5, 0.5)
    assert hc.decide(request, playlist, hc.Fwd.URI_MISS, NOW + 3.5, STREAMS) == hc.Validate(
        [("If-None-Match", '"1"')], hc.Fwd.STALE, 3.5, -0.5, False, True)


BLOCK = hc.Sent((0, 1023))
WHOLE = hc.Sent(None)
MPD = "application/dash+xml"


@pytest.mark.parametrize("path, sent, status, response, expected", [
    # a manifest is stored from one whole response, so that its body is read once, when stored
    ("/a.m3u8", WHOLE, 200, h(content_length="500", etag='"1"'), hc.StoreBody()),
    ("/a", WHOLE, 200, h(content_length="500", etag='"1"', content_type=MPD), hc.StoreBody()),
    ("/a", BLOCK, 206, h(content_range="bytes 0-499/500", etag='"1"', content_type=MPD), hc.Refetch.WHOLE),
    ("/a.m3u8", WHOLE, 200, h(content_length=str(MAX_MANIFEST_BYTES + 1), etag='"1"'),
     hc.StoreBlocks(MAX_MANIFEST_BYTES + 1, 0, True)),  # too long to be read: in blocks, as any file
    ("/a.ts", BLOCK, 206, h(content_range="bytes 0-499/500", etag='"1"'), hc.StoreBlocks(500, 0, True)),
    ("/a.m3u8", WHOLE, 404, h(content_length="9"), hc.StoreBody()),
])
def test_manifests_are_stored_whole(path: str, sent: hc.Sent, status: int, response: list[tuple[str, str]],
                                    expected: hc.Outcome) -> None:
    assert hc.on_response(hc.Request("GET", [], path), sent, status, response, None, fr.Policy()) == expected


@pytest.mark.parametrize("path, content_type, length, whole", [
    ("/a.m3u8", None, None, True),
    ("/a.M3U8", None, 100, True),
    ("/a.m3u", None, None, True),
    ("/a.mpd", None, MAX_MANIFEST_BYTES, True),
    ("/a.mpd", None, MAX_MANIFEST_BYTES + 1, False),
    ("/a", "application/vnd.apple.mpegurl", 10, True),
    ("/a.m3u8", "text/plain", 10, True),  # by its name, whatever its type
    ("/a.mpd", "application/vnd.apple.mpegurl", 10, True),
    ("/a.ts", None, 10, False),
    ("/a.mp4", None, 10, False),
])
def test_stored_whole(path: str, content_type: str | None, length: int | None, whole: bool) -> None:
    assert stored_whole(path, content_type, length) is whole


SWR = "max-age=100, stale-while-revalidate=30"


@pytest.mark.parametrize("cache_control, age_at_purge, since_purge, lifetime, expected", [
    # marked stale at a soft purge: stale from then on, its stale windows counting from then
    ("max-age=100", 40, 0, 40, "validate"),
    ("max-age=100", 40, 5, 40, "validate"),
    (SWR, 40, 29, 40, "stale"),
    (SWR, 40, 31, 40, "validate"),
    (SWR, 95, 29, 95, "stale"),  # its own lifetime would have ended 5 s after the purge: the purge counts
    ("max-age=10, stale-while-revalidate=30", 60, 0, 10, "validate"),  # stale past its window already: as it was
])
def test_a_soft_purge_ends_the_lifetime(cache_control: str, age_at_purge: float, since_purge: float,
                                        lifetime: float, expected: str) -> None:
    purge = NOW + age_at_purge
    marked = hc.Stored(200, h(cache_control=cache_control, etag='"1"'), NOW, NOW, stale_at=purge)
    assert marked.freshness("/a.mp4", fr.Policy())[0] == lifetime
    action = hc.decide(hc.Request("GET", [], "/a.mp4"), marked, hc.Fwd.URI_MISS, purge + since_purge, fr.Policy())
    kind = "stale" if isinstance(action, hc.Serve) and action.stale else type(action).__name__.lower()
    assert kind == expected


def test_after_a_soft_purge_the_origin_down_still_serves_stale() -> None:
    marked = hc.Stored(200, h(cache_control="max-age=3600", etag='"1"'), NOW, NOW, stale_at=NOW + 10)
    action = hc.decide(hc.Request("GET", [], "/a.mp4"), marked, hc.Fwd.URI_MISS, NOW + 20, fr.Policy())
    assert isinstance(action, hc.Validate) and action.stale_if_unreachable and not action.stale_if_error
    assert hc.on_failure(hc.Sent(None, stale_if_unreachable=True), marked) == hc.ServeStale(None)


@pytest.mark.parametrize("headers, limit, tags", [
    (h(surrogate_key="a b  c"), 64, ("a", "b", "c")),
    (h(cache_tag="a, b,c ,d"), 64, ("a", "b", "c", "d")),
    (h(surrogate_key="x y", cache_tag="y,z"), 64, ("x", "y", "z")),  # each once, in order
    ([("Surrogate-Key", "x"), ("SURROGATE-KEY", "w x")], 64, ("x", "w")),  # every line, any case
    (h(surrogate_key="a b c"), 2, ("a", "b")),  # at most `limit`
    (h(surrogate_key="a b c"), 0, ()),
    (h(cache_tag="a,,b,"), 64, ("a", "b")),
    (h(surrogate_key="Video video"), 64, ("Video", "video")),  # exact: case counts
    (h(surrogate_key="ok caf\u00e9 a\x01b " + "l" * (MAX_TAG_LENGTH + 1)), 64, ("ok",)),  # not tags: skipped
    (h(surrogate_key="a,b c"), 64, ("c",)),  # a comma is a separator of Cache-Tag: never in a tag
    (h(x_tag="a"), 64, ()),
])
def test_response_tags(headers: list[tuple[str, str]], limit: int, tags: tuple[str, ...]) -> None:
    assert response_tags(headers, limit) == tags


_TAGS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=","), min_size=1,
                max_size=12)


@settings(deadline=None)  # hypothesis's deadline is a wall-clock limit: none in unit tests
@given(st.lists(_TAGS, max_size=20), st.lists(_TAGS, max_size=20), st.integers(0, 30))
def test_tags_are_read_back_as_written(keys: list[str], tags: list[str], limit: int) -> None:
    headers = [("Surrogate-Key", " ".join(keys)), ("Content-Type", "video/mp4"), ("Cache-Tag", ", ".join(tags))]
    assert response_tags(headers, limit) == tuple(dict.fromkeys([*keys, *tags]))[:limit]
    assert all(is_tag(tag) for tag in response_tags(headers, limit))
    assert without_tags(headers) == [("Content-Type", "video/mp4")]


@pytest.mark.parametrize("text, tag", [
    ("video-1", True), ("a" * MAX_TAG_LENGTH, True), ("a" * (MAX_TAG_LENGTH + 1), False), ("", False),
    ("a b", False), ("a,b", False), ("a\nb", False), ("caf\u00e9", False),
])
def test_is_tag(text: str, tag: bool) -> None:
    assert is_tag(text) is tag


_EXPLICIT = st.sampled_from(["max-age=0", "max-age=7", "s-maxage=30", "max-age=100, stale-while-revalidate=5",
                             "no-cache, max-age=5", "public, max-age=9"])
_WHAT = st.sampled_from([("/a.m3u8", LIVE), ("/a.m3u8", STATIC), ("/a.mpd", Changes(0.0)), ("/s.ts", None),
                         ("/s.m4s?x=1", None), ("/a.mp4", None)])


@settings(deadline=None)
@given(_EXPLICIT, st.integers(-100, 100) | st.none(), _WHAT, st.integers(0, 10**6), st.integers(0, 10**6))
def test_what_the_origin_says_comes_first(cache_control: str, expires_in: int | None,
                                          what: tuple[str, Changes | None], manifest_ttl: int,
                                          segment_ttl: int) -> None:
    """RFC 9111 section 4.2.1: an explicit lifetime is the lifetime, whatever the stream rules."""
    path, changes = what
    headers = h(cache_control=cache_control, date=format_http_date(NOW))
    if expires_in is not None:
        headers.append(("Expires", format_http_date(NOW + expires_in)))
    streams = fr.Policy(streams=StreamTtls(manifest_ttl, segment_ttl))
    assert fr.freshness_lifetime(200, headers, path, NOW, streams, changes) == \
        fr.freshness_lifetime(200, headers, path, NOW, fr.Policy(), None)


@settings(deadline=None)
@given(st.lists(playlist_lines, max_size=40), st.binary(max_size=300))
def test_reading_any_manifest_never_raises(lines: list[str], tail: bytes) -> None:
    """What the driver does with a body it stores as a manifest (segments.read_manifest) never
    raises: a bad manifest is relayed and stored as it is, only not understood."""
    for body in (("#EXTM3U\n" + "\n".join(lines)).encode(), b"#EXTM3U\n" + tail, b"<MPD>" + tail):
        parsed = read_manifest(body, MANIFEST_BASE + "/v/index.m3u8")
        if parsed is None:
            continue
        assert changes_of(parsed.manifest) is not None
        for track in tracks(parsed.manifest):  # a segment it lists is found by its directory, then located
            for index in list(track.available(None))[:5]:
                ref = track.segment(index).ref
                assert directory(ref.url) in parsed.folders and rendition_of(parsed.manifest, ref) is not None
