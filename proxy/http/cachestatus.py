"""The Cache-Status response field (RFC 9211) and the human X-Cache summary."""
from __future__ import annotations

from .directives import Headers

CACHE_NAME = "edgecache"


def cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    ttl: float | None = None,
    collapsed: bool = False,
    detail: str | None = None,
) -> str:
    """e.g. 'edgecache; hit; ttl=42' or 'edgecache; fwd=uri-miss; fwd-status=200; stored'
    (RFC 9211 section 2: the parameters in its order)."""
    params = []
    if hit:
        params.append("hit")
    if fwd:
        params.append(f"fwd={fwd}")
    if fwd_status is not None:
        params.append(f"fwd-status={fwd_status}")
    if ttl is not None:
        params.append(f"ttl={int(ttl)}")
    if stored:
        params.append("stored")
    if collapsed:
        params.append("collapsed")
    if detail:
        params.append(f'detail="{detail}"')
    return "; ".join([CACHE_NAME, *params])


def x_cache(*, hit: bool, stale: bool = False, bypass: bool = False) -> str:
    if bypass:
        return "BYPASS"
    if stale:
        return "STALE"
    return "HIT" if hit else "MISS"


def chained(headers: Headers, name: str) -> Headers:
    """The fields of a response with one Cache-Status: the members it came with from the
    next hop (relayed or stored), in order, then this cache's own member, which the driver
    appends last as CACHE_NAME and which is named `name` here (RFC 9211 section 2: a cache
    keeps the members it received and appends its own, so the first is nearest the origin).
    X-Cache is one value, this cache's: the next hop's is dropped."""
    if name == CACHE_NAME:  # the usual case, one member (this cache's) and one X-Cache: as it is
        names = [n.lower() for n, _ in headers]  # runs on every response: counted in C, not field by field
        if names.count("cache-status") <= 1 and names.count("x-cache") <= 1:
            return headers
    return _chained(headers, name)


def _chained(headers: Headers, name: str) -> Headers:
    statuses: list[str] = []
    summaries: list[str] = []
    others: Headers = []
    for n, v in headers:
        if len(n) in (7, 12):
            low = n.lower()
            if low == "cache-status":
                if v.strip():
                    statuses.append(v.strip())
                continue
            if low == "x-cache":
                summaries.append(v)
                continue
        others.append((n, v))
    if not statuses or (len(statuses) == 1 and len(summaries) <= 1 and name == CACHE_NAME):
        return headers  # one hop, default name: as it is
    own = statuses[-1]
    if own == CACHE_NAME or own.startswith(CACHE_NAME + ";"):
        own = name + own[len(CACHE_NAME):]
    others.append(("Cache-Status", ", ".join([*statuses[:-1], own])))
    return others + [("X-Cache", summaries[-1])] if summaries else others
