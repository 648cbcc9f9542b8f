"""DASH segment addressing (ISO/IEC 23009-1 section 5.3.9): the segments of a Representation
made from a SegmentTemplate (with a SegmentTimeline or a constant duration), or listed by a
SegmentList or a SegmentBase, and when they are available. Pure."""
from __future__ import annotations

import bisect
import functools
import math
import re
from dataclasses import dataclass

from .streams import MAX_SEGMENTS, Located, Ref, Segment, SegmentIndex, directories_of, directory, resolve


class Malformed(ValueError):
    """A rule of the MPD broken; the message says which."""


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


def runs_of(entries: list[tuple[int | None, int, int]], timescale: int, offset: int, timing: Timing) -> tuple[Run, ...]:
    """A SegmentTimeline's S elements, as (@t or None, @d, @r), expanded into runs (section
    5.3.9.6): @t defaults to where the one before ended; a negative @r repeats until the next
    S's @t, else the end of the Period, else (in a dynamic MPD) the live edge."""
    end = offset + timing.period_duration * timescale if timing.period_duration is not None else None
    runs: list[Run] = []
    time = first = 0
    for i, (start, duration, repeat) in enumerate(entries):
        time = time if start is None else start
        count: int | None = repeat + 1
        if repeat < 0:
            last = i + 1 == len(entries)
            until = end if last else entries[i + 1][0]
            if until is None and not (last and timing.dynamic):
                raise Malformed("S@r=-1 with no next S@t and no Period end (section 5.3.9.6)")
            count = None if until is None else max(0, math.ceil((until - time) / duration - _EPSILON))
        runs.append(Run(time, duration, count, first))
        if count is None:
            break
        time, first = time + count * duration, first + count
    return tuple(runs)


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
            stop = ended if self.runs is not None or timing.period_duration is None else min(stop, ended)
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
        return directories_of(self.segments)

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


def _holds(resource: Ref, ref: Ref) -> bool:
    """Does `resource` hold the first byte `ref` asks for?"""
    first = ref.byte_range[0] if ref.byte_range else 0
    span = resource.byte_range
    return resource.url == ref.url and (span is None or span[0] <= first <= span[1])


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
        raise Malformed(f"the template identifier {m[0]!r} is not supported (section 5.3.9.4.4)")

    rest = _IDENTIFIER.sub("", template)
    if "$" in rest:
        raise Malformed(f"a '$' that starts no identifier in the template {template!r} (section 5.3.9.4.4)")
    return _IDENTIFIER.sub(one, template)


def _parts(template: str) -> tuple[str | Field, ...]:
    """A template as literal text and $Number$ / $Time$ fields ($$ is a '$')."""
    parts: list[str | Field] = []
    literal, pos = "", 0
    for m in _IDENTIFIER.finditer(template):
        literal += template[pos:m.start()]
        if m[1] is None:
            literal += "$"
        else:
            parts += [literal] if literal else []
            parts.append(Field(m[1], int(m[2]) if m[2] else 1))
            literal = ""
        pos = m.end()
    literal += template[pos:]
    return tuple(parts + [literal] if literal else parts)


def template(text: str, rep_id: str, bandwidth: int, base: str) -> tuple[str | Field, ...]:
    """A SegmentTemplate's @media or @initialization for one Representation, resolved against
    its BaseURL: literal text and the $Number$ / $Time$ fields left to fill."""
    return _parts(resolve(base, _constants(text, rep_id, bandwidth)))


def constant_url(text: str, rep_id: str, bandwidth: int, base: str) -> str:
    """An initialization URL template (section 5.3.9.4.2): it may not name $Number$ or $Time$."""
    parts = template(text, rep_id, bandwidth, base)
    literal = [p for p in parts if isinstance(p, str)]
    if len(literal) != len(parts):
        raise Malformed("an initialization template names $Number$ or $Time$ (section 5.3.9.4.4)")
    return "".join(literal)
