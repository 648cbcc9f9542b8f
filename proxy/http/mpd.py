"""DASH MPDs (ISO/IEC 23009-1): Periods, AdaptationSets and Representations, with the segments
each Representation's SegmentTemplate, SegmentList or SegmentBase names. Pure.

The XML is parsed by xml.etree.ElementTree only after it is known to be bounded, UTF-8 and
free of DOCTYPE and ENTITY declarations (no entity expansion, no external resources). A
malformed MPD is NotUnderstood; a Representation whose segments cannot be listed (an
unknown template identifier, a SegmentTimeline without an end) is kept with an Opaque
addressing that says why.
"""
from __future__ import annotations

import bisect
import datetime
import functools
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .streams import (
    MAX_MANIFEST_BYTES,
    MAX_SEGMENTS,
    ByteRange,
    Located,
    NotUnderstood,
    Ref,
    Segment,
    SegmentIndex,
    directory,
    resolve,
)

_EPSILON = 1e-9  # float seconds compared with segment boundaries


@dataclass(frozen=True)
class Timing:
    """What a Representation's segment availability depends on (section 5.3.9.5)."""

    dynamic: bool
    availability_start: float | None = None  # MPD@availabilityStartTime, seconds since the epoch
    period_start: float = 0.0  # seconds since the presentation started
    period_duration: float | None = None
    time_shift_buffer: float | None = None  # MPD@timeShiftBufferDepth


@dataclass(frozen=True)
class Run:
    """SegmentTimeline S elements expanded (section 5.3.9.6): `count` segments of `duration`,
    from `start` (timescale units), the first of them at index `first`; `count` None: repeated
    until the presentation's live edge (an @r of -1 in a dynamic MPD)."""

    start: int
    duration: int
    count: int | None
    first: int


@dataclass(frozen=True)
class Field:
    """A $Number$ or $Time$ identifier of a template, with its %0<width>d format tag (section 5.3.9.4.4)."""

    name: str
    width: int = 1


