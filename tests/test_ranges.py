"""Range rules (RFC 9110 section 14): tables and properties."""
from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from proxy.http.model import Ignore, Satisfiable, Span, Unsatisfiable
from proxy.http.ranges import coalesce, evaluate_range, multipart_body, parse_range

S = Satisfiable


@pytest.mark.parametrize(
    "field, size, expected",
    [
        (None, 10, Ignore()),
        ("bytes=0-0", 10, S(((0, 0),))),
        ("bytes=0-9", 10, S(((0, 9),))),
        ("bytes=2-5", 10, S(((2, 5),))),
        ("bytes=5-", 10, S(((5, 9),))),
        ("bytes=-3", 10, S(((7, 9),))),
        ("bytes=-30", 10, S(((0, 9),))),  # suffix longer than the file: the whole file
        ("bytes=8-100", 10, S(((8, 9),))),  # end past EOF is clamped
        ("bytes=9-9", 10, S(((9, 9),))),
        ("bytes=10-", 10, Unsatisfiable()),
        ("bytes=10-20", 10, Unsatisfiable()),
        ("bytes=-0", 10, Unsatisfiable()),
        ("bytes=10-11,-0", 10, Unsatisfiable()),
        ("BYTES=0-1", 10, S(((0, 1),))),  # the unit is case-insensitive
        ("Bytes=0-1", 10, S(((0, 1),))),
        ("bytes=0-1 , 4-5", 10, S(((0, 1), (4, 5)))),  # OWS around commas
        ("bytes=0-1,\t4-5", 10, S(((0, 1), (4, 5)))),
        ("bytes=,0-1,,", 10, S(((0, 1),))),  # empty list members are allowed
        ("bytes=0-1,20-30", 10, S(((0, 1),))),  # one satisfiable member is enough
        ("bytes=0-4,2-8", 10, S(((0, 8),))),  # overlapping: coalesced
        ("bytes=0-4,5-8", 10, S(((0, 8),))),  # adjacent: coalesced
        ("bytes=6-7,0-1", 10, S(((0, 1), (6, 7)))),  # ascending order
        ("bytes=0-0,-1", 10, S(((0, 0), (9, 9)))),
        ("bytes=5-2", 10, Ignore()),  # last < first: the field is invalid
        ("bytes=0-1,5-2", 10, Ignore()),
        ("bytes=a-b", 10, Ignore()),
        ("bytes=1", 10, Ignore()),
        ("bytes=--1", 10, Ignore()),
        ("bytes=0 - 1", 10, Ignore()),
        ("bytes =0-1", 10, Ignore()),
        ("bytes=", 10, Ignore()),
        ("bytes", 10, Ignore()),
        ("items=0-1", 10, Ignore()),  # unknown unit
        ("bytes=+1-2", 10, Ignore()),
        ("bytes=0x1-2", 10, Ignore()),
        ("bytes=١-٢", 10, Ignore()),  # non-ASCII digits are not DIGIT
        ("bytes=0-99999999999999999999999999999", 10, S(((0, 9),))),
        ("bytes=99999999999999999999999999999-", 10, Unsatisfiable()),
        ("bytes=-99999999999999999999999999999", 10, S(((0, 9),))),
        ("bytes=0-0", 0, Unsatisfiable()),  # zero-length: int-ranges unsatisfiable
        ("bytes=-5", 0, Ignore()),  # ... a suffix selects the empty whole: 200
        ("bytes=-0", 0, Unsatisfiable()),
        ("bytes=0-", 1, S(((0, 0),))),
    ],
)
def test_range_table(field: str | None, size: int, expected: object) -> None:
    assert evaluate_range(field, size, max_ranges=4) == expected


def test_too_many_ranges_are_ignored_after_coalescing() -> None:
    many = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(5))
    assert evaluate_range(many, 1000, max_ranges=4) == Ignore()
    assert isinstance(evaluate_range(many, 1000, max_ranges=5), Satisfiable)
    # 1000 overlapping ranges coalesce to one: no amplification, not over the cap
    overlapping = "bytes=" + ",".join("0-99" for _ in range(1000))
    assert evaluate_range(overlapping, 1000, max_ranges=1) == S(((0, 99),))


def test_parse_range_keeps_specs() -> None:
    assert parse_range("bytes=1-2,3-,-4") == [(1, 2), (3, None), (None, 4)]
    assert parse_range("bytes=2-1") is None


# --- properties -------------------------------------------------------------

