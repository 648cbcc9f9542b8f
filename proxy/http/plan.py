"""From request facts and a representation to a complete response plan (pure)."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .conditional import Conditions, evaluate_preconditions
from .directives import cached_if
from .headers import format_http_date
from .model import (
    Ignore,
    NotModified,
    PreconditionFailed,
    RangeDecision,
    Representation,
    ResponsePlan,
    Satisfiable,
    Segment,
    Span,
)
from .ranges import content_range, evaluate_range, multipart_body, unsatisfied_range

# RFC 9110 section 15.4.5: a 304 carries the fields a 200 would have had among these.
_NOT_MODIFIED_FIELDS = {"cache-control", "content-location", "date", "expires", "vary"}
_REMEMBERED = 512  # prepared plans kept (stored responses x the conditions they answer): each holds a representation
_KEY_BYTES = 256  # conditional fields longer than this together are prepared afresh each time


def validator_headers(rep: Representation) -> list[tuple[str, str]]:
    headers = []
    if rep.etag is not None:
        headers.append(("ETag", rep.etag))
    if rep.last_modified is not None:
        headers.append(("Last-Modified", format_http_date(rep.last_modified)))
    return headers


def plan_response(
    method: str,
    cond: Conditions,
    range_field: str | None,
    rep: Representation,
    *,
    max_ranges: int,
    new_boundary: Callable[[], str],
    now: float,
) -> ResponsePlan:
    """Decide status, headers and body segments for a GET or HEAD of `rep`.

    A Date is added when `rep` has none. What follows from the method, the conditions and
    the representation alone (the preconditions' outcome, the fields a 200 or 206 starts
    with) is worked out once for the same inputs: a stored response answers the same
    requests again and again, with ranges that change. `new_boundary` is asked for a
    multipart boundary only when one is needed.
    """
    prepared = cached_if(_short(cond), _prepared)(method, cond, rep)
    if prepared.answer is not None:
        plan, dated = prepared.answer, prepared.dated
        headers, body = list(plan.headers), list(plan.body)
    else:
        ranges_apply = method == "GET" and prepared.range_allowed  # RFC 9110 section 14.2: GET only
        decision = evaluate_range(range_field, rep.size, max_ranges) if ranges_apply else Ignore()
        plan = _with_range(decision, prepared, rep, new_boundary)
        dated = prepared.dated and plan.status != 416
        headers, body = plan.headers, plan.body
    if not dated:
        headers.append(("Date", format_http_date(now)))
    return ResponsePlan(plan.status, headers, body)


def _short(cond: Conditions) -> bool:
    """Request fields short enough to be part of a remembered key (a client chooses them)."""
    fields = (cond.if_match, cond.if_none_match, cond.if_modified_since, cond.if_unmodified_since, cond.if_range)
    return sum(len(f) for f in fields if f is not None) <= _KEY_BYTES


def _has_date(headers: Iterable[tuple[str, str]]) -> bool:
    return any(name.lower() == "date" for name, _ in headers)


@dataclass(frozen=True)
class _Prepared:
    """What a plan takes from the method, the conditions and the representation alone."""

    answer: ResponsePlan | None  # a 304's or a 412's whole plan (not to be changed: copied for each use)
    whole: tuple[tuple[str, str], ...]  # the fields a 200 starts with
    ranged: tuple[tuple[str, str], ...]  # ... and a 206: a stored Content-Range is not one of its parts
    range_allowed: bool  # False when If-Range failed: Range is ignored
    dated: bool  # the fields have a Date (the representation's own)


@functools.lru_cache(maxsize=_REMEMBERED)
def _prepared(method: str, cond: Conditions, rep: Representation) -> _Prepared:
    precondition = evaluate_preconditions(method, cond, rep.etag, rep.last_modified)
    if isinstance(precondition, NotModified):
        kept = [(n, v) for n, v in rep.extra_headers if n.lower() in _NOT_MODIFIED_FIELDS]
        answer = ResponsePlan(304, validator_headers(rep) + kept)
        return _Prepared(answer, (), (), False, _has_date(answer.headers))
    if isinstance(precondition, PreconditionFailed):
        return _Prepared(_error(412, rep), (), (), False, False)
    whole = (("Accept-Ranges", "bytes"), *validator_headers(rep), *rep.extra_headers)
    ranged = tuple((n, v) for n, v in whole if n.lower() != "content-range")
    return _Prepared(None, whole, ranged, precondition.range_allowed, _has_date(whole))


def _with_range(
    decision: RangeDecision, prepared: _Prepared, rep: Representation, new_boundary: Callable[[], str]
) -> ResponsePlan:
    """The plan for a request whose preconditions hold (a new headers list each time)."""
    if isinstance(decision, Ignore):
        body: list[Segment] = [Span(0, rep.size)] if rep.size else []
        return _finish(ResponsePlan(200, list(prepared.whole), body), rep.content_type)
    if not isinstance(decision, Satisfiable):
        return _error(416, rep, [("Content-Range", unsatisfied_range(rep.size))])
    headers = list(prepared.ranged)
    if len(decision.spans) == 1:
        first, last = decision.spans[0]
        headers.append(("Content-Range", content_range(first, last, rep.size)))
        return _finish(ResponsePlan(206, headers, [Span(first, last + 1)]), rep.content_type)
    boundary = new_boundary()
    body = multipart_body(decision.spans, rep.size, rep.content_type, boundary)
    return _finish(ResponsePlan(206, headers, body), f"multipart/byteranges; boundary={boundary}")


def _finish(plan: ResponsePlan, content_type: str) -> ResponsePlan:
    plan.headers.append(("Content-Type", content_type))
    plan.headers.append(("Content-Length", str(plan.content_length)))
    return plan


def _error(status: int, rep: Representation, extra: list[tuple[str, str]] | None = None) -> ResponsePlan:
    text = {412: b"Precondition Failed\n", 416: b"Range Not Satisfiable\n"}[status]
    headers = [("Accept-Ranges", "bytes"), *(extra or []), *validator_headers(rep)]
    return _finish(ResponsePlan(status, headers, [text]), "text/plain; charset=utf-8")


def one_span(plan: ResponsePlan) -> bool:
    """Is the plan's body one span of the representation (a 200's, or a single-part 206's)?"""
    return len(plan.body) == 1 and isinstance(plan.body[0], Span)


