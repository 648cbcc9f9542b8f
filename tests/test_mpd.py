"""DASH MPDs (ISO/IEC 23009-1) as tables, and with hypothesis: random documents never raise,
and timelines and templates give back the segments they describe."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.dashsegments import Listed, Opaque, Template
from proxy.http.mpd import Mpd, Representation, parse_mpd
from proxy.http.streams import MAX_MANIFEST_BYTES, MAX_SEGMENTS, Located, NotUnderstood, Ref, Segment

URL = "http://edge.test/v/stream.mpd"
HERE = "http://edge.test/v/"
AST = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def document(periods: str, **attributes: str) -> str:
    attrs = {"type": "static", "mediaPresentationDuration": "PT10S", **attributes}
    text = " ".join(f'{name}="{value}"' for name, value in attrs.items())
    return f'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" {text}>{periods}</MPD>'


def one(rep: str, adaptation: str = "", period: str = "", **attributes: str) -> str:
    """An MPD of one Period, AdaptationSet and the Representation(s) given."""
    return document(f'<Period id="p">{period}<AdaptationSet contentType="video">{adaptation}{rep}'
                    "</AdaptationSet></Period>", **attributes)


def parse(text: str) -> Mpd:
    mpd = parse_mpd(text.encode(), URL)
    assert isinstance(mpd, Mpd), mpd
    return mpd


def rep_of(text: str, index: int = 0) -> Representation:
    return parse(text).representations()[index]


def urls(rep: Representation, now: float | None = None) -> list[str]:
    return [rep.segment(i).ref.url for i in rep.available(now)]


def test_base_urls_at_every_level() -> None:
    mpd = parse(document(
        "<BaseURL>http://cdn.test/root/</BaseURL><Period><BaseURL>p1/</BaseURL>"
        "<AdaptationSet><BaseURL>video/</BaseURL>"
        '<Representation id="r" bandwidth="1"><BaseURL>r1/</BaseURL>'
        '<SegmentTemplate media="s$Number$.m4s" initialization="i.mp4" duration="5"/></Representation>'
        '<Representation id="abs" bandwidth="1"><BaseURL>https://other.test/x/</BaseURL>'
        '<SegmentTemplate media="s$Number$.m4s" duration="5"/></Representation>'
        '<Representation id="up" bandwidth="1"><BaseURL>../../up/</BaseURL>'
        '<SegmentTemplate media="s$Number$.m4s" duration="5"/></Representation>'
        "</AdaptationSet></Period>"))
    here, there, up = mpd.representations()
    assert urls(here) == ["http://cdn.test/root/p1/video/r1/s1.m4s", "http://cdn.test/root/p1/video/r1/s2.m4s"]
    assert here.segment(0).init == Ref("http://cdn.test/root/p1/video/r1/i.mp4")
    assert urls(there) == ["https://other.test/x/s1.m4s", "https://other.test/x/s2.m4s"]
    assert urls(up) == ["http://cdn.test/root/up/s1.m4s", "http://cdn.test/root/up/s2.m4s"]


@pytest.mark.parametrize("media, first", [
    ("$RepresentationID$/$Bandwidth$/$Number$.m4s", "v1/250000/1.m4s"),
    ("$Number%05d$.m4s", "00001.m4s"),
    ("b$Bandwidth%08d$-$Number%03d$.m4s", "b00250000-001.m4s"),
    ("cost$$-$Number$.m4s", "cost$-1.m4s"),
    ("seg.m4s?n=$Number$&amp;r=$RepresentationID$", "seg.m4s?n=1&r=v1"),
])
def test_template_identifiers(media: str, first: str) -> None:
    rep = rep_of(one(f'<Representation id="v1" bandwidth="250000"><SegmentTemplate media="{media}" '
                     'duration="2" timescale="1"/></Representation>'))
    assert rep.segment(0).ref.url == HERE + first
    assert rep.locate(Ref(HERE + first)) == Located(0)


def test_start_number_and_a_count_from_the_presentation_duration() -> None:
    rep = rep_of(one('<Representation id="v" bandwidth="1"><SegmentTemplate media="$Number$.m4s" startNumber="0" '
                     'timescale="1000" duration="2000"/></Representation>', mediaPresentationDuration="PT10.5S"))
    assert urls(rep) == [HERE + f"{n}.m4s" for n in range(6)]  # ceil(10.5 / 2)
    assert rep.segment(5) == Segment(Ref(HERE + "5.m4s"), 2.0, 5, None)


def test_a_timeline_with_time_and_repeats() -> None:
    rep = rep_of(one('<Representation id="v" bandwidth="1"><SegmentTemplate media="t$Time$.m4s" timescale="10">'
                     '<SegmentTimeline><S t="5" d="20" r="1"/><S d="10"/><S t="100" d="30" r="-1"/>'
                     '<S t="200" d="5" r="-1"/></SegmentTimeline></SegmentTemplate></Representation>',
                     mediaPresentationDuration="PT21S"))
    # 5, 25; 45; a gap; 100, 130, 160, 190 (until the next @t); 200 ... 205 (the Period ends at 210)
    assert urls(rep) == [HERE + f"t{t}.m4s" for t in (5, 25, 45, 100, 130, 160, 190, 200, 205)]
    assert [rep.segment(i).duration for i in (0, 2, 3, 8)] == [2.0, 1.0, 3.0, 0.5]
    assert rep.locate(Ref(HERE + "t160.m4s")) == Located(5)
    assert rep.locate(Ref(HERE + "t161.m4s")) is None  # not on the timeline
    assert rep.locate(Ref(HERE + "t65.m4s")) is None  # in the gap


def test_a_template_inherits_from_the_adaptation_set_and_the_period() -> None:
    text = one('<Representation id="a" bandwidth="1"/>'
               '<Representation id="b" bandwidth="2"><SegmentTemplate startNumber="10"/></Representation>',
               adaptation='<SegmentTemplate media="$RepresentationID$-$Number$.m4s" '
                          'initialization="$RepresentationID$.mp4">'
                          '<SegmentTimeline><S d="5" r="1"/></SegmentTimeline></SegmentTemplate>',
               period='<SegmentTemplate timescale="5"/>')
    a, b = parse(text).representations()
    assert urls(a) == [HERE + "a-1.m4s", HERE + "a-2.m4s"] and a.segment(0).init == Ref(HERE + "a.mp4")
    assert urls(b) == [HERE + "b-10.m4s", HERE + "b-11.m4s"] and b.segment(1).duration == 1.0


def test_dynamic_number_template_follows_the_clock() -> None:
    rep = rep_of(one('<Representation id="v" bandwidth="1"><SegmentTemplate media="$Number$.m4s" duration="2"/>'
                     '</Representation>', type="dynamic", availabilityStartTime="2023-11-14T22:13:20Z",
                     mediaPresentationDuration="PT0S", timeShiftBufferDepth="PT4S"))
    assert rep.live and rep.timing.period_duration == 0.0
    rep = rep_of(one('<Representation id="v" bandwidth="1"><SegmentTemplate media="$Number$.m4s" duration="2"/>'
                     '</Representation>', type="dynamic", availabilityStartTime="2023-11-14T22:13:20Z",
                     timeShiftBufferDepth="PT4S").replace(' mediaPresentationDuration="PT10S"', ""))
    assert rep.available(AST + 10.5) == range(3, 5)  # ended by 10.5 s: 0-4; still in the 4 s buffer: 3, 4
    assert rep.available(AST - 5) == range(0)
    assert rep.available(None) == range(0)  # without a clock, nothing is known to be there
    assert rep.available(AST + 10**9).stop == 5 * 10**8


def test_dynamic_timeline_repeats_until_the_live_edge() -> None:
    rep = rep_of(one('<Representation id="v" bandwidth="1"><SegmentTemplate media="$Time$.m4s">'
                     '<SegmentTimeline><S t="0" d="3"/><S d="2" r="-1"/></SegmentTimeline></SegmentTemplate>'
                     '</Representation>', type="dynamic", availabilityStartTime="2023-11-14T22:13:20",
                     minimumUpdatePeriod="PT2S").replace(' mediaPresentationDuration="PT10S"', ""))
    assert urls(rep, AST + 9.9) == [HERE + f"{t}.m4s" for t in (0, 3, 5, 7)]  # 9 is still being made
    assert urls(rep, AST + 2) == []
    assert urls(rep) == [HERE + "0.m4s"]  # the open run counts only with a clock
    assert rep.locate(Ref(HERE + "1003.m4s")) == Located(501)
    assert parse(one("", type="dynamic", availabilityStartTime="2023-11-14T22:13:20",
                     minimumUpdatePeriod="PT2S")).minimum_update_period == 2.0


def test_segment_lists_segment_bases_and_base_urls() -> None:
    listed = rep_of(one('<Representation id="v" bandwidth="1"><BaseURL>all.mp4</BaseURL>'
                        '<SegmentList timescale="10" duration="20" startNumber="3">'
                        '<Initialization sourceURL="init.mp4" range="0-99"/>'
                        '<SegmentURL mediaRange="100-199"/><SegmentURL media="b.m4s"/></SegmentList>'
                        "</Representation>"))
    init = Ref(HERE + "init.mp4", (0, 99))
    assert isinstance(listed.addressing, Listed)
    assert [listed.segment(i) for i in listed.available(None)] == [
        Segment(Ref(HERE + "all.mp4", (100, 199)), 2.0, 3, init), Segment(Ref(HERE + "b.m4s"), 2.0, 4, init)]
    assert listed.locate(Ref(HERE + "all.mp4", (150, 160))) == Located(0)
    assert listed.locate(Ref(HERE + "init.mp4")) == Located(0, init=True)
    based = rep_of(one('<Representation id="v" bandwidth="1"><BaseURL>whole.mp4</BaseURL>'
                       '<SegmentBase indexRange="800-900"><Initialization range="0-799"/></SegmentBase>'
                       "</Representation>"))
    assert based.addressing == Listed((Segment(Ref(HERE + "whole.mp4"), 10.0, 1, Ref(HERE + "whole.mp4", (0, 799))),))
    bare = rep_of(one('<Representation id="v" bandwidth="1"><BaseURL>whole.mp4</BaseURL></Representation>'))
    assert bare.addressing == Listed((Segment(Ref(HERE + "whole.mp4"), 10.0, 1),))


@pytest.mark.parametrize("rep, reason", [
    ('<SegmentTemplate media="$Number$-$SubNumber$.m4s" duration="1"/>', "'$SubNumber$' is not supported"),
    ('<SegmentTemplate media="$Frame$.m4s" duration="1"/>', "a '$' that starts no identifier"),
    ('<SegmentTemplate media="$Number.m4s" duration="1"/>', "a '$' that starts no identifier"),
    ('<SegmentTemplate media="$RepresentationID%02d$-$Number$.m4s" duration="1"/>', "is not supported"),
    ('<SegmentTemplate media="$Time$.m4s" duration="1"/>', "$Time$ without a SegmentTimeline"),
    ('<SegmentTemplate media="$Time$-$Number$.m4s"><SegmentTimeline><S d="1"/></SegmentTimeline>'
     "</SegmentTemplate>", "either $Number$ or $Time$"),
    ('<SegmentTemplate media="fixed.m4s" duration="1"/>', "either $Number$ or $Time$"),
    ('<SegmentTemplate duration="1"/>', "without @media"),
    ('<SegmentTemplate media="$Number$.m4s"/>', "neither a SegmentTimeline nor a @duration"),
    ('<SegmentTemplate media="$Number$.m4s" initialization="$Number$.mp4" duration="1"/>', "names $Number$"),
    ('<SegmentTemplate media="$Number$.m4s" timescale="x" duration="1"/>', "'x' is not an unsigned integer"),
    ('<SegmentTemplate media="$Number$.m4s"><SegmentTimeline><S d="0"/></SegmentTimeline></SegmentTemplate>',
     "without a positive @d"),
    ('<SegmentTemplate media="$Number$.m4s"><SegmentTimeline><S d="1" r="-1"/><S d="1"/></SegmentTimeline>'
     "</SegmentTemplate>", "S@r=-1 with no next S@t"),
    ('<SegmentList><SegmentURL media="a.m4s" mediaRange="9-1"/></SegmentList>', "not a byte range"),
    ("", "no segment addressing and no BaseURL"),
])
def test_representations_whose_segments_cannot_be_listed_say_why(rep: str, reason: str) -> None:
    found = rep_of(one(f'<Representation id="v" bandwidth="1">{rep}</Representation>'))
    assert isinstance(found.addressing, Opaque) and reason in found.addressing.reason, found.addressing
    assert found.available(None) == range(0) and found.locate(Ref(HERE + "1.m4s")) is None
    assert found.directories() == frozenset()
    with pytest.raises(IndexError):
        found.segment(0)


def test_a_static_period_of_unknown_length_cannot_be_counted() -> None:
    text = one('<Representation id="v" bandwidth="1"><SegmentTemplate media="$Number$.m4s" duration="1"/>'
               "</Representation>").replace(' mediaPresentationDuration="PT10S"', "")
    addressing = rep_of(text).addressing
    assert isinstance(addressing, Opaque) and "unknown duration" in addressing.reason


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><MPD>&lol2;</MPD>')


@pytest.mark.parametrize("text, reason", [
    (BILLION_LAUGHS, "DOCTYPE or ENTITY declaration"),
    ('<?xml version="1.0"?><!doctype MPD SYSTEM "http://evil.test/x.dtd"><MPD/>', "DOCTYPE or ENTITY"),
    ("<MPD><Period>", "not well-formed XML"),
    ("<MPD>&lol;</MPD>", "not well-formed XML"),
    ("<Playlist/>", "the root element is not MPD"),
    (document("", type="live"), "neither static nor dynamic"),
    (document("", type="dynamic"), "without @availabilityStartTime"),
    (document("", type="dynamic", availabilityStartTime="yesterday"), "not an xs:dateTime"),
    (document("", mediaPresentationDuration="P1Y"), "years or months"),
    (document("", mediaPresentationDuration="PT"), "not an xs:duration"),
    (document("", mediaPresentationDuration="-PT1S"), "not an xs:duration"),
    (one('<Representation bandwidth="1"/>'), "without @id or @bandwidth"),
    (one('<Representation id="v"/>'), "without @id or @bandwidth"),
    (document('<Period start="PT5S"/><Period start="PT1S"/>'), "ends before it starts"),
    (document('<Period id="a"/><Period id="b"/>').replace(' mediaPresentationDuration="PT10S"', ""),
     "follows one whose end is unknown"),
])
def test_mpds_not_understood_say_why(text: str, reason: str) -> None:
    outcome = parse_mpd(text.encode(), URL)
    assert isinstance(outcome, NotUnderstood) and reason in outcome.reason, outcome


def test_not_utf8_and_too_large_are_not_understood() -> None:
    assert parse_mpd(document("").encode("utf-16"), URL) == NotUnderstood("not UTF-8")
    assert parse_mpd(b"<MPD>" + b" " * MAX_MANIFEST_BYTES + b"</MPD>", URL) == \
        NotUnderstood(f"larger than {MAX_MANIFEST_BYTES} bytes")


def test_periods_follow_one_another() -> None:
    mpd = parse(document('<Period id="a" duration="PT4S"/><Period id="b"/><Period id="c" start="PT7.5S"/>'
                         '<Period id="d" start="PT9S"/>'))
    assert [(p.id, p.start, p.duration) for p in mpd.periods] == [
        ("a", 0.0, 4.0), ("b", 4.0, 3.5), ("c", 7.5, 1.5), ("d", 9.0, 1.0)]


def test_representations_of_every_period_with_their_keys_and_sizes() -> None:
    text = document("".join(
        f'<Period id="{p}" duration="PT5S"><AdaptationSet mimeType="video/mp4" width="640" height="360">'
        '<SegmentTemplate media="$RepresentationID$/$Number$.m4s" duration="5"/>'
        f'<Representation id="lo" bandwidth="100"/><Representation id="hi" bandwidth="900" width="1280" '
        'height="720"/></AdaptationSet><AdaptationSet><Representation id="en" bandwidth="64" '
        'mimeType="audio/mp4"><SegmentTemplate media="en/$Number$.m4s" duration="5"/></Representation>'
        "</AdaptationSet></Period>" for p in ("one", "two")))
    reps = parse(text).representations()
    assert [(r.period_id, r.id, r.content_type, r.width, r.height) for r in reps] == [
        (p, i, c, w, h) for p in ("one", "two")
        for i, c, w, h in (("lo", "video", 640, 360), ("hi", "video", 1280, 720), ("en", "audio", None, None))]
    assert reps[4].key == URL + "#period=two&representation=hi"
    assert reps[4].available(None) == range(1) and reps[4].timing.period_start == 5.0


def test_templates_are_located_exactly() -> None:
    rep = rep_of(one('<Representation id="v" bandwidth="1"><SegmentTemplate media="c-$Number%05d$.m4s" '
                     'initialization="init.mp4" startNumber="3" duration="1"/></Representation>'))
    assert rep.locate(Ref(HERE + "c-00005.m4s")) == Located(2)
    assert rep.locate(Ref(HERE + "c-00005.m4s", (10, 20))) == Located(2)  # a range of it
    assert rep.locate(Ref(HERE + "c-5.m4s")) is None  # not the width the template writes
    assert rep.locate(Ref(HERE + "c-00002.m4s")) is None  # before startNumber
    assert rep.locate(Ref(HERE + "init.mp4")) == Located(0, init=True)
    assert rep.locate(Ref(HERE + "d-00005.m4s")) is None
    assert rep.directories() == frozenset({HERE})
    nested = rep_of(one('<Representation id="v" bandwidth="1"><SegmentTemplate media="x/$Number$/seg.m4s" '
                        'initialization="../init/v.mp4" duration="1"/></Representation>'))
    assert nested.directories() == frozenset({HERE + "x/", "http://edge.test/init/"})


def test_a_huge_repeat_is_bounded() -> None:
    rep = rep_of(one('<Representation id="v" bandwidth="1"><SegmentTemplate media="$Number$.m4s">'
                     f'<SegmentTimeline><S d="1" r="{10**15}"/></SegmentTimeline></SegmentTemplate>'
                     "</Representation>"))
    window = rep.available(None)
    assert window == range(10**15 + 1 - MAX_SEGMENTS, 10**15 + 1)
    assert rep.segment(window[-1]).ref.url == HERE + f"{10**15 + 1}.m4s"


# --- hypothesis ---------------------------------------------------------------------------

# Each element's usual children, so that random documents reach Representations; sometimes any element.
_CHILDREN = {"Period": ["AdaptationSet", "BaseURL", "SegmentTemplate"],
             "AdaptationSet": ["Representation", "SegmentTemplate", "BaseURL"],
             "Representation": ["SegmentTemplate", "SegmentList", "SegmentBase", "BaseURL"],
             "SegmentTemplate": ["SegmentTimeline", "Initialization"], "SegmentTimeline": ["S"],
             "SegmentList": ["SegmentURL", "Initialization", "SegmentTimeline"], "SegmentBase": ["Initialization"]}
_ELEMENTS = [*_CHILDREN, "S", "SegmentURL", "Initialization", "BaseURL", "MPD"]
_ATTRIBUTES = ["type", "mediaPresentationDuration", "availabilityStartTime", "minimumUpdatePeriod", "start",
               "duration", "id", "bandwidth", "width", "height", "media", "initialization", "timescale",
               "startNumber", "t", "d", "r", "mediaRange", "range", "sourceURL", "contentType",
               "timeShiftBufferDepth", "presentationTimeOffset"]
_values = st.one_of(st.integers(-2, 10**22).map(str), st.sampled_from(
    ["$Number$.m4s", "$Time$", "$Number%05d$", "$RepresentationID$-$Number$", "$$", "$", "PT1S", "P1DT2H",
     "PT0.5S", "static", "dynamic", "2024-01-01T00:00:00Z", "0-99", "a/", "http://x.test/", "-1", "P1Y"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=8))


_NAMES = {name: st.sampled_from(_ELEMENTS) | st.sampled_from(usual) for name, usual in _CHILDREN.items()}
_attribute_maps = st.dictionaries(st.sampled_from(_ATTRIBUTES), _values, max_size=3)
_texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=5)


# What an element mostly needs to mean something, before random attributes that may replace it.
_USUAL = {"Representation": {"id": "r", "bandwidth": "1000"}, "S": {"d": "2"},
          "SegmentTemplate": {"media": "$Number$.m4s", "duration": "1"}, "SegmentURL": {"media": "s.m4s"}}


def _element(draw: st.DrawFn, name: str, depth: int) -> str:
    attrs = {**_USUAL.get(name, {}), **draw(_attribute_maps)}
    text = " ".join(f'{k}="{v.replace("&", "&amp;").replace("<", "&lt;").replace(chr(34), "&quot;")}"'
                    for k, v in attrs.items())
    names = _NAMES.get(name)
    kids = draw(st.lists(names, min_size=1 if depth < 3 else 0, max_size=3)) if names is not None and depth < 5 else []
    inner = "".join(_element(draw, kid, depth + 1) for kid in kids)
    return f"<{name} {text}>{inner or draw(_texts).replace('&', '&amp;').replace('<', '&lt;')}</{name}>"


@st.composite
def periods(draw: st.DrawFn) -> str:
    return _element(draw, "Period", 0)


@settings(deadline=None)  # hypothesis's deadline is a wall-clock limit: none in unit tests
@given(periods(), st.floats(0, 2e9) | st.none())
def test_element_soup_never_raises(body: str, now: float | None) -> None:
    outcome = parse_mpd(f'<MPD type="static" mediaPresentationDuration="PT3S">{body}</MPD>'.encode(), URL)
    assert isinstance(outcome, Mpd | NotUnderstood)
    if isinstance(outcome, Mpd):
        for rep in outcome.representations():
            for i in rep.available(now)[:3]:
                assert rep.locate(rep.segment(i).ref) is not None
            rep.directories()


@settings(deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_never_raise(body: bytes) -> None:
    assert isinstance(parse_mpd(body, URL), Mpd | NotUnderstood)
    assert isinstance(parse_mpd(b"<MPD>" + body, URL), Mpd | NotUnderstood)


_timeline = st.lists(st.tuples(st.none() | st.integers(0, 100), st.integers(1, 50), st.integers(0, 4)),
                     min_size=1, max_size=6)


@settings(deadline=None)
@given(_timeline, st.integers(0, 5), st.integers(1, 1000), st.sampled_from(["Number", "Time"]))
def test_a_timeline_gives_its_segments(entries: list[tuple[int | None, int, int]], start_number: int,
                                       timescale: int, field: str) -> None:
    """Each S of @d repeated @r more times, from @t or where the one before ended (section 5.3.9.6)."""
    expected, time = [], 0
    for t, d, r in entries:
        time = t if t is not None else time
        for _ in range(r + 1):
            expected.append((time, d))
            time += d
    s = "".join(f'<S{"" if t is None else f" t={chr(34)}{t}{chr(34)}"} d="{d}" r="{r}"/>' for t, d, r in entries)
    rep = rep_of(one(f'<Representation id="v" bandwidth="1"><SegmentTemplate media="s-${field}$.m4s" '
                     f'timescale="{timescale}" startNumber="{start_number}"><SegmentTimeline>{s}</SegmentTimeline>'
                     "</SegmentTemplate></Representation>"))
    assert isinstance(rep.addressing, Template)
    assert rep.available(None) == range(len(expected))
    for i, (t, d) in enumerate(expected):
        segment = rep.segment(i)
        assert segment.ref.url == HERE + f"s-{start_number + i if field == 'Number' else t}.m4s"
        assert segment.duration == d / timescale and segment.number == start_number + i
        located = rep.locate(segment.ref)
        # A $Time$ that an earlier segment also has (an @t going back) finds the first of them.
        assert located is not None and expected[located.index][0] == t
        if field == "Number":
            assert located == Located(i)


@settings(deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 9), st.integers(1, 10**5), st.integers(1, 10**4),
       st.integers(0, 10**4))
def test_a_number_template_counts_the_period(start_number: int, width: int, duration: int, timescale: int,
                                            millis: int) -> None:
    rep = rep_of(one(f'<Representation id="v" bandwidth="1"><SegmentTemplate media="$Number%0{width}d$.m4s" '
                     f'startNumber="{start_number}" timescale="{timescale}" duration="{duration}"/>'
                     "</Representation>", mediaPresentationDuration=f"PT{millis // 1000}.{millis % 1000:03d}S"))
    count = -(-millis * timescale // (1000 * duration))  # ceil, exactly
    window = rep.available(None)
    assert window == range(max(0, count - MAX_SEGMENTS), count)
    for i in {window[0], window[-1]} if window else ():
        ref = rep.segment(i).ref
        assert ref.url == HERE + f"{start_number + i:0{width}d}.m4s" and rep.locate(ref) == Located(i)
