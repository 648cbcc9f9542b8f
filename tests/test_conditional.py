"""Preconditions (RFC 9110 section 13) as tables."""
from __future__ import annotations

import pytest

from proxy.http.conditional import Conditions, evaluate_preconditions, parse_etag, split_list
from proxy.http.model import NotModified, PreconditionFailed, Proceed

ETAG = '"5f-10"'
LM = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
AT = "Sun, 06 Nov 1994 08:49:37 GMT"
BEFORE = "Sun, 06 Nov 1994 08:49:36 GMT"
AFTER = "Sun, 06 Nov 1994 08:49:38 GMT"


@pytest.mark.parametrize(
    "method, cond, expected",
    [
        ("GET", Conditions(), Proceed()),
        # If-None-Match: weak comparison, lists, '*'
        ("GET", Conditions(if_none_match=ETAG), NotModified()),
        ("HEAD", Conditions(if_none_match=ETAG), NotModified()),
        ("GET", Conditions(if_none_match="W/" + ETAG), NotModified()),
        ("GET", Conditions(if_none_match='"a", ' + ETAG), NotModified()),
        ("GET", Conditions(if_none_match='"a",W/"b",' + ETAG + ',"c"'), NotModified()),
        ("GET", Conditions(if_none_match='"a,b", "c"'), Proceed()),
        ("GET", Conditions(if_none_match="*"), NotModified()),
        ("GET", Conditions(if_none_match='"other"'), Proceed()),
        ("GET", Conditions(if_none_match="5f-10"), Proceed()),  # unquoted: not an entity-tag
        ("GET", Conditions(if_none_match='"5f-10'), Proceed()),
        ("POST", Conditions(if_none_match=ETAG), PreconditionFailed()),
        # If-Match: strong comparison
        ("GET", Conditions(if_match=ETAG), Proceed()),
        ("GET", Conditions(if_match='"x", ' + ETAG), Proceed()),
        ("GET", Conditions(if_match="*"), Proceed()),
        ("GET", Conditions(if_match="W/" + ETAG), PreconditionFailed()),
        ("GET", Conditions(if_match='"other"'), PreconditionFailed()),
        ("GET", Conditions(if_match="garbage"), PreconditionFailed()),
        # If-Unmodified-Since, only without If-Match
        ("GET", Conditions(if_unmodified_since=AT), Proceed()),
        ("GET", Conditions(if_unmodified_since=AFTER), Proceed()),
        ("GET", Conditions(if_unmodified_since=BEFORE), PreconditionFailed()),
        ("GET", Conditions(if_unmodified_since="not a date"), Proceed()),
        ("GET", Conditions(if_match=ETAG, if_unmodified_since=BEFORE), Proceed()),
        # If-Modified-Since, only without If-None-Match, only GET/HEAD
        ("GET", Conditions(if_modified_since=AT), NotModified()),
        ("GET", Conditions(if_modified_since=AFTER), NotModified()),
        ("GET", Conditions(if_modified_since="Sunday, 06-Nov-94 08:49:37 GMT"), NotModified()),
        ("GET", Conditions(if_modified_since="Sun Nov  6 08:49:37 1994"), NotModified()),
        ("GET", Conditions(if_modified_since=BEFORE), Proceed()),
        ("GET", Conditions(if_modified_since="yesterday"), Proceed()),
        ("GET", Conditions(if_modified_since=AT + ", " + AT), Proceed()),  # two members: ignored
        ("POST", Conditions(if_modified_since=AT), Proceed()),
        ("GET", Conditions(if_none_match='"other"', if_modified_since=AFTER), Proceed()),
        # order: 412 from If-Match wins over 304
        ("GET", Conditions(if_match='"other"', if_none_match=ETAG), PreconditionFailed()),
        ("GET", Conditions(if_unmodified_since=BEFORE, if_modified_since=AFTER), PreconditionFailed()),
        # If-Range: strong ETag or exact date
        ("GET", Conditions(if_range=ETAG), Proceed(range_allowed=True)),
        ("GET", Conditions(if_range="W/" + ETAG), Proceed(range_allowed=False)),
        ("GET", Conditions(if_range='"other"'), Proceed(range_allowed=False)),
        ("GET", Conditions(if_range=AT), Proceed(range_allowed=True)),
        ("GET", Conditions(if_range=AFTER), Proceed(range_allowed=False)),
        ("GET", Conditions(if_range=BEFORE), Proceed(range_allowed=False)),
        ("GET", Conditions(if_range="junk"), Proceed(range_allowed=False)),
        ("HEAD", Conditions(if_range='"other"'), Proceed()),
    ],
)
def test_precondition_table(method: str, cond: Conditions, expected: object) -> None:
    assert evaluate_preconditions(method, cond, ETAG, LM) == expected


def test_weak_current_etag_never_matches_if_match_or_if_range() -> None:
    weak = "W/" + ETAG
    assert evaluate_preconditions("GET", Conditions(if_match=ETAG), weak, LM) == PreconditionFailed()
    assert evaluate_preconditions("GET", Conditions(if_range=ETAG), weak, LM) == Proceed(range_allowed=False)
    assert evaluate_preconditions("GET", Conditions(if_none_match=ETAG), weak, LM) == NotModified()


def test_without_validators_dates_are_ignored() -> None:
    assert evaluate_preconditions("GET", Conditions(if_modified_since=AT), None, None) == Proceed()
    assert evaluate_preconditions("GET", Conditions(if_unmodified_since=BEFORE), None, None) == Proceed()
    assert evaluate_preconditions("GET", Conditions(if_none_match="*"), None, None) == NotModified()


@pytest.mark.parametrize(
    "value, expected",
    [
        ('"abc"', ('"abc"', False)),
        ('W/"abc"', ('"abc"', True)),
        ('""', ('""', False)),
        ('w/"abc"', None),  # W/ is case-sensitive
        ("abc", None),
        ('"a"b"', None),
        ('"a b"', None),  # SP is not etagc
    ],
)
def test_parse_etag(value: str, expected: tuple[str, bool] | None) -> None:
    tag = parse_etag(value)
    assert (None if tag is None else (tag.opaque, tag.weak)) == expected


def test_split_list_respects_quotes() -> None:
    assert split_list(' "a,b" ,W/"c",, ') == ['"a,b"', 'W/"c"']
