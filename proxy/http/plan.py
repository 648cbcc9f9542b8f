"""From request facts and a representation to a complete response plan (pure)."""
from __future__ import annotations

import functools
from collections.abc import Callable

from .conditional import Conditions, evaluate_preconditions
from .headers import format_http_date
from .model import (
    Ignore,
    NotModified,
    PreconditionFailed,
    Representation,
    ResponsePlan,
    Satisfiable,
    Segment,
    Span,
)
from .ranges import content_range, evaluate_range, multipart_body, unsatisfied_range

# RFC 9110 section 15.4.5: a 304 carries the fields a 200 would have had among these.
_NOT_MODIFIED_FIELDS = {"cache-control", "content-location", "date", "expires", "vary"}
_REMEMBERED = 512  # plans kept (stored responses x the request shapes they answer): each holds a representation
_KEY_BYTES = 256  # request fields longer than this together are planned afresh each time


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

    A Date is added when `rep` has none. Apart from that and a multipart boundary, the
    plan is a function of its inputs, so one without multipart is worked out once for
    the same inputs (a stored response answers the same requests again and again).
    `new_boundary` is asked for a multipart boundary only when one is needed.
    """
    if (range_field is None or "," not in range_field) and _short(range_field, cond):  # no multipart
        plan, dated = _remembered(method, cond, range_field, rep, max_ranges)
    else:
        plan = _plan(method, cond, range_field, rep, max_ranges, new_boundary)
        dated = _has_date(plan.headers)
    headers = list(plan.headers)
    if not dated:
        headers.append(("Date", format_http_date(now)))
    return ResponsePlan(plan.status, headers, list(plan.body))


def _short(range_field: str | None, cond: Conditions) -> bool:
    """Request fields short enough to be part of a remembered plan's key (a client chooses them)."""
    fields = (range_field, cond.if_match, cond.if_none_match, cond.if_modified_since, cond.if_unmodified_since,
              cond.if_range)
    return sum(len(f) for f in fields if f is not None) <= _KEY_BYTES


def _has_date(headers: list[tuple[str, str]]) -> bool:
    return any(name.lower() == "date" for name, _ in headers)


@functools.lru_cache(maxsize=_REMEMBERED)
def _remembered(
    method: str, cond: Conditions, range_field: str | None, rep: Representation, max_ranges: int
) -> tuple[ResponsePlan, bool]:
    plan = _plan(method, cond, range_field, rep, max_ranges, _no_boundary)
    return plan, _has_date(plan.headers)


def _no_boundary() -> str:
    raise AssertionError("a single range has no multipart boundary")


def _plan(
    method: str, cond: Conditions, range_field: str | None, rep: Representation, max_ranges: int,
    new_boundary: Callable[[], str],
) -> ResponsePlan:
    """The plan without a generated Date (whoever uses it adds one)."""
    precondition = evaluate_preconditions(method, cond, rep.etag, rep.last_modified)
    if isinstance(precondition, NotModified):
        kept = [(n, v) for n, v in rep.extra_headers if n.lower() in _NOT_MODIFIED_FIELDS]
        return ResponsePlan(304, validator_headers(rep) + kept)
    if isinstance(precondition, PreconditionFailed):
        return _error(412, rep)

    headers = [("Accept-Ranges", "bytes"), *validator_headers(rep), *rep.extra_headers]
    # RFC 9110 section 14.2: GET is the only method with range handling.
    decision = (
        evaluate_range(range_field, rep.size, max_ranges)
        if method == "GET" and precondition.range_allowed
        else Ignore()
    )
    if isinstance(decision, Ignore):
        body: list[Segment] = [Span(0, rep.size)] if rep.size else []
        return _finish(ResponsePlan(200, headers, body), rep.content_type)
    if not isinstance(decision, Satisfiable):
        return _error(416, rep, [("Content-Range", unsatisfied_range(rep.size))])
    # A 206 describes its own parts: a stored Content-Range (odd on a 200, kept there) is not one of them.
    headers = [(n, v) for n, v in headers if n.lower() != "content-range"]
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
