"""Conditional requests (RFC 9110 section 13): entity-tags and precondition evaluation."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .directives import Headers, get
from .headers import parse_http_date, split_list
from .model import NotModified, PreconditionDecision, PreconditionFailed, Proceed

# RFC 9110 section 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE,
# etagc = %x21 / %x23-7E / obs-text.
_ENTITY_TAG = re.compile(r'(W/)?("[\x21\x23-\x7e\x80-\xff]*")')


@dataclass(frozen=True)
class ETag:
    opaque: str  # including the quotes
    weak: bool


def parse_etag(value: str | None) -> ETag | None:
    """One entity-tag, or None if the value is not one."""
    if value is None:
        return None
    m = _ENTITY_TAG.fullmatch(value.strip(" \t"))
    return ETag(m.group(2), bool(m.group(1))) if m else None


def _tags(field: str) -> list[ETag | None]:
    """Members of an If-Match / If-None-Match list; malformed members are None."""
    return [parse_etag(member) for member in split_list(field)]


def strong_match(a: ETag | None, b: ETag | None) -> bool:
    """Strong comparison (RFC 9110 section 8.8.3.2): both strong, same opaque-tag."""
    return a is not None and b is not None and not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: ETag | None, b: ETag | None) -> bool:
    """Weak comparison: same opaque-tag, weakness ignored."""
    return a is not None and b is not None and a.opaque == b.opaque


@dataclass(frozen=True)
class Conditions:
    """The conditional request fields of one request (duplicate lines already joined)."""

    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None
    if_range: str | None = None


NO_CONDITIONS = Conditions()


def conditions_from(headers: Headers) -> Conditions:
    """The conditional fields of a request, repeated lines joined (RFC 9110 section 5.3); one
    shared NO_CONDITIONS for most requests, which have none (a key found at once)."""
    fields = (get(headers, "if-match"), get(headers, "if-none-match"), get(headers, "if-modified-since"),
              get(headers, "if-unmodified-since"), get(headers, "if-range"))
    return NO_CONDITIONS if fields == (None, None, None, None, None) else Conditions(*fields)


def _if_match(field: str, current: ETag | None) -> bool:
    """RFC 9110 section 13.1.1: '*' is true when a representation exists."""
    if field.strip() == "*":
        return True
    return any(strong_match(tag, current) for tag in _tags(field))


def _if_none_match(field: str, current: ETag | None) -> bool:
    """RFC 9110 section 13.1.2: true (proceed) unless some member weakly matches."""
    if field.strip() == "*":
        return False
    return not any(weak_match(tag, current) for tag in _tags(field))


def evaluate_preconditions(
    method: str, cond: Conditions, etag: str | None, last_modified: int | None
) -> PreconditionDecision:
    """Evaluate preconditions in the order of RFC 9110 section 13.2.2 for an existing resource."""
    current = parse_etag(etag)
    # Step 1 / 2: If-Match, else If-Unmodified-Since.
    if cond.if_match is not None:
        if not _if_match(cond.if_match, current):
            return PreconditionFailed()
    elif cond.if_unmodified_since is not None:
        date = parse_http_date(cond.if_unmodified_since)
        # Section 13.1.4: ignored when invalid or when there is no modification date.
        if date is not None and last_modified is not None and last_modified > date:
            return PreconditionFailed()
    safe = method in ("GET", "HEAD")
    # Step 3 / 4: If-None-Match, else If-Modified-Since (GET/HEAD only, section 13.1.3).
    if cond.if_none_match is not None:
        if not _if_none_match(cond.if_none_match, current):
            return NotModified() if safe else PreconditionFailed()
    elif safe and cond.if_modified_since is not None:
        date = parse_http_date(cond.if_modified_since)
        if date is not None and last_modified is not None and last_modified <= date:
            return NotModified()
    # Step 5: If-Range decides whether Range applies (GET only, section 13.1.5).
    if method == "GET" and cond.if_range is not None:
        return Proceed(range_allowed=if_range_holds(cond.if_range, current, last_modified))
    return Proceed()


def if_range_holds(field: str, current: ETag | None, last_modified: int | None) -> bool:
    """RFC 9110 section 13.1.5: a strong ETag match, or an exact Last-Modified match.

    A weak entity-tag never matches. A date matches only if it equals Last-Modified
    (section 13.1.5 also requires a strong date validator; Last-Modified from a
    file's mtime stands in for one).
    """
    field = field.strip(" \t")
    if field.startswith(('"', "W/")):
        return strong_match(parse_etag(field), current)
    date = parse_http_date(field)
    return date is not None and last_modified is not None and date == last_modified
