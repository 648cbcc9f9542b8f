"""DASH MPDs (ISO/IEC 23009-1): Periods, AdaptationSets and Representations, with the segments
each Representation's SegmentTemplate, SegmentList or SegmentBase names. Pure.

The XML is parsed by xml.etree.ElementTree only after it is known to be bounded, UTF-8 and
free of DOCTYPE and ENTITY declarations (no entity expansion, no external resources). A
malformed MPD is NotUnderstood; a Representation whose segments cannot be listed (an
unknown template identifier, a SegmentTimeline without an end) is kept with an Opaque
addressing that says why.
"""
from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .dashsegments import Addressing, Listed, Malformed, Opaque, Template, Timing, constant_url, runs_of, template
from .streams import MAX_MANIFEST_BYTES, MAX_SEGMENTS, ByteRange, Located, NotUnderstood, Ref, Segment, resolve


@dataclass(frozen=True)
class Representation:
    """One rendition of a DASH presentation (section 5.3.5): a Track."""

    mpd_url: str
    period_id: str
    id: str
    bandwidth: int
    content_type: str  # video, audio, text, ... (AdaptationSet@contentType, else the MIME type's)
    addressing: Addressing
    timing: Timing
    width: int | None = None
    height: int | None = None

    @property
    def key(self) -> str:
        return f"{self.mpd_url}#period={self.period_id}&representation={self.id}"

    @property
    def live(self) -> bool:
        return self.timing.dynamic

    def locate(self, ref: Ref) -> Located | None:
        return self.addressing.locate(ref)

    def available(self, now: float | None) -> range:
        return self.addressing.available(self.timing, now)

    def segment(self, index: int) -> Segment:
        return self.addressing.segment(index)

    def directories(self) -> frozenset[str]:
        return self.addressing.directories()


@dataclass(frozen=True)
class Period:
    id: str
    start: float
    duration: float | None
    representations: tuple[Representation, ...]


@dataclass(frozen=True)
class Mpd:
    url: str
    dynamic: bool  # MPD@type="dynamic" (section 5.3.1.2): segments are still added
    periods: tuple[Period, ...]
    minimum_update_period: float | None = None  # seconds; None: the MPD does not change
    media_presentation_duration: float | None = None

    def representations(self) -> tuple[Representation, ...]:
        return tuple(r for p in self.periods for r in p.representations)


