"""Purges forwarded to the edges of the next tier (the `purge_peers` setting, e.g. a shield),
so that one purge reaches every tier: the peers forget first, then this edge, which could
otherwise fill again from a peer's old copy."""
from __future__ import annotations

import asyncio

import httpx

HOPS = "edgecache-purge-hops"  # request field: how many more tiers a purge may be forwarded to
MAX_HOPS = 8  # bounds a purge sent round a loop of misconfigured peers


def hops_left(received: str | None) -> int:
    """Tiers a purge may still be forwarded to: MAX_HOPS from a client, one less each tier."""
    if received is None or not received.strip().isdigit():
        return MAX_HOPS
    return min(int(received), MAX_HOPS)


class PurgePeers:
    """Sends a purge's query to each peer's /_edge/purge, with this edge's first write token."""

    def __init__(self, peers: tuple[str, ...], token: str | None, timeout: float) -> None:
        self.peers = tuple(p.rstrip("/") for p in peers)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False)

    async def purge(self, query: str, hops: str | None) -> list[str]:
        """Forward the purge to every peer at once; what went wrong, one line per peer that failed."""
        left = hops_left(hops)
        if left <= 0:
            return []
        results = await asyncio.gather(*(self._one(peer, query, left - 1) for peer in self.peers))
        return [problem for problem in results if problem]

    async def _one(self, peer: str, query: str, hops: int) -> str | None:
        try:
            r = await self.client.post(f"{peer}/_edge/purge?{query}", headers={**self.headers, HOPS: str(hops)})
        except httpx.HTTPError as e:
            return f"{peer}: {type(e).__name__} {e}".strip()
        return None if r.status_code == 200 else f"{peer}: {r.status_code} {r.text.strip()[:200]}".strip()

    async def aclose(self) -> None:
        await self.client.aclose()