@dataclass(frozen=True)
class Template:
    """SegmentTemplate addressing (section 5.3.9.4): URLs made from a resolved template whose
    constant identifiers are already substituted; numbered from `start_number`, timed by a
    SegmentTimeline (`runs`) or by a constant `duration`, in `timescale` units."""

    parts: tuple[str | Field, ...]
    init: Ref | None
    timescale: int
    start_number: int
    duration: int  # without a SegmentTimeline (else 0)
    runs: tuple[Run, ...] | None
    presentation_time_offset: int = 0

    def available(self, timing: Timing, now: float | None) -> range:
        """Static: every segment of the Period. Dynamic, at `now`: those that have ended
        (section 5.3.9.5.3) and are still in the time shift buffer, the newest MAX_SEGMENTS."""
        if self.runs is not None:
            stop = sum(r.count or 0 for r in self.runs)
        elif timing.period_duration is not None:
            stop = math.ceil(timing.period_duration * self.timescale / self.duration - _EPSILON)
        else:
            stop = 0
        start = 0
        if timing.dynamic and now is not None:
            elapsed = now - (timing.availability_start or 0.0) - timing.period_start
            ended = self._ended_by(elapsed)
            stop = ended if self.runs is None and timing.period_duration is None else min(stop, ended)
            if timing.time_shift_buffer is not None:
                start = self._ended_by(elapsed - timing.time_shift_buffer)
        return range(max(start, stop - MAX_SEGMENTS, 0), max(stop, 0))

    def _ended_by(self, elapsed: float) -> int:
        """How many segments have ended `elapsed` seconds into the Period."""
        if self.runs is None:
            return max(0, math.floor(elapsed * self.timescale / self.duration + _EPSILON))
        edge = elapsed * self.timescale + self.presentation_time_offset
        count = 0
        for run in self.runs:
            ended = max(0, math.floor((edge - run.start) / run.duration + _EPSILON))
            if run.count is None or ended < run.count:
                return run.first + ended
            count = run.first + run.count
        return count

    def segment(self, index: int) -> Segment:
        if self.runs is not None:
            run = self.runs[bisect.bisect_right(self._firsts, index) - 1]
            time, duration = run.start + (index - run.first) * run.duration, run.duration
        else:
            duration = self.duration
            time = self.presentation_time_offset + index * duration
        number = self.start_number + index
        return Segment(Ref(self.fill(number, time)), duration / self.timescale, number, self.init)

    def fill(self, number: int, time: int) -> str:
        return "".join(p if isinstance(p, str) else f"{number if p.name == 'Number' else time:0{p.width}d}"
                       for p in self.parts)

    def locate(self, ref: Ref) -> Located | None:
        if self.init is not None and _holds(self.init, ref):
            return Located(0, init=True)
        m = self._pattern.fullmatch(ref.url)
        if m is None:
            return None
        field = next(p for p in self.parts if isinstance(p, Field))
        value = int(m[1])
        index = value - self.start_number if field.name == "Number" else self._time_index(value)
        if index is None or index < 0 or self.fill(self.start_number + index, value) != ref.url:
            return None
        return Located(index)

    def _time_index(self, time: int) -> int | None:
        for run in self.runs or ():
            steps, rest = divmod(time - run.start, run.duration)
            if rest == 0 and steps >= 0 and (run.count is None or steps < run.count):
                return run.first + steps
        return None

    @functools.cached_property
    def _firsts(self) -> list[int]:
        return [r.first for r in self.runs or ()]

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str]:
        """Matches the URLs the template makes, the identifier's digits in group 1 (the first
        identifier; the others, the same one again, are checked by filling the template)."""
        pattern, grouped = "", False
        for p in self.parts:
            if isinstance(p, str):
                pattern += re.escape(p)
            else:
                pattern += r"(\d+)" if not grouped else r"\d+"
                grouped = True
        return re.compile(pattern)

    def directories(self) -> frozenset[str]:
        prefix = ""
        for p in self.parts:
            if not isinstance(p, str):
                break
            prefix += p
        return frozenset([directory(prefix)] + ([directory(self.init.url)] if self.init else []))


@dataclass(frozen=True)
class Listed:
    """Segments named one by one: a SegmentList (section 5.3.9.3), or the one resource of a
    SegmentBase or a BaseURL alone (section 5.3.9.2)."""

    segments: tuple[Segment, ...]

    def available(self, timing: Timing, now: float | None) -> range:
        return range(len(self.segments))

    def segment(self, index: int) -> Segment:
        return self.segments[index]

    def locate(self, ref: Ref) -> Located | None:
        return self._index.locate(ref)

    def directories(self) -> frozenset[str]:
        refs = [s.ref for s in self.segments] + [s.init for s in self.segments if s.init is not None]
        return frozenset(directory(r.url) for r in refs)

    @functools.cached_property
    def _index(self) -> SegmentIndex:
        return SegmentIndex(self.segments)


@dataclass(frozen=True)
class Opaque:
    """A Representation whose segments cannot be listed; `reason` says why."""

    reason: str

    def available(self, timing: Timing, now: float | None) -> range:
        return range(0)

    def segment(self, index: int) -> Segment:
        raise IndexError(f"no segments can be listed: {self.reason}")

    def locate(self, ref: Ref) -> Located | None:
        return None

    def directories(self) -> frozenset[str]:
        return frozenset()


Addressing = Template | Listed | Opaque


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


class _Bad(Exception):
    """A rule broken; becomes NotUnderstood(reason)."""


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
    except _Bad as e:
        return NotUnderstood(str(e))