_DECLARATIONS = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def parse_mpd(body: bytes, url: str) -> Mpd | NotUnderstood:
    """An MPD fetched from `url` (its URLs are resolved against it, section 5.6.4)."""
    if len(body) > MAX_MANIFEST_BYTES:
        return NotUnderstood(f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return NotUnderstood("not UTF-8")
    if _DECLARATIONS.search(text):
        return NotUnderstood("a DOCTYPE or ENTITY declaration (refused: entity expansion)")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        return NotUnderstood(f"not well-formed XML: {e}")
    if _local(root.tag) != "MPD":
        return NotUnderstood("the root element is not MPD (ISO/IEC 23009-1 section 5.3.1)")
    try:
        return _mpd(root, url)
    except Malformed as e:
        return NotUnderstood(str(e))


def _mpd(root: ET.Element, url: str) -> Mpd:
    kind = root.get("type", "static")
    if kind not in ("static", "dynamic"):
        raise Malformed(f"MPD@type={kind!r} is neither static nor dynamic (section 5.3.1.2)")
    dynamic = kind == "dynamic"
    presentation = _seconds(root.get("mediaPresentationDuration"), "MPD@mediaPresentationDuration")
    start_text = root.get("availabilityStartTime")
    if dynamic and start_text is None:
        raise Malformed("a dynamic MPD without @availabilityStartTime (section 5.3.1.2)")
    base = _base_url(root, url)
    shift = _seconds(root.get("timeShiftBufferDepth"), "MPD@timeShiftBufferDepth")
    availability = _date_time(start_text) if start_text is not None else None
    elements = _children(root, "Period")
    periods: list[Period] = []
    for i, element in enumerate(elements):
        start = _seconds(element.get("start"), "Period@start")
        if start is None:  # section 5.3.2.1: where the Period before ended, or 0 for the first
            before = periods[-1] if periods else None
            if before is not None and before.duration is None:
                raise Malformed("a Period without @start follows one whose end is unknown (section 5.3.2.1)")
            start = before.start + before.duration if before is not None and before.duration is not None else 0.0
        duration = _seconds(element.get("duration"), "Period@duration")
        if duration is None and i + 1 < len(elements):
            following = _seconds(elements[i + 1].get("start"), "Period@start")
            duration = following - start if following is not None else None
        elif duration is None and presentation is not None:
            duration = presentation - start
        if duration is not None and duration < 0:
            raise Malformed("a Period that ends before it starts (section 5.3.2.1)")
        timing = Timing(dynamic, availability, start, duration, shift)
        periods.append(_period(element, element.get("id", str(i)), timing, _base_url(element, base), url))
    return Mpd(url, dynamic, tuple(periods), _seconds(root.get("minimumUpdatePeriod"), "MPD@minimumUpdatePeriod"),
               presentation)


def _period(element: ET.Element, period_id: str, timing: Timing, base: str, url: str) -> Period:
    representations: list[Representation] = []
    for adaptation in _children(element, "AdaptationSet"):
        set_base = _base_url(adaptation, base)
        for rep in _children(adaptation, "Representation"):
            rep_id = rep.get("id")
            bandwidth = _integer(rep.get("bandwidth"), "Representation@bandwidth")
            if rep_id is None or bandwidth is None:
                raise Malformed("a Representation without @id or @bandwidth (section 5.3.5.2)")
            content = (adaptation.get("contentType") or adaptation.get("mimeType") or rep.get("mimeType") or "")
            levels = (element, adaptation, rep)
            addressing = _addressing(levels, _base_url(rep, set_base), rep_id, bandwidth, timing, url)
            width = _integer(rep.get("width") or adaptation.get("width"), "@width")
            height = _integer(rep.get("height") or adaptation.get("height"), "@height")
            representations.append(Representation(url, period_id, rep_id, bandwidth, content.partition("/")[0],
                                                   addressing, timing, width, height))
    return Period(period_id, timing.period_start, timing.period_duration, tuple(representations))


_ADDRESSING = ("SegmentTemplate", "SegmentList", "SegmentBase")


def _addressing(levels: tuple[ET.Element, ...], base: str, rep_id: str, bandwidth: int, timing: Timing,
                mpd_url: str) -> Addressing:
    """The segment addressing of the lowest level that has one, with the attributes and
    elements it inherits from the levels above (section 5.3.9.1); without any, the
    Representation's BaseURL is its one segment (section 5.3.9.2)."""
    kind = next((k for level in reversed(levels) for k in _ADDRESSING if _child(level, k) is not None), None)
    found = [e for level in levels if (e := _child(level, kind)) is not None] if kind else []
    try:
        if kind == "SegmentTemplate":
            return _template(found, base, rep_id, bandwidth, timing)
        if kind == "SegmentList":
            return _list(found, base)
        if base == mpd_url:
            return Opaque("no segment addressing and no BaseURL (section 5.3.9.2)")
        init = _initialization(found, base, rep_id, bandwidth)
        return Listed((Segment(Ref(base), timing.period_duration or 0.0, 1, init),))
    except Malformed as e:
        return Opaque(str(e))


def _merged(found: list[ET.Element]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for element in found:
        attributes.update(element.attrib)
    return attributes


def _lowest_child(found: list[ET.Element], name: str) -> ET.Element | None:
    return next((c for e in reversed(found) if (c := _child(e, name)) is not None), None)


def _template(found: list[ET.Element], base: str, rep_id: str, bandwidth: int, timing: Timing) -> Template:
    attributes = _merged(found)
    media = attributes.get("media")
    if media is None:
        raise Malformed("a SegmentTemplate without @media")
    parts = template(media, rep_id, bandwidth, base)
    fields = {p.name for p in parts if not isinstance(p, str)}
    if len(fields) != 1:
        raise Malformed("a SegmentTemplate@media needs either $Number$ or $Time$ (section 5.3.9.4.4)")
    timescale = _integer(attributes.get("timescale"), "@timescale") or 1
    offset = _integer(attributes.get("presentationTimeOffset"), "@presentationTimeOffset") or 0
    timeline = _lowest_child(found, "SegmentTimeline")
    runs = runs_of(_timeline(timeline), timescale, offset, timing) if timeline is not None else None
    duration = _integer(attributes.get("duration"), "@duration")
    if runs is None and not duration:
        raise Malformed("a SegmentTemplate with neither a SegmentTimeline nor a @duration (section 5.3.9.2)")
    if runs is None and "Time" in fields:
        raise Malformed("$Time$ without a SegmentTimeline (section 5.3.9.4.4)")
    if runs is None and timing.period_duration is None and not timing.dynamic:
        raise Malformed("a static Period of unknown duration: its segments cannot be counted")
    init_text = attributes.get("initialization")
    init = Ref(constant_url(init_text, rep_id, bandwidth, base)) if init_text is not None else \
        _initialization(found, base, rep_id, bandwidth)
    start_number = _integer(attributes.get("startNumber"), "@startNumber")
    return Template(parts, init, timescale, 1 if start_number is None else start_number, duration or 0, runs, offset)


def _timeline(element: ET.Element) -> list[tuple[int | None, int, int]]:
    """A SegmentTimeline's S elements as (@t or None, @d, @r) (section 5.3.9.6)."""
    entries = []
    for s in _children(element, "S"):
        duration = _integer(s.get("d"), "S@d")
        if not duration:
            raise Malformed("an S element without a positive @d (section 5.3.9.6)")
        entries.append((_integer(s.get("t"), "S@t"), duration, _signed(s.get("r", "0"), "S@r")))
    return entries


def _list(found: list[ET.Element], base: str) -> Listed:
    """A SegmentList's SegmentURLs (section 5.3.9.3), timed by its @duration."""
    attributes = _merged(found)
    seconds = (_integer(attributes.get("duration"), "@duration") or 0) / (
        _integer(attributes.get("timescale"), "@timescale") or 1)
    start_number = _integer(attributes.get("startNumber"), "@startNumber")
    urls = next((_children(e, "SegmentURL") for e in reversed(found) if _children(e, "SegmentURL")), [])
    if len(urls) > MAX_SEGMENTS:
        raise Malformed(f"more than {MAX_SEGMENTS} SegmentURL elements")
    init = _initialization(found, base, "", 0)
    return Listed(tuple(
        Segment(Ref(resolve(base, u.get("media", "")), _byte_range(u.get("mediaRange"), "SegmentURL@mediaRange")),
                seconds, (1 if start_number is None else start_number) + i, init)
        for i, u in enumerate(urls)))


def _initialization(found: list[ET.Element], base: str, rep_id: str, bandwidth: int) -> Ref | None:
    """An Initialization element's resource: @sourceURL (else the BaseURL) and @range (section 5.3.9.2.2)."""
    element = _lowest_child(found, "Initialization")
    if element is None:
        return None
    source = element.get("sourceURL")
    url = constant_url(source, rep_id, bandwidth, base) if source else base
    return Ref(url, _byte_range(element.get("range"), "Initialization@range"))


def _base_url(element: ET.Element, base: str) -> str:
    """The element's first BaseURL resolved against the one above it (section 5.6.4)."""
    found = _child(element, "BaseURL")
    return resolve(base, found.text) if found is not None and found.text and found.text.strip() else base


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in element if isinstance(c.tag, str) and _local(c.tag) == name]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    found = _children(element, name)
    return found[0] if found else None


def _integer(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise Malformed(f"{what}={text!r} is not an unsigned integer")
    return int(text)


def _signed(text: str, what: str) -> int:
    negative = text.strip().startswith("-")
    value = _integer(text.strip().removeprefix("-"), what) or 0
    return -value if negative else value


def _byte_range(text: str | None, what: str) -> ByteRange | None:
    """A byte range 'first-last' (section 5.3.9.2.2, RFC 9110's byte-range-spec without the unit)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d{1,18})-(\d{1,18})\s*", text)
    if m is None or int(m[2]) < int(m[1]):
        raise Malformed(f"{what}={text!r} is not a byte range first-last")
    return int(m[1]), int(m[2])


# xs:duration (XML Schema part 2, section 3.2.6), as MPDs use it: PnDTnHnMnS; years and months
# have no fixed length in seconds, and are not understood.
_DURATION = re.compile(r"P(?:(\d{1,12})Y)?(?:(\d{1,12})M)?(?:(\d{1,12})D)?"
                       r"(?:T(?:(\d{1,12})H)?(?:(\d{1,12})M)?(?:(\d{1,12}(?:\.\d{0,12})?)S)?)?")


def _seconds(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    m = _DURATION.fullmatch(text.strip())
    if m is None or text.strip() in ("P", "PT") or text.strip().endswith("T"):
        raise Malformed(f"{what}={text!r} is not an xs:duration")
    if int(m[1] or 0) or int(m[2] or 0):
        raise Malformed(f"{what}={text!r} counts years or months, which have no fixed length")
    days, hours, minutes = (int(g or 0) for g in m.group(3, 4, 5))
    return ((days * 24 + hours) * 60 + minutes) * 60 + float(m[6] or 0)


def _date_time(text: str) -> float:
    """An xs:dateTime as seconds since the epoch (UTC when it names no time zone)."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise Malformed(f"{text!r} is not an xs:dateTime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
