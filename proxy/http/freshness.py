"""RFC 9111 for a shared cache, as pure functions: storing, freshness, age, reuse."""
from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass
from enum import Enum
from itertools import chain

from .directives import Directives, Headers, cache_control, cached_if, cdn_directives, delta_seconds, get
from .headers import parse_http_date, split_list
from .lifetimes import Changes, StreamTtls, stream_lifetime
from .manifests import kind_of

__all__ = ["Headers", "get", "cache_control", "delta_seconds"]

# RFC 9110 section 15.1: status codes that are heuristically cacheable.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses whose semantics this cache understands (RFC 9111 section 5.2.2.3, must-understand).
UNDERSTOOD_STATUSES = HEURISTIC_STATUSES | {302, 303, 307, 400, 403, 500, 502, 503, 504}
_REMEMBERED = 4096  # stored responses whose rules and lifetime are kept (pure: the same inputs, the same answer)...
_KEPT_FIELD_CHARS = 4096  # ... when their fields total this many characters at most


@dataclass(frozen=True)
class Policy:
    """Operator defaults; each one is a documented deviation from the RFC's defaults."""

    heuristic_fraction: float = 0.1
    heuristic_max: int = 86400
    default_ttls: tuple[tuple[str, int], ...] = ()  # (glob on the path, seconds) when the origin says nothing
    stale_while_revalidate: int = 0
    stale_if_error: int = 0
    stale_if_unreachable: bool = True  # RFC 9111 section 4.2.4: serve stale while "disconnected"
    cdn_fields: tuple[str, ...] = ("cdn-cache-control",)  # RFC 9213 targeted fields, in order
    streams: StreamTtls = StreamTtls()  # manifests and segments the origin gives no freshness (lifetimes.py)


@dataclass(frozen=True)
class ResponseRules:
    """The caching directives that apply to a response in this cache.

    A valid targeted field (CDN-Cache-Control) replaces Cache-Control and Expires
    entirely (RFC 9213 section 2.1); `targeted` says that it did.
    """

    directives: Directives
    targeted: bool


def response_rules(headers: Headers, policy: Policy) -> ResponseRules:
    fields = tuple(headers)
    return cached_if(_keepable(fields), _response_rules)(fields, policy)


def _keepable(fields: tuple[tuple[str, str], ...]) -> bool:
    """Fields short enough to be kept as a cache key (an origin chooses them: the caches stay
    bounded in bytes, not only in entries)."""
    return len("".join(chain.from_iterable(fields))) <= _KEPT_FIELD_CHARS  # one C-level pass: runs per hit


@functools.lru_cache(maxsize=_REMEMBERED)  # a stored response's rules are asked for on every hit
def _response_rules(fields: tuple[tuple[str, str], ...], policy: Policy) -> ResponseRules:
    headers = list(fields)
    targeted = cdn_directives(headers, policy.cdn_fields)
    if targeted is not None:
        return ResponseRules(targeted, True)
    return ResponseRules(cache_control(get(headers, "cache-control")), False)


def storable(
    method: str, request_headers: Headers, status: int, response_headers: Headers, policy: Policy
) -> bool:
    """May a shared cache store this response? (RFC 9111 section 3, 3.5)."""
    if method != "GET" or status < 200 or status == 304:
        return False
    rules = response_rules(response_headers, policy)
    res = rules.directives
    req = cache_control(get(request_headers, "cache-control"))
    if "must-understand" in res:
        # Section 5.2.2.3: store only understood statuses, and then no-store is overridden.
        if status not in UNDERSTOOD_STATUSES:
            return False
    elif "no-store" in res:
        return False
    if "no-store" in req or ("private" in res and res["private"] is None):
        return False
    if get(response_headers, "set-cookie") is not None and "set-cookie" not in omitted_fields(res):
        return False  # one client's cookie is not for the next (like nginx and Varnish)
    if "*" in vary_fields(response_headers):
        return False  # section 4.1: a Vary of "*" never matches a later request
    if get(request_headers, "authorization") is not None and not allows_authorized(response_headers):
        return False
    explicit = {"public", "max-age", "s-maxage"} & res.keys() or (
        not rules.targeted and get(response_headers, "expires") is not None)
    return bool(explicit) or status in HEURISTIC_STATUSES


def omitted_fields(directives: Directives) -> frozenset[str]:
    """Fields named by qualified private="..." and no-cache="..." (RFC 9111 sections 5.2.2.4, 5.2.2.7):
    a shared cache may store and reuse the response without them."""
    names = (directives.get(d) for d in ("private", "no-cache"))
    return frozenset(f.strip().lower() for value in names if value for f in value.split(",") if f.strip())