_spec = st.one_of(
    st.tuples(st.integers(0, 300), st.integers(0, 300)).map(lambda t: f"{min(t)}-{max(t)}"),
    st.integers(0, 300).map(lambda a: f"{a}-"),
    st.integers(0, 300).map(lambda n: f"-{n}"),
)
_valid_field = st.lists(_spec, min_size=1, max_size=8).map(lambda specs: "bytes=" + ", ".join(specs))
_any_field = st.one_of(_valid_field, st.text(max_size=40), st.text(alphabet="bytes=-0123456789, ", max_size=30))


def _selected(field: str, size: int) -> set[int]:
    """Reference semantics: the set of byte offsets a valid field selects."""
    chosen: set[int] = set()
    for member in field.partition("=")[2].split(","):
        member = member.strip()
        first, _, last = member.partition("-")
        if first == "":
            n = int(last)
            if n and size:
                chosen.update(range(max(size - n, 0), size))
        elif int(first) < size:
            end = size - 1 if last == "" else min(int(last), size - 1)
            chosen.update(range(int(first), end + 1))
    return chosen


@given(field=_valid_field, size=st.integers(0, 300))
def test_valid_fields_select_exactly_the_requested_bytes(field: str, size: int) -> None:
    decision = evaluate_range(field, size, max_ranges=1000)
    expected = _selected(field, size)
    members = [m.strip() for m in field.partition("=")[2].split(",")]
    nonzero_suffix = any(m.startswith("-") and int(m[1:]) > 0 for m in members)
    if size == 0 and nonzero_suffix:
        assert decision == Ignore()
    elif not expected:
        assert decision == Unsatisfiable()
    else:
        assert isinstance(decision, Satisfiable)
        got = [i for first, last in decision.spans for i in range(first, last + 1)]
        assert got == sorted(expected)  # disjoint, ascending, nothing extra or missing
        gaps = [b[0] - a[1] for a, b in pairwise(decision.spans)]
        assert all(g > 1 for g in gaps)  # neither overlapping nor adjacent


@given(field=_any_field, size=st.integers(0, 10**12))
def test_any_field_gets_a_decision_within_bounds(field: str, size: int) -> None:
    decision = evaluate_range(field, size, max_ranges=16)
    assert isinstance(decision, (Ignore, Satisfiable, Unsatisfiable))
    if isinstance(decision, Satisfiable):
        assert 1 <= len(decision.spans) <= 16
        assert all(0 <= first <= last < size for first, last in decision.spans)


@given(st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)).map(sorted), max_size=10))
def test_coalesce_preserves_the_byte_set(spans: list[list[int]]) -> None:
    merged = coalesce([tuple(s) for s in spans])
    before = {i for a, b in spans for i in range(a, b + 1)}
    after = [i for a, b in merged for i in range(a, b + 1)]
    assert after == sorted(before)


def parse_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """An independent multipart/byteranges parser (RFC 2046 section 5.1)."""
    delimiter = b"\r\n--" + boundary.encode()
    assert body.startswith(delimiter) and body.endswith(delimiter + b"--\r\n")
    parts = []
    for raw in body[: -len(b"--\r\n")].split(delimiter)[1:-1] + [None]:
        if raw is None:
            break
        head, _, data = raw[2:].partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((fields, data))
    return parts


@hsettings(max_examples=200)
@given(data=st.binary(min_size=0, max_size=400), field=_valid_field)
def test_multipart_framing_parses_back_to_the_slices(data: bytes, field: str) -> None:
    decision = evaluate_range(field, len(data), max_ranges=1000)
    if not isinstance(decision, Satisfiable) or len(decision.spans) < 2:
        return
    boundary = "b0undary"
    segments = multipart_body(decision.spans, len(data), "video/mp4", boundary)
    body = b"".join(data[s.start : s.end] if isinstance(s, Span) else s for s in segments)
    parts = parse_multipart(body, boundary)
    assert len(parts) == len(decision.spans)
    for (fields, part), (first, last) in zip(parts, decision.spans, strict=True):
        assert fields == {"Content-Type": "video/mp4", "Content-Range": f"bytes {first}-{last}/{len(data)}"}
        assert part == data[first : last + 1]


@given(first=st.text("0123456789", min_size=1, max_size=25), last=st.text("0123456789", max_size=25))
def test_a_players_range_is_parsed_at_once_as_the_general_parse_does(first: str, last: str) -> None:
    """`bytes=a-b` (what players send) is parsed at once; the same field written any other way
    a client may (the unit's case, white space) takes the general parse: both agree."""
    field = f"bytes={first}-{last}"
    assert parse_range(field) == parse_range(f"Bytes={first}-{last}") == parse_range(f" bytes={first}-{last}\t")
