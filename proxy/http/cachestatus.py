"""The Cache-Status response field (RFC 9211) and the human X-Cache summary."""
from __future__ import annotations

CACHE_NAME = "edgecache"


def cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    ttl: float | None = None,
    detail: str | None = None,
) -> str:
    """e.g. 'edgecache; hit; ttl=42' or 'edgecache; fwd=uri-miss; fwd-status=200; stored'."""
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
    if detail:
        params.append(f'detail="{detail}"')
    return "; ".join([CACHE_NAME, *params])


def x_cache(*, hit: bool, stale: bool = False, bypass: bool = False) -> str:
    if bypass:
        return "BYPASS"
    if stale:
        return "STALE"
    return "HIT" if hit else "MISS"