def _mpd(root: ET.Element, url: str) -> Mpd:
    kind = root.get("type", "static")
    if kind not in ("static", "dynamic"):
        raise _Bad(f"MPD@type={kind!r} is neither static nor dynamic (section 5.3.1.2)")
    dynamic = kind == "dynamic"
    presentation = _seconds(root.get("mediaPresentationDuration"), "MPD@mediaPresentationDuration")
    start_text = root.get("availabilityStartTime")
    if dynamic and start_text is None:
        raise _Bad("a dynamic MPD without @availabilityStartTime (section 5.3.1.2)")
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
                raise _Bad("a Period without @start follows one whose end is unknown (section 5.3.2.1)")
            start = before.start + before.duration if before is not None and before.duration is not None else 0.0
        duration = _seconds(element.get("duration"), "Period@duration")
        if duration is None and i + 1 < len(elements):
            following = _seconds(elements[i + 1].get("start"), "Period@start")
            duration = following - start if following is not None else None
        elif duration is None and presentation is not None:
            duration = presentation - start
        if duration is not None and duration < 0:
            raise _Bad("a Period that ends before it starts (section 5.3.2.1)")
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
                raise _Bad("a Representation without @id or @bandwidth (section 5.3.5.2)")
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
    except _Bad as e:
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
        raise _Bad("a SegmentTemplate without @media")
    parts = _parts(resolve(base, _constants(media, rep_id, bandwidth)))
    fields = {p.name for p in parts if isinstance(p, Field)}
    if len(fields) != 1:
        raise _Bad("a SegmentTemplate@media needs either $Number$ or $Time$ (section 5.3.9.4.4)")
    timescale = _integer(attributes.get("timescale"), "@timescale") or 1
    offset = _integer(attributes.get("presentationTimeOffset"), "@presentationTimeOffset") or 0
    timeline = _lowest_child(found, "SegmentTimeline")
    runs = _runs(timeline, timescale, offset, timing) if timeline is not None else None
    duration = _integer(attributes.get("duration"), "@duration")
    if runs is None and not duration:
        raise _Bad("a SegmentTemplate with neither a SegmentTimeline nor a @duration (section 5.3.9.2)")
    if runs is None and "Time" in fields:
        raise _Bad("$Time$ without a SegmentTimeline (section 5.3.9.4.4)")
    if runs is None and timing.period_duration is None and not timing.dynamic:
        raise _Bad("a static Period of unknown duration: its segments cannot be counted")
    init_text = attributes.get("initialization")
    if init_text is not None:
        init_parts = _parts(resolve(base, _constants(init_text, rep_id, bandwidth)))
        if not all(isinstance(p, str) for p in init_parts):
            raise _Bad("SegmentTemplate@initialization names $Number$ or $Time$ (section 5.3.9.4.4)")
        init: Ref | None = Ref("".join(str(p) for p in init_parts))
    else:
        init = _initialization(found, base, rep_id, bandwidth)
    start_number = _integer(attributes.get("startNumber"), "@startNumber")
    return Template(parts, init, timescale, 1 if start_number is None else start_number, duration or 0, runs, offset)


def _runs(timeline: ET.Element, timescale: int, offset: int, timing: Timing) -> tuple[Run, ...]:
    """A SegmentTimeline's S elements as runs (section 5.3.9.6): @t defaults to where the one
    before ended; a negative @r repeats until the next S's @t, else the end of the Period, else
    (a dynamic MPD) the live edge."""
    elements = _children(timeline, "S")
    end = offset + timing.period_duration * timescale if timing.period_duration is not None else None
    runs: list[Run] = []
    time = first = 0
    for i, s in enumerate(elements):
        t = _integer(s.get("t"), "S@t")
        time = time if t is None else t
        duration = _integer(s.get("d"), "S@d")
        if not duration:
            raise _Bad("an S element without a positive @d (section 5.3.9.6)")
        repeat = _signed(s.get("r", "0"), "S@r")
        count: int | None = repeat + 1
        if repeat < 0:
            following = _integer(elements[i + 1].get("t"), "S@t") if i + 1 < len(elements) else None
            until = following if following is not None else None if i + 1 < len(elements) else end
            if until is None and (i + 1 < len(elements) or not timing.dynamic):
                raise _Bad("S@r=-1 with no next S@t and no Period end (section 5.3.9.6)")
            count = None if until is None else max(0, math.ceil((until - time) / duration - _EPSILON))
        runs.append(Run(time, duration, count, first))
        if count is None:
            break
        time, first = time + count * duration, first + count
    return tuple(runs)


