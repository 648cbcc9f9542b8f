"""The cache as a state machine (RFC 9111): pure decisions, typed outcomes, time as a parameter.

Two steps, each a function of facts only:

    decide(request, entry, now)            -> Serve | Validate | Fetch | Relay | Answer
    on_response(request, sent, response)   -> StoreBlocks | StoreBody | Freshen | Pass
                                              | Forward | Refetch | ServeStale | BadGateway

The driver (`proxy/cache/`) executes the outcome against the store and the origin
and decides nothing about HTTP itself.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from enum import Enum

from . import freshness as fr
from .conditional import parse_etag
from .directives import Directives, Fields, Headers, get
from .headers import parse_http_date
from .lifetimes import Changes
from .manifests import stored_whole


class Fwd(Enum):
    """Why the cache went forward to the origin (RFC 9211 section 2.2)."""

    URI_MISS = "uri-miss"
    VARY_MISS = "vary-miss"
    MISS = "miss"
    REQUEST = "request"
    STALE = "stale"
    BYPASS = "bypass"
    METHOD = "method"
    PARTIAL = "partial"  # a stored response lacked blocks the answer needs: they came from the origin


@dataclass(frozen=True)
class Request:
    """What the decisions need to know about a client request."""

    method: str
    headers: Headers
    path: str  # the cache key's path, for the operator's default TTL rules


@dataclass(frozen=True)
class Stored:
    """A stored response: status, headers as the origin sent them, and when it was fetched.

    What follows from these alone is worked out once per instance (a remembered entry
    answers many hits) and is never stored with it.
    """

    status: int
    headers: Headers
    request_time: float
    response_time: float
    changes: Changes | None = dataclasses.field(default=None, kw_only=True)  # a manifest's body, read when stored
    stale_at: float | None = dataclasses.field(default=None, kw_only=True)  # stale from then on (a soft purge)

    @functools.cached_property
    def fields(self) -> Fields:
        """The headers, indexed by name (see Fields)."""
        return Fields(self.headers)

    @functools.cached_property
    def _age_when_received(self) -> float:
        return fr.current_age(self.fields, self.request_time, self.response_time, self.response_time)

    def age(self, now: float) -> float:
        """Its current age (RFC 9111 section 4.2.3): the age it had when received, plus the time since."""
        return self._age_when_received + (now - self.response_time)

    def freshness(self, path: str, policy: fr.Policy) -> tuple[float, Directives]:
        """Its freshness lifetime for requests of `path` (the operator's rules go by path) and
        its caching directives, under `policy`: worked out once per path (the same one, for
        every request of a key) while the policy is the same object.

        Marked stale at `stale_at` (a soft purge), its lifetime ends then: it is stale from that
        moment, and its stale windows (stale-while-revalidate, stale-if-error) count from it."""
        known = self._freshness.get(path)
        if known is None or known[0] is not policy:
            if len(self._freshness) >= _PATHS_KEPT:
                self._freshness.clear()
            lifetime = fr.freshness_lifetime(self.status, self.fields, path, self.response_time, policy, self.changes)
            if self.stale_at is not None:
                lifetime = min(lifetime, self.age(self.stale_at))
            known = self._freshness[path] = (policy, lifetime, fr.response_rules(self.fields, policy).directives)
        return known[1], known[2]

    @functools.cached_property
    def _freshness(self) -> dict[str, tuple[fr.Policy, float, Directives]]:
        return {}

    def __getstate__(self) -> dict[str, object]:
        """Only the fields are stored: what is derived from them is worked out again when read."""
        return {f.name: self.__dict__[f.name] for f in dataclasses.fields(self)}


_PATHS_KEPT = 4  # paths one stored response keeps its freshness for (one per key, in practice)


class PassReason(Enum):
    UNCACHEABLE = "uncacheable"  # the origin said not to store it: ask it each time, without waiting for others
    TOO_LARGE = "too large"  # over max_object_size: forward requests as they are


@dataclass(frozen=True)
class PassMarker:
    """A remembered decision not to store responses for this key, until `until`."""

    reason: PassReason
    until: float


Entry = Stored | PassMarker


# --- step 1: what to do with a request ---------------------------------------


@dataclass(frozen=True)
class Serve:
    """Answer from the stored response. `refresh`: revalidate in the background afterwards."""

    age: float
    ttl: float
    stale: bool = False
    refresh: bool = False


@dataclass(frozen=True)
class Validate:
    """Ask the origin whether the stored response is still good (RFC 9111 section 4.3.1)."""

    validators: Headers  # If-None-Match / If-Modified-Since; empty when the response has none
    fwd: Fwd
    age: float
    ttl: float
    stale_if_error: bool  # a 5xx or no answer may be met with the stale response
    stale_if_unreachable: bool = False  # no answer at all may be met with it


@dataclass(frozen=True)
class Fetch:
    """Nothing usable is stored: fetch, and store what may be stored.

    Usually a GET of the block the client needs first, and concurrent requests for
    the key wait for it (single flight). `as_is` when the answer is expected to be
    private or uncacheable: the client's request goes as it is, nobody waits for it,
    and a complete answer is still stored if it turns out storable.
    """

    fwd: Fwd
    as_is: bool = False
    detail: str | None = None


@dataclass(frozen=True)
class Relay:
    """Forward the request as it is and relay the answer; store nothing."""

    fwd: Fwd
    detail: str | None = None


@dataclass(frozen=True)
class Answer:
    """Answer with this status without asking the origin."""

    status: int
    fwd: Fwd
    detail: str


Action = Serve | Validate | Fetch | Relay | Answer


def decide(req: Request, entry: Entry | None, miss: Fwd, now: float, policy: fr.Policy) -> Action:
    """What to do with a request, given the stored entry it selects (RFC 9111 section 4).

    `miss` is the reason to give when nothing is stored (uri-miss or vary-miss).
    """
    if req.method not in ("GET", "HEAD"):
        return Relay(Fwd.METHOD)
    authorized = get(req.headers, "authorization") is not None
    if isinstance(entry, Stored) and authorized and not fr.allows_authorized(entry.fields):
        entry = None  # section 3.5: not reusable for a request with Authorization
    if isinstance(entry, PassMarker):
        if entry.reason is PassReason.TOO_LARGE:
            return Relay(Fwd.BYPASS, entry.reason.value)
        entry = None if entry.until <= now else entry
    if entry is None or isinstance(entry, PassMarker):
        if fr.only_if_cached(req.headers):
            return Answer(504, miss, "only-if-cached")  # section 5.2.1.7
        if entry is not None:  # remembered as uncacheable: stand aside, but store it if that changed
            fwd, detail = Fwd.BYPASS, PassReason.UNCACHEABLE.value
        elif authorized or fr.request_forbids_storing(req.headers):
            fwd, detail = miss, None
        else:
            return Fetch(miss)
        return Relay(fwd, detail) if req.method == "HEAD" else Fetch(fwd, as_is=True, detail=detail)
    age = entry.age(now)
    lifetime, directives = entry.freshness(req.path, policy)
    reuse = fr.reuse(req.headers, entry.status, entry.fields, lifetime, age, policy, directives)
    if reuse.kind is fr.ReuseKind.FRESH:
        return Serve(age, reuse.ttl)
    if reuse.kind is fr.ReuseKind.STALE_OK:
        return Serve(age, reuse.ttl, stale=True, refresh=reuse.background)
    if fr.only_if_cached(req.headers):
        return Answer(504, Fwd.STALE, "only-if-cached")
    # RFC 9211 section 2.2: "request" when a fresh response was not allowed by the request's directives.
    return Validate(validators(entry.headers), Fwd.REQUEST if reuse.by_request else Fwd.STALE, age, reuse.ttl,
                    reuse.stale_if_error, reuse.stale_if_unreachable)


def steady_until(serve: Serve, now: float) -> float:
    """Until when a fresh hit answered at `now` stays the same answer, byte for byte, to the
    same request for the same stored response (`now` itself when it may change at once).

    Time enters a hit only as whole seconds: its Date (RFC 9110 section 5.6.7), its Age
    (RFC 9111 section 5.1) and its Cache-Status ttl (RFC 9211 section 2.6). Its freshness
    (ttl - min-fresh > 0, age <= a request's max-age; section 4.2, 5.2.1) can change only
    where age or ttl reaches a whole number of seconds, since request directives are whole
    seconds. Age grows and ttl shrinks with time, one for one: the answer holds until the
    first of them steps.
    """
    if serve.stale or serve.refresh or serve.age < 0 or serve.ttl <= 0:
        return now
    date_steps = math.floor(now) + 1 - now
    age_steps = math.floor(serve.age) + 1 - serve.age if serve.age != math.floor(serve.age) else 0.0
    ttl_steps = serve.ttl - math.floor(serve.ttl)
    return now + min(date_steps, age_steps, ttl_steps)


def age_field(age: float) -> str:
    """The Age value of an answer `age` seconds old (RFC 9111 section 5.1: whole seconds, never negative)."""
    return str(int(max(age, 0)))


def validators(headers: Headers) -> Headers:
    """Conditional request fields for revalidating a stored response (RFC 9111 section 4.3.1)."""
    out = []
    etag = get(headers, "etag")
    if etag is not None:
        out.append(("If-None-Match", etag))
    last_modified = get(headers, "last-modified")
    if last_modified is not None:
        out.append(("If-Modified-Since", last_modified))
    return out


# --- step 2: what to do with the origin's answer ---------------------------------


@dataclass(frozen=True)
class Sent:
    """What the cache asked the origin for: `block` is the byte range [first, last] it asked for;
    None when it sent no Range of its own."""

    block: tuple[int, int] | None
    conditional: bool = False
    stale_if_error: bool = False
    stale_if_unreachable: bool = False


@dataclass(frozen=True)
class StoreBlocks:
    """A representation of known size: store it in blocks, serve while filling.

    `first_block` is where the body starts; `sliceable`: a strong validator proves
    that later blocks fetched by range are the same version, so missing blocks may
    be filled one by one. Otherwise every block comes from this one response.
    """

    size: int
    first_block: int
    sliceable: bool


@dataclass(frozen=True)
class StoreBody:
    """Store the whole body of this one response as it streams to the client (any status,
    a 200 of unknown length, a manifest); it becomes visible once complete."""


@dataclass(frozen=True)
class Freshen:
    """A 304 confirmed the stored response: serve it with these merged headers (section 4.3.4)."""

    headers: Headers


@dataclass(frozen=True)
class Pass:
    """Relay the response without storing it; `remember` marks the key uncacheable for a while."""

    remember: bool


@dataclass(frozen=True)
class Forward:
    """The response answers our block request, not the client's, and cannot be stored:
    forward the client's request as it is and relay that answer; `remember` as for Pass."""

    remember: bool


class Refetch(Enum):
    WHOLE = "whole"  # ask again without a Range: the whole body from one response
    UNCONDITIONAL = "unconditional"  # ask again without validators: the 304 was not for what we hold


@dataclass(frozen=True)
class ServeStale:
    """The origin failed and the stored response may be served stale (RFC 9111 section 4.2.4)."""

    fwd_status: int | None


@dataclass(frozen=True)
class BadGateway:
    """The origin's answer is wrong for what was asked (502)."""

    detail: str


Outcome = StoreBlocks | StoreBody | Freshen | Pass | Forward | Refetch | ServeStale | BadGateway

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def content_range(headers: Headers) -> tuple[int, int, int] | None:
    """(first, last, complete length) of a 206's Content-Range, or None."""
    m = _CONTENT_RANGE.fullmatch((get(headers, "content-range") or "").strip())
    if m is None:
        return None
    first, last, size = (int(g) for g in m.groups())
    return (first, last, size) if first <= last < size else None


def content_length(headers: Headers) -> int | None:
    value = get(headers, "content-length")
    return int(value) if value is not None and value.isdigit() else None


def strong_validator(headers: Headers) -> str | None:
    """A validator that identifies one version exactly (RFC 9110 section 8.8.1), or None.

    A strong entity-tag; else a Last-Modified at least a second before the response's
    Date (section 8.8.2.2).
    """
    tag = parse_etag(get(headers, "etag"))
    if tag is not None:
        return None if tag.weak else tag.opaque
    last_modified = get(headers, "last-modified")
    lm, date = parse_http_date(last_modified), parse_http_date(get(headers, "date"))
    if last_modified is not None and lm is not None and date is not None and date - lm >= 1:
        return "lm:" + last_modified
    return None


def on_response(
    req: Request, sent: Sent, status: int, headers: Headers, stored: Stored | None, policy: fr.Policy
) -> Outcome:
    """What to do with the origin's answer to a fetch or a validation."""
    if status >= 500 and sent.stale_if_error and stored is not None:
        return ServeStale(status)
    if status == 304:
        if not sent.conditional or stored is None:
            return Pass(remember=False)
        if not confirms(headers, stored.headers):
            return Refetch.UNCONDITIONAL
        return Freshen(fr.merge_304(stored.headers, headers))
    if status == 206 and sent.block is None:
        return Pass(remember=False)  # the answer to the client's own Range
    if status == 416 and sent.block is not None:
        return Refetch.WHOLE  # shorter than our block's start: the whole (maybe empty) body
    if not fr.storable("GET", req.headers, status, headers, policy):
        remember = status < 500 and not _request_prevents_storing(req.headers)
        return Forward(remember) if status == 206 else Pass(remember)
    # A manifest is stored from one whole response, so that its body is read once, as it is stored.
    path, content_type = req.path.partition("?")[0], get(headers, "content-type")
    if status == 206:
        outcome = _partial(sent, headers)
        if isinstance(outcome, StoreBlocks) and stored_whole(path, content_type, outcome.size):
            return Refetch.WHOLE
        return outcome
    size = content_length(headers)
    if status == 200 and size is not None and not stored_whole(path, content_type, size):
        return StoreBlocks(size, 0, strong_validator(headers) is not None)
    return StoreBody()


def _partial(sent: Sent, headers: Headers) -> Outcome:
    """A 206 to our block request: it must be exactly that block (RFC 9110 section 14.4)."""
    span = content_range(headers)
    if sent.block is None or span is None:
        return BadGateway("a 206 without a valid Content-Range")
    first, last, size = span
    if first != sent.block[0] or last != min(sent.block[1], size - 1):
        return BadGateway(f"asked for bytes {sent.block[0]}-{sent.block[1]}, got {first}-{last}/{size}")
    sliceable = strong_validator(headers) is not None
    if not sliceable and (first, last) != (0, size - 1):
        return Refetch.WHOLE  # blocks of an unvalidated object must come from one response
    return StoreBlocks(size, first, sliceable)


def confirms(response: Headers, stored: Headers) -> bool:
    """Does a 304 refer to the stored response? (RFC 9111 section 4.3.4)."""
    new_tag, old_tag = parse_etag(get(response, "etag")), parse_etag(get(stored, "etag"))
    if new_tag is not None:
        return old_tag is not None and new_tag.opaque == old_tag.opaque and (new_tag.weak or not old_tag.weak)
    new_lm = get(response, "last-modified")
    return new_lm is None or new_lm == get(stored, "last-modified")


def _request_prevents_storing(headers: Headers) -> bool:
    return get(headers, "authorization") is not None or fr.request_forbids_storing(headers)


def on_failure(sent: Sent, stored: Stored | None) -> ServeStale | None:
    """The origin could not be reached: serve stale if allowed, else fail (section 4.2.4)."""
    return ServeStale(None) if sent.stale_if_unreachable and stored is not None else None


# --- block fills -------------------------------------------------------------


class BlockAnswer(Enum):
    BODY = "body"  # the body is the block asked for
    WHOLE = "whole"  # a 200 of the same version: the block is inside the whole body
    CHANGED = "changed"  # another version now: forget the stored one
    BAD = "bad"  # a wrong answer for this version: fail the fill, keep the object


def block_answer(status: int, headers: Headers, validator: str, size: int, first: int, last: int) -> BlockAnswer:
    """Judge the origin's answer to a block request sent with If-Range (RFC 9110 section 13.1.5)."""
    if status in (200, 206) and strong_validator(headers) != validator:
        return BlockAnswer.CHANGED
    if status == 206:
        return BlockAnswer.BODY if content_range(headers) == (first, last, size) else BlockAnswer.BAD
    if status == 200:
        return BlockAnswer.WHOLE if content_length(headers) in (size, None) else BlockAnswer.CHANGED
    return BlockAnswer.CHANGED if status in (404, 410, 412, 416) else BlockAnswer.BAD


# --- requests to the origin -------------------------------------------------------

# Fields of the client's request that the cache replaces when it fetches for itself.
_CLIENT_ONLY = frozenset({"range", "if-range", "if-match", "if-none-match", "if-modified-since",
                          "if-unmodified-since", "accept-encoding", "cache-control", "pragma",
                          "content-length", "transfer-encoding", "expect"})  # the cache's GET has no body


def fetch_headers(client: Headers, block: tuple[int, int] | None, extra: Headers | None = None) -> Headers:
    """Headers of a request the cache makes to fill itself: the client's end-to-end fields
    without its range and preconditions, our Range, identity encoding, and `extra`."""
    kept = [(n, v) for n, v in client if n.lower() not in _CLIENT_ONLY]
    if block is not None:
        kept.append(("Range", f"bytes={block[0]}-{block[1]}"))
    return [*kept, ("Accept-Encoding", "identity"), *(extra or [])]


def as_fetched(client: Headers) -> Headers:
    """The client's fields as the cache's own requests send them, for selecting a stored variant
    (RFC 9111 section 4.1): the cache always asks for the identity encoding, so a response that
    varies on Accept-Encoding is the same for every client."""
    return [*((n, v) for n, v in client if n.lower() != "accept-encoding"), ("Accept-Encoding", "identity")]


def invalidated(method: str, status: int, target: str, others: list[str | None]) -> list[str]:
    """Cache keys an unsafe request's answer invalidates (RFC 9111 section 4.4): after a
    non-error status, the target and `others` (the keys of Location and Content-Location,
    None when not on this origin)."""
    if method in ("GET", "HEAD", "OPTIONS", "TRACE") or not 200 <= status < 400:
        return []
    return [target, *(key for key in others if key is not None and key != target)]
