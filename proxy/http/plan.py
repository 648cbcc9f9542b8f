"""From request facts and a representation to a complete response plan (pure)."""
from __future__ import annotations

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


def validator_headers(rep: Representation) -> list[tuple[str, str]]:
    headers = []
    if rep.etag is not None:
        headers.append(("ETag", rep.etag))
    if rep.last_modified is not None:
        headers.append(("Last-Modified", format_http_date(rep.last_modified)))
    return headers


def _with_date(headers: list[tuple[str, str]], now: float) -> list[tuple[str, str]]:
    if not any(name.lower() == "date" for name, _ in headers):
        headers.append(("Date", format_http_date(now)))
    return headers


def plan_response(
    method: str,
    cond: Conditions,
    range_field: str | None,
    rep: Representation,
    *,
    max_ranges: int,
    boundary: str,
    now: float,
) -> ResponsePlan:
    """Decide status, headers and body segments for a GET or HEAD of `rep`."""
    precondition = evaluate_preconditions(method, cond, rep.etag, rep.last_modified)
    if isinstance(precondition, NotModified):
        kept = [(n, v) for n, v in rep.extra_headers if n.lower() in _NOT_MODIFIED_FIELDS]
        return ResponsePlan(304, _with_date(validator_headers(rep) + kept, now))
    if isinstance(precondition, PreconditionFailed):
        return _error(412, rep, now)

    headers = [("Accept-Ranges", "bytes"), *validator_headers(rep), *rep.extra_headers]
    # RFC 9110 section 14.2: GET is the only method with range handling.
    decision = (
        evaluate_range(range_field, rep.size, max_ranges)
        if method == "GET" and precondition.range_allowed
        else Ignore()
    )
    if isinstance(decision, Ignore):
        body: list[Segment] = [Span(0, rep.size)] if rep.size else []
        return _finish(ResponsePlan(200, headers, body), rep.content_type, now)
    if not isinstance(decision, Satisfiable):
        return _error(416, rep, now, [("Content-Range", unsatisfied_range(rep.size))])
    # A 206 describes its own parts: a stored Content-Range (odd on a 200, kept there) is not one of them.
    headers = [(n, v) for n, v in headers if n.lower() != "content-range"]
    if len(decision.spans) == 1:
        first, last = decision.spans[0]
        headers.append(("Content-Range", content_range(first, last, rep.size)))
        return _finish(ResponsePlan(206, headers, [Span(first, last + 1)]), rep.content_type, now)
    body = multipart_body(decision.spans, rep.size, rep.content_type, boundary)
    return _finish(
        ResponsePlan(206, headers, body), f"multipart/byteranges; boundary={boundary}", now
    )


def _finish(plan: ResponsePlan, content_type: str, now: float) -> ResponsePlan:
    plan.headers.append(("Content-Type", content_type))
    plan.headers.append(("Content-Length", str(plan.content_length)))
    _with_date(plan.headers, now)
    return plan


def _error(
    status: int, rep: Representation, now: float, extra: list[tuple[str, str]] | None = None
) -> ResponsePlan:
    text = {412: b"Precondition Failed\n", 416: b"Range Not Satisfiable\n"}[status]
    headers = [("Accept-Ranges", "bytes"), *(extra or []), *validator_headers(rep)]
    return _finish(ResponsePlan(status, headers, [text]), "text/plain; charset=utf-8", now)