def stored_headers(headers: Headers, policy: Policy) -> Headers:
    """The response fields the cache keeps: all but those its directives name as not to be reused."""
    omitted = omitted_fields(response_rules(headers, policy).directives)
    return [(n, v) for n, v in headers if n.lower() not in omitted] if omitted else headers


def allows_authorized(response_headers: Headers) -> bool:
    """May a shared cache store or reuse this for a request with Authorization? (section 3.5)"""
    res = cache_control(get(response_headers, "cache-control"))
    return bool({"public", "must-revalidate", "s-maxage"} & res.keys())


def freshness_lifetime(status: int, headers: Headers, path: str, response_time: float, policy: Policy,
                       changes: Changes | None = None) -> float:
    """Seconds the response is fresh for (RFC 9111 section 4.2.1, heuristics 4.2.2); `changes`:
    what its body said when stored, for a manifest (lifetimes.py)."""
    fields = tuple(headers)
    return cached_if(_keepable(fields), _freshness_lifetime)(status, fields, path, response_time, policy, changes)


@functools.lru_cache(maxsize=_REMEMBERED)
def _freshness_lifetime(
    status: int, fields: tuple[tuple[str, str], ...], path: str, response_time: float, policy: Policy,
    changes: Changes | None,
) -> float:
    headers = list(fields)
    rules = response_rules(headers, policy)
    cc = rules.directives
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            return delta_seconds(cc[directive]) or 0  # invalid: treat as stale
    expires = None if rules.targeted else get(headers, "expires")
    if expires is not None:
        expiry = parse_http_date(expires, now=response_time)
        if expiry is None:
            return 0  # an invalid Expires (e.g. "0") means already expired
        date = parse_http_date(get(headers, "date"), now=response_time)
        return max(0.0, expiry - (date if date is not None else response_time))
    for pattern, ttl in policy.default_ttls:
        if fnmatch.fnmatchcase(path, pattern):
            return ttl
    # Manifests and segments, when the origin said nothing: a stand-in for the heuristic (section 4.2.2).
    what = changes if changes is not None else kind_of(path.partition("?")[0], get(headers, "content-type"))
    stream = stream_lifetime(status, what, policy.streams)
    if stream is not None:
        return stream
    if status in HEURISTIC_STATUSES or "public" in cc:
        last_modified = parse_http_date(get(headers, "last-modified"), now=response_time)
        date = parse_http_date(get(headers, "date"), now=response_time)
        if last_modified is not None:
            base = date if date is not None else response_time
            return min(max(0.0, (base - last_modified) * policy.heuristic_fraction), policy.heuristic_max)
    return 0


def current_age(headers: Headers, request_time: float, response_time: float, now: float) -> float:
    """RFC 9111 section 4.2.3."""
    date = parse_http_date(get(headers, "date"), now=response_time)
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    age_value = delta_seconds((get(headers, "age") or "").split(",")[0].strip()) or 0
    corrected_age_value = age_value + (response_time - request_time)
    return max(apparent_age, corrected_age_value) + (now - response_time)


class ReuseKind(Enum):
    FRESH = "fresh"  # serve it
    STALE_OK = "stale-ok"  # serve it stale: the client's max-stale, or stale-while-revalidate
    REVALIDATE = "revalidate"  # ask the origin first


@dataclass(frozen=True)
class Reuse:
    """How a stored response may answer a request.

    `background`: refresh it after serving (stale-while-revalidate).
    `stale_if_error`: a stale copy may answer if the origin fails or answers 5xx;
    `stale_if_unreachable`: if it cannot be reached at all (section 4.2.4, disconnected).
    `ttl` is lifetime - age (RFC 9211 section 2.4).
    """

    kind: ReuseKind
    ttl: float
    background: bool = False
    stale_if_error: bool = False
    stale_if_unreachable: bool = False
    by_request: bool = False  # REVALIDATE because of the request's directives, not the response's