_SPAN_FIELDS = frozenset({"content-range", "content-length"})


def same_but_span(old: ResponsePlan, new: ResponsePlan) -> bool:
    """Is `new` the answer `old` is, but for the one span of the representation it sends: the
    same status and fields, in the same order, but for the values of Content-Range and
    Content-Length? (What another Range makes of a 200 or a single-part 206: server/ready.py
    sends it with the fields `old` went out with, those two changed.)"""
    if new.status != old.status or not one_span(new) or len(new.headers) != len(old.headers):
        return False
    for (name, value), (old_name, old_value) in zip(new.headers, old.headers, strict=True):
        if name != old_name or (value != old_value and name.lower() not in _SPAN_FIELDS):
            return False
    return True


def respan(plan: ResponsePlan, range_field: str | None, size: int, max_ranges: int) -> tuple[int, int] | None:
    """The one span (first, last) another Range field asks of the `size` bytes a single-part 206
    `plan` answers: that request's plan is then `plan` but for its Content-Range and Content-Length
    (same_but_span), when it asks the same with the same conditions, within the second of the
    plan's Date; None when only plan_response can say (another status, several spans, 416).

    What a 206's plan depends on but its Range (its preconditions' outcome, that If-Range let
    the Range apply: RFC 9110 sections 13.2.2, 13.1.5) is the same for the same conditions, and
    the Range alone picks the one span (section 14.2)."""
    if plan.status != 206 or not one_span(plan):
        return None
    decision = evaluate_range(range_field, size, max_ranges)
    if isinstance(decision, Satisfiable) and len(decision.spans) == 1:
        return decision.spans[0]
    return None
