"""Range requests (RFC 9110 section 14): parsing, evaluation and multipart framing."""
from __future__ import annotations

import re

from .model import Ignore, RangeDecision, Satisfiable, Segment, Span, Unsatisfiable

# A number longer than this is larger than any representation we can hold.
_MAX_DIGITS = 19
_HUGE = 10**_MAX_DIGITS
_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")
_ONE_RANGE = re.compile(r"bytes=([0-9]{1,19})-([0-9]{0,19})")  # what players send: parsed at once

# (first, last) with last None for "first-"; or (None, suffix_length) for "-n".
RangeSpec = tuple[int | None, int | None]


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else _HUGE


def parse_range(value: str) -> list[RangeSpec] | None:
    """The range-specs of a `bytes` Range field, or None when it must be ignored.

    RFC 9110 section 14.1.1/14.2: the unit is case-insensitive; the range-set is a
    list (OWS around commas, empty members allowed); a range whose last-pos is
    less than its first-pos makes the whole field invalid. Other units are unknown.
    """
    one = _ONE_RANGE.fullmatch(value)
    if one is not None:
        first, last = int(one.group(1)), int(one.group(2)) if one.group(2) else None
        return None if last is not None and last < first else [(first, last)]
    unit, eq, range_set = value.strip(" \t").partition("=")
    if not eq or unit.lower() != "bytes":
        return None
    specs: list[RangeSpec] = []
    for member in range_set.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        if m := _INT_RANGE.fullmatch(member):
            first = _number(m.group(1))
            last = _number(m.group(2)) if m.group(2) else None
            if last is not None and last < first:
                return None
            specs.append((first, last))
        elif m := _SUFFIX_RANGE.fullmatch(member):
            specs.append((None, _number(m.group(1))))
        else:
            return None
    return specs or None


def resolve(spec: RangeSpec, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) a spec selects in `size` bytes, or None (RFC 9110 14.1.2)."""
    first, last = spec
    if first is None:  # suffix-range: the last n bytes
        if last == 0 or size == 0:
            return None
        return max(size - last, 0), size - 1  # type: ignore[operator]
    if first >= size:
        return None
    return first, size - 1 if last is None else min(last, size - 1)


def coalesce(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Merge overlapping and adjacent spans, ascending (RFC 9110 section 14.6 allows it)."""
    merged: list[list[int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return tuple((a, b) for a, b in merged)


def evaluate_range(value: str | None, size: int, max_ranges: int) -> RangeDecision:
    """Decide 200 / 206 / 416 for a GET with this Range field on `size` bytes.

    - no field, invalid syntax or unknown unit: Ignore (section 14.2);
    - a zero-length representation: a non-zero suffix-range selects the (empty)
      whole, which a 206 cannot express, so it is Ignored; int-ranges are 416;
    - more than `max_ranges` spans after coalescing: Ignore, so one request cannot
      amplify the response (section 14.2 lets a server ignore such a field);
    - no satisfiable spec: Unsatisfiable (section 15.5.17).
    """
    if value is None:
        return Ignore()
    specs = parse_range(value)
    if specs is None:
        return Ignore()
    if size == 0 and any(first is None and last for first, last in specs):
        return Ignore()
    spans = []
    for spec in specs:
        span = resolve(spec, size)
        if span is not None:
            spans.append(span)
    if not spans:
        return Unsatisfiable()
    merged = coalesce(spans) if len(spans) > 1 else (spans[0],)
    if len(merged) > max_ranges:
        return Ignore()
    return Satisfiable(merged)


def content_range(first: int, last: int, size: int) -> str:
    """Content-Range for a satisfied range (RFC 9110 section 14.4)."""
    return f"bytes {first}-{last}/{size}"


def unsatisfied_range(size: int) -> str:
    """Content-Range for a 416 (RFC 9110 section 15.5.17)."""
    return f"bytes */{size}"


def multipart_body(
    spans: tuple[tuple[int, int], ...], size: int, content_type: str, boundary: str
) -> list[Segment]:
    """The multipart/byteranges body (RFC 9110 section 14.6, RFC 2046 section 5.1).

    Literal framing bytes interleaved with the spans to read; the sum of the
    segment lengths is the exact Content-Length.
    """
    body: list[Segment] = []
    for first, last in spans:
        head = (
            f"\r\n--{boundary}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Range: {content_range(first, last, size)}\r\n\r\n"
        )
        body.append(head.encode("latin-1"))
        body.append(Span(first, last + 1))
    body.append(f"\r\n--{boundary}--\r\n".encode("latin-1"))
    return body