def reuse(
    request_headers: Headers,
    status: int,
    headers: Headers,
    lifetime: float,
    age: float,
    policy: Policy,
    directives: Directives | None = None,
) -> Reuse:
    """May the stored response be reused for this request? (RFC 9111 section 4, 4.2.4, RFC 5861).
    `directives`: the stored response's (response_rules), when the caller has them at hand."""
    res = response_rules(headers, policy).directives if directives is None else directives
    req_cc_value = get(request_headers, "cache-control")
    req = cache_control(req_cc_value)
    if req_cc_value is None and "no-cache" in (get(request_headers, "pragma") or "").lower():
        req = {"no-cache": None}  # RFC 9111 section 5.4: Pragma only without Cache-Control
    ttl = lifetime - age
    no_cache = "no-cache" in res and res["no-cache"] is None  # qualified: those fields are not stored
    may_serve_stale = not no_cache and not ({"must-revalidate", "proxy-revalidate", "s-maxage"} & res.keys())
    swr = _window(res.get("stale-while-revalidate"), policy.stale_while_revalidate)
    sie = _window(req.get("stale-if-error"), _window(res.get("stale-if-error"), policy.stale_if_error))
    stale_if_error = may_serve_stale and sie > 0 and -ttl <= sie
    # Section 5.2.2.4 / 5.2.1.4: no-cache always goes to the origin first.
    if "no-cache" in req:
        return Reuse(ReuseKind.REVALIDATE, ttl, stale_if_error=stale_if_error, stale_if_unreachable=stale_if_error,
                     by_request=ttl > 0)
    if no_cache:
        return Reuse(ReuseKind.REVALIDATE, ttl, stale_if_error=stale_if_error, stale_if_unreachable=stale_if_error)
    max_age = delta_seconds(req.get("max-age")) if "max-age" in req else None
    min_fresh = delta_seconds(req.get("min-fresh")) or 0
    if max_age is not None and age > max_age:
        return Reuse(ReuseKind.REVALIDATE, ttl, stale_if_error=stale_if_error, stale_if_unreachable=stale_if_error,
                     by_request=ttl > 0)
    if ttl - min_fresh > 0:
        return Reuse(ReuseKind.FRESH, ttl)
    if may_serve_stale and "max-stale" in req:
        allowed = req["max-stale"]
        if allowed is None or -ttl <= (delta_seconds(allowed) or 0):
            return Reuse(ReuseKind.STALE_OK, ttl)
    if may_serve_stale and swr > 0 and -ttl <= swr and "min-fresh" not in req and max_age is None:
        return Reuse(ReuseKind.STALE_OK, ttl, background=True, stale_if_error=stale_if_error,
                     stale_if_unreachable=stale_if_error)
    # Only staleness sends it to the origin here (not the client's directives): when the origin
    # cannot be reached, the cache is "disconnected" and may serve it stale.
    unreachable_ok = policy.stale_if_unreachable and may_serve_stale and "min-fresh" not in req and max_age is None
    return Reuse(ReuseKind.REVALIDATE, ttl, stale_if_error=stale_if_error,
                 stale_if_unreachable=stale_if_error or unreachable_ok, by_request=ttl > 0)  # min-fresh


def _window(directive_value: str | None, default: int) -> int:
    seconds = delta_seconds(directive_value)
    return seconds if seconds is not None else default


def only_if_cached(request_headers: Headers) -> bool:
    """RFC 9111 section 5.2.1.7."""
    return "only-if-cached" in cache_control(get(request_headers, "cache-control"))


def request_forbids_storing(request_headers: Headers) -> bool:
    return "no-store" in cache_control(get(request_headers, "cache-control"))


def vary_fields(headers: Headers) -> tuple[str, ...]:
    """The request fields a response varies on, lower-cased and sorted."""
    return tuple(sorted({f.lower() for f in split_list(get(headers, "vary") or "")}))


def selection(response_headers: Headers, request_headers: Headers) -> str:
    """The secondary key of a response stored for this request ('' when it does not vary)."""
    fields = vary_fields(response_headers)
    return vary_key(fields, request_headers) if fields else ""


def vary_key(fields: tuple[str, ...], request_headers: Headers) -> str:
    """The secondary cache key: the request's values for the Vary fields (section 4.1).

    Values are normalised by joining lines and collapsing whitespace after commas.
    """
    parts = []
    for name in fields:
        value = get(request_headers, name)
        normal = None if value is None else ",".join(m.strip() for m in value.split(","))
        parts.append(f"{name}={normal!r}")
    return "\n".join(parts)


# RFC 9111 section 3.2 / 4.3.4: fields a 304 must not replace in the stored response.
_NOT_UPDATED = frozenset({"content-length", "content-range", "content-encoding", "transfer-encoding"})


def merge_304(stored: Headers, fresh: Headers) -> Headers:
    """Stored headers updated with those of a 304 (RFC 9111 section 4.3.4)."""
    replace = {n.lower() for n, _ in fresh if n.lower() not in _NOT_UPDATED}
    kept = [(n, v) for n, v in stored if n.lower() not in replace]
    return kept + [(n, v) for n, v in fresh if n.lower() in replace]
