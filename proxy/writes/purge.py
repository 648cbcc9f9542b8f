"""POST /_edge/purge: forget (or, soft, mark stale) what the edge cached by path, prefix or tag,
the next tier first (purge_peers)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..config import Settings
from ..http.tags import is_tag
from ..request.paths import BadPath, HiddenPath, key_prefix, query_value, typed_key
from ..server.texts import text
from ..service import EdgeService
from ..store.disk import StoreErrors
from .guard import WriteGuard
from .peers import HOPS, PurgePeers

_SOFT = {"1": True, "true": True, "0": False, "false": False}  # ?soft= of a purge


class PurgeRoute:
    def __init__(self, settings: Settings, service: EdgeService, guard: WriteGuard, peers: PurgePeers | None) -> None:
        self.settings = settings
        self.service = service
        self.guard = guard
        self.peers = peers

    async def answer(self, request: Request) -> Response:
        refusal = self.guard.refusal(request)
        if refusal is not None:
            return refusal
        http_origin = self.settings.origin_is_http
        query = request.scope.get("query_string", b"").decode("latin-1")
        path, prefix, tag = (query_value(query, name) for name in ("path", "prefix", "tag"))
        soft = _SOFT.get(query_value(query, "soft") or "0")
        if [path, prefix, tag].count(None) != 2:
            return text(400, "Bad Request: give exactly one of ?path=/some/file, ?prefix=/some/folder/ or ?tag=name")
        if soft is None:
            return text(400, "Bad Request: soft is 1 (mark stale, the next request revalidates) or 0")
        if tag is not None and not is_tag(tag):
            return text(400, "Bad Request: a tag is 1 to 1024 visible ASCII characters, without commas")
        key = None
        if path is not None:
            # A directory origin's keys are decoded paths; an HTTP origin's are paths as
            # requested, so ?path= names one as it was requested ('/x%FF.mp4'; other
            # characters stand for their UTF-8 bytes, so '/a b' is '/a%20b').
            try:
                key = typed_key(path, http_origin)
            except (BadPath, HiddenPath) as e:
                return text(400, f"Bad Request: {e}")
        # The next tier first: this edge could otherwise fill again from its old copy.
        failed = await self.peers.purge(query, request.headers.get(HOPS)) if self.peers is not None else []
        try:
            purged = await self.service.purge(key, None if prefix is None else key_prefix(prefix, http_origin), tag,
                                              soft)
        except StoreErrors as e:
            return text(503, f"Service Unavailable: the cache could not be purged ({e})")
        answer = {"purged": purged, "count": len(purged), **({"peers_failed": failed} if failed else {})}
        return JSONResponse(answer, status_code=502 if failed else 200, headers={"Cache-Control": "no-store"})