def _list(found: list[ET.Element], base: str) -> Listed:
    """A SegmentList's SegmentURLs (section 5.3.9.3), timed by its @duration."""
    attributes = _merged(found)
    seconds = (_integer(attributes.get("duration"), "@duration") or 0) / (
        _integer(attributes.get("timescale"), "@timescale") or 1)
    start_number = _integer(attributes.get("startNumber"), "@startNumber")
    urls = next((_children(e, "SegmentURL") for e in reversed(found) if _children(e, "SegmentURL")), [])
    if len(urls) > MAX_SEGMENTS:
        raise _Bad(f"more than {MAX_SEGMENTS} SegmentURL elements")
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
    url = resolve(base, _constants(source, rep_id, bandwidth)) if source else base
    return Ref(url, _byte_range(element.get("range"), "Initialization@range"))


# Section 5.3.9.4.4, table 16: $<Identifier>[%0<width>d]$, and $$ for a '$'.
_IDENTIFIER = re.compile(r"\$(?:(RepresentationID|Number|Bandwidth|Time|SubNumber)(?:%0(\d{1,2})d)?)?\$")


def _constants(template: str, rep_id: str, bandwidth: int) -> str:
    """The template with $RepresentationID$ and $Bandwidth$ substituted, the rest kept as is."""
    def one(m: re.Match[str]) -> str:
        if m[1] == "RepresentationID" and m[2] is None and "$" not in rep_id:
            return rep_id
        if m[1] == "Bandwidth":
            return f"{bandwidth:0{m[2] or 1}d}"
        if m[1] in ("Number", "Time", None):
            return m[0]
        raise _Bad(f"the template identifier {m[0]!r} is not supported (section 5.3.9.4.4)")

    rest = _IDENTIFIER.sub("", template)
    if "$" in rest:
        raise _Bad(f"a '$' that starts no identifier in the template {template!r} (section 5.3.9.4.4)")
    return _IDENTIFIER.sub(one, template)


def _parts(template: str) -> tuple[str | Field, ...]:
    """A resolved template as literal text and $Number$ / $Time$ fields ($$ is a '$')."""
    parts: list[str | Field] = []
    pos = 0
    for m in _IDENTIFIER.finditer(template):
        literal = template[pos:m.start()] + ("$" if m[1] is None else "")
        if parts and isinstance(parts[-1], str):
            parts[-1] += literal
        else:
            parts.append(literal)
        if m[1] is not None:
            parts.append(Field(m[1], int(m[2]) if m[2] else 1))
        pos = m.end()
    tail = template[pos:]
    if parts and isinstance(parts[-1], str):
        parts[-1] += tail
    else:
        parts.append(tail)
    return tuple(p for p in parts if p != "")


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


def _holds(resource: Ref, ref: Ref) -> bool:
    """Does `resource` hold the first byte `ref` asks for?"""
    first = ref.byte_range[0] if ref.byte_range else 0
    span = resource.byte_range
    return resource.url == ref.url and (span is None or span[0] <= first <= span[1])


def _integer(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise _Bad(f"{what}={text!r} is not an unsigned integer")
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
        raise _Bad(f"{what}={text!r} is not a byte range first-last")
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
        raise _Bad(f"{what}={text!r} is not an xs:duration")
    if int(m[1] or 0) or int(m[2] or 0):
        raise _Bad(f"{what}={text!r} counts years or months, which have no fixed length")
    days, hours, minutes = (int(g or 0) for g in m.group(3, 4, 5))
    return ((days * 24 + hours) * 60 + minutes) * 60 + float(m[6] or 0)


def _date_time(text: str) -> float:
    """An xs:dateTime as seconds since the epoch (UTC when it names no time zone)."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise _Bad(f"{text!r} is not an xs:dateTime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
