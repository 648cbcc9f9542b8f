"""--renditions as tables: its syntax, what it picks, and what a manifest leads warm to."""
from __future__ import annotations

import pytest

from proxy.http.hls import MasterPlaylist, Media, MediaPlaylist, Variant
from proxy.http.mpd import Mpd, parse_mpd
from proxy.http.streams import Ref, Segment
from proxy.ops.renditions import ALL, Choice, Expansion, Selection, expand, files_of, parse_selection

CHOICES = [Choice(800_000, 854, 480), Choice(3_000_000, 1920, 1080), Choice(1_500_000, 1280, 720),
           Choice(300_000), Choice(3_000_000, 1920, 1080)]


@pytest.mark.parametrize("text, picked", [
    ("all", [0, 1, 2, 3, 4]),
    ("ALL", [0, 1, 2, 3, 4]),
    ("best", [1]),  # the first of the highest
    ("lowest", [3]),
    ("0,2", [0, 2]),
    ("2, 0", [0, 2]),  # in the manifest's order
    ("9", []),
    ("720p", [2]),
    ("720p,1080P", [1, 2, 4]),
    ("1280x720", [2]),
    ("854x720", []),
    ("<=1.5M", [0, 2, 3]),
    (">=1500k", [1, 2, 4]),
    ("<=300000", [3]),
    (">=3g", []),
    ("lowest,best", [1, 3]),
])
def test_what_a_selection_picks(text: str, picked: list[int]) -> None:
    assert parse_selection(text).pick(CHOICES) == picked


@pytest.mark.parametrize("text", ["", "all,best", "high", "720i", "<3M", "<=3T", "x720", "1280x", "-1", "0,,1"])
def test_what_a_selection_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not one of all, best, lowest"):
        parse_selection(text)


def test_all_is_everything() -> None:
    assert parse_selection("all") == ALL == Selection() and ALL.everything and ALL.pick([]) == []


HERE = "http://edge.test/v/"
MASTER = MasterPlaylist(
    HERE + "master.m3u8",
    (Variant(HERE + "hi.m3u8", 3_000_000, (1920, 1080), None, (("AUDIO", "aac"), ("SUBTITLES", "subs"))),
     Variant(HERE + "lo.m3u8", 500_000, (640, 360), None, (("AUDIO", "low"),)),
     Variant(HERE + "hi-again.m3u8", 3_000_000, (1920, 1080), None, (("AUDIO", "aac"),))),
    (Variant(HERE + "iframes.m3u8", 90_000),),
    (Media(HERE + "aac-en.m3u8", "AUDIO", "aac"), Media(HERE + "aac-fr.m3u8", "AUDIO", "aac"),
     Media(HERE + "low.m3u8", "AUDIO", "low"), Media(HERE + "subs.m3u8", "SUBTITLES", "subs"),
     Media(HERE + "alt.m3u8", "VIDEO", "angles")))


@pytest.mark.parametrize("text, playlists, matched", [
    ("all", ["hi", "lo", "hi-again", "aac-en", "aac-fr", "low", "subs", "alt", "iframes"], True),
    ("best", ["hi", "aac-en", "aac-fr", "subs"], True),  # with the renditions of its groups
    ("lowest", ["lo", "low"], True),
    ("1080p", ["hi", "hi-again", "aac-en", "aac-fr", "subs"], True),
    ("2160p", [], False),
])
def test_a_master_playlist_leads_to_the_chosen_variants_and_their_groups(text: str, playlists: list[str],
                                                                          matched: bool) -> None:
    assert expand(MASTER, parse_selection(text)) == Expansion(tuple(HERE + p + ".m3u8" for p in playlists),
                                                              matched=matched)


MPD = parse_mpd(b"""<MPD type="static" mediaPresentationDuration="PT4S">
<Period id="one" duration="PT2S"><AdaptationSet contentType="video">
  <SegmentTemplate media="$RepresentationID$-$Number$.m4s" initialization="$RepresentationID$.mp4" duration="1"/>
  <Representation id="v1" bandwidth="100" height="240"/><Representation id="v2" bandwidth="900" height="720"/>
</AdaptationSet><AdaptationSet contentType="audio">
  <SegmentTemplate media="$RepresentationID$-$Number$.m4s" duration="1"/>
  <Representation id="a1" bandwidth="64"/><Representation id="a2" bandwidth="128"/>
</AdaptationSet></Period>
<Period id="two"><AdaptationSet contentType="audio">
  <SegmentTemplate media="$RepresentationID$-$Number$.m4s" duration="1"/>
  <Representation id="b1" bandwidth="64"/><Representation id="b2" bandwidth="128"/>
</AdaptationSet></Period></MPD>""", HERE + "s.mpd")


@pytest.mark.parametrize("text, ids, matched", [
    ("all", ["v1", "v2", "a1", "a2", "b1", "b2"], True),
    ("best", ["v2", "a1", "a2", "b2"], True),  # a Period without video chooses among the rest
    ("240p", ["v1", "a1", "a2"], False),  # the second Period has nothing at 240p
    ("0", ["v1", "a1", "a2", "b1"], True),
])
def test_an_mpd_leads_to_the_chosen_representations_and_what_plays_with_them(text: str, ids: list[str],
                                                                            matched: bool) -> None:
    assert isinstance(MPD, Mpd)
    expansion = expand(MPD, parse_selection(text))
    assert [t.key.rpartition("=")[2] for t in expansion.tracks] == ids
    assert expansion.playlists == () and expansion.matched is matched


def test_a_tracks_files_put_each_initialization_section_first() -> None:
    media = MediaPlaylist(HERE + "m.m3u8", 2, (
        Segment(Ref(HERE + "a.mp4", (100, 199)), 2, 0, Ref(HERE + "a.mp4", (0, 99))),
        Segment(Ref(HERE + "a.mp4", (200, 299)), 2, 1, Ref(HERE + "a.mp4", (0, 99))),
        Segment(Ref(HERE + "b.m4s"), 2, 2, Ref(HERE + "b-init.mp4")),
        Segment(Ref(HERE + "c.ts"), 2, 3)))
    assert expand(media, ALL) == Expansion(tracks=(media,))
    assert files_of(media, None) == (Ref(HERE + "a.mp4", (0, 99)), Ref(HERE + "a.mp4", (100, 199)),
                                     Ref(HERE + "a.mp4", (200, 299)), Ref(HERE + "b-init.mp4"), Ref(HERE + "b.m4s"),
                                     Ref(HERE + "c.ts"))
    assert isinstance(MPD, Mpd)
    assert files_of(MPD.representations()[0], None) == (Ref(HERE + "v1.mp4"), Ref(HERE + "v1-1.m4s"),
                                                        Ref(HERE + "v1-2.m4s"))
