"""Header formatting: HTTP-dates, entity-tags, media types."""
from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.http.directives import Fields, get
from proxy.http.headers import content_type_for, format_http_date, make_etag, parse_http_date


def test_imf_fixdate_is_gmt() -> None:
    assert format_http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert format_http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


@given(st.integers(0, 253402300799))
def test_dates_round_trip(seconds: int) -> None:
    assert parse_http_date(format_http_date(seconds)) == seconds


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777),
        ("Sun Nov  6 08:49:37 1994", 784111777),
        ("Sun, 06 Nov 1994 08:49:37 UTC", None),
        ("Sun, 6 Nov 1994 08:49:37 GMT", None),
        ("Sun, 31 Feb 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 25:49:37 GMT", None),
        ("Sun, 06 Foo 1994 08:49:37 GMT", None),
        ("", None),
        ("784111777", None),
    ],
)
def test_parse_http_date(value: str, expected: int | None) -> None:
    assert parse_http_date(value) == expected


def test_rfc850_two_digit_year_uses_now() -> None:
    now_2026 = 1795000000
    # more than 50 years ahead: the past century (RFC 9110 section 5.6.7)
    assert parse_http_date("Tuesday, 01-Jan-80 00:00:00 GMT", now=now_2026) == parse_http_date(
        "Tue, 01 Jan 1980 00:00:00 GMT"
    )
    assert parse_http_date("Friday, 01-Jan-60 00:00:00 GMT", now=now_2026) == parse_http_date(
        "Fri, 01 Jan 2060 00:00:00 GMT"
    )


def test_etag_is_strong_hex_of_mtime_and_size() -> None:
    assert make_etag(0x18EB4B1B97FC7E2C, 47546) == '"18eb4b1b97fc7e2c-b9ba"'


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.mp4", "video/mp4"),
        ("seg-1.m4s", "video/iso.segment"),
        ("a.webm", "video/webm"),
        ("A.MKV", "video/x-matroska"),
        ("a.mov", "video/quicktime"),
        ("index.m3u8", "application/vnd.apple.mpegurl"),
        ("seg.ts", "video/mp2t"),
        ("manifest.mpd", "application/dash+xml"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("p.png", "image/png"),
        ("noext", "application/octet-stream"),
        ("dir.d/noext", "application/octet-stream"),
        ("x.unknownext", "application/octet-stream"),
    ],
)
def test_content_type_for(name: str, expected: str) -> None:
    assert content_type_for(name) == expected


_NAMES = st.sampled_from(["Range", "range", "X-A", "x-a"])
_VALUES = st.sampled_from(["", "1", "2"])
_PAIRS = st.lists(st.tuples(_NAMES, _VALUES), max_size=6)
_CHANGES = st.lists(st.one_of(
    st.tuples(st.just("append"), st.tuples(_NAMES, _VALUES)),
    st.tuples(st.just("extend"), _PAIRS),
    st.tuples(st.just("insert"), st.tuples(st.integers(-3, 3), st.tuples(_NAMES, _VALUES))),
    st.tuples(st.just("pop"), st.integers(-3, 3)),
    st.tuples(st.just("set"), st.tuples(st.integers(-3, 3), st.tuples(_NAMES, _VALUES))),
    st.tuples(st.just("delete"), st.integers(-3, 3)),
    st.tuples(st.just("iadd"), _PAIRS),
    st.tuples(st.just("reverse"), st.none()),
    st.tuples(st.just("clear"), st.none()),
), max_size=6)


def _change(fields: list[tuple[str, str]], op: str, arg: object) -> list[tuple[str, str]]:
    if op in ("pop", "set", "delete", "insert") and not fields and op != "insert":
        return fields
    if op == "append":
        fields.append(arg)  # type: ignore[arg-type]
    elif op == "extend":
        fields.extend(arg)  # type: ignore[arg-type]
    elif op == "insert":
        fields.insert(*arg)  # type: ignore[misc]
    elif op == "pop":
        fields.pop(arg % len(fields))  # type: ignore[operator]
    elif op == "set":
        fields[arg[0] % len(fields)] = arg[1]  # type: ignore[index]
    elif op == "delete":
        del fields[arg % len(fields)]  # type: ignore[operator]
    elif op == "iadd":
        fields += arg  # type: ignore[operator]
    elif op == "reverse":
        fields.reverse()
    else:
        fields.clear()
    return fields


@given(_PAIRS, _CHANGES)
@example([("x-a", "1"), ("X-A", "2")], [("reverse", None)])
@example([("x-a", "1"), ("Range", "2")], [("set", (0, ("range", "3")))])
@settings(max_examples=300)
def test_indexed_fields_answer_as_the_list_does_after_any_change(pairs: list[tuple[str, str]],
                                                                 changes: list[tuple[str, object]]) -> None:
    fields, plain = Fields(pairs), list(pairs)
    for op, arg in changes:
        fields = _change(fields, op, arg)  # type: ignore[assignment]
        plain = _change(plain, op, arg)
    assert type(fields) is Fields and fields == plain
    for name in ("range", "x-a", "absent"):
        assert get(fields, name) == get(plain, name)


def test_long_field_values_are_parsed_alike_and_not_kept() -> None:
    """The parse caches are keyed by values a client or an origin chooses: a long value is
    parsed each time, with the same result, so the caches stay bounded in bytes."""
    from proxy.http import directives, freshness

    long_value = "max-age=60, " + ", ".join(f"x-{i}" for i in range(400))
    assert len(long_value) > directives.KEPT_CHARS
    before = directives._cache_control.cache_info().currsize
    assert directives.cache_control(long_value)["max-age"] == "60"
    assert directives._cache_control.cache_info().currsize == before
    assert directives.sf_dictionary("a=1, " + "b" * 2000) == {"a": "1", "b" * 2000: True}
    headers = [("Cache-Control", "max-age=60"), ("X-Big", "x" * 5000)]
    before = (freshness._response_rules.cache_info().currsize, freshness._freshness_lifetime.cache_info().currsize)
    policy = freshness.Policy()
    assert freshness.response_rules(headers, policy).directives["max-age"] == "60"
    assert freshness.freshness_lifetime(200, headers, "/x", 1.7e9, policy) == 60
    after = (freshness._response_rules.cache_info().currsize, freshness._freshness_lifetime.cache_info().currsize)
    assert after == before
