"""The one driver: asks the pure rules what to answer, then does the I/O on store and origin."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio

from .config import Settings
from .fills import BlockSource, block_request_headers
from .http import freshness as fr
from .http.cachestatus import cache_status, x_cache
from .http.conditional import conditions_from
from .http.freshness import Headers
from .http.headers import content_type_for, parse_http_date
from .http.model import Representation
from .http.plan import plan_response
from .http.ranges import parse_range
from .origins.base import Origin, OriginError, OriginResponse, Target, text_response
from .origins.local import LocalOrigin
from .store.disk import Store, StoreErrors
from .store.objects import CachedObject, VaryIndex, meta_key, vary_index_key
from .streaming import plan_chunks

log = logging.getLogger("edgecache")

INLINE_MAX = 256 * 1024  # largest non-200 body stored inline in its metadata
UNCACHEABLE_TTL = 120.0  # seconds an uncacheable answer sends requests straight to the origin
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
# Stored header fields the edge generates itself when it serves a stored object.
_GENERATED = frozenset({"etag", "last-modified", "content-type", "content-length", "content-range",
                        "accept-ranges", "age"})


@dataclass
class Reply:
    """A response to send: chunks None means no body (HEAD, 304); close() when sent."""

    status: int
    headers: Headers
    chunks: AsyncIterator[bytes] | None
    close: Callable[[], Awaitable[None]]


async def _nothing_to_close() -> None:
    return None


def text_reply(status: int, message: str, headers: Headers | None = None) -> Reply:
    text = text_response(status, message, headers)
    return Reply(text.status, text.headers, text.body, text.close)


@dataclass(frozen=True)
class Uploaded:
    """The outcome of an upload: the origin's status and what was stored."""

    status: int
    size: int
    etag: str | None
    content_type: str
    detail: str = ""


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    target: Target
    headers: Headers  # as received (lower-case names)
    body: AsyncIterator[bytes] | None = None


@dataclass
class _Flight:
    """A miss or revalidation in progress in this process; waiters reuse what it stores."""

    done: anyio.Event
    obj: CachedObject | None = None


@dataclass
class _Fetched:
    """What asking the origin gave: a stored object to serve, or a response to relay as is."""

    obj: CachedObject | None
    response: OriginResponse | None
    status: int  # the origin's status; 0 when another request's fetch was reused
    stored: bool = False
    revalidated: bool = False
    collapsed: bool = False


class EdgeService:
    def __init__(self, settings: Settings, origin: Origin, store: Store | None) -> None:
        self.settings = settings
        self.origin = origin
        self.store = store
        self.blocks = BlockSource(store, origin, settings.chunk_size) if store else None
        if self.blocks:
            self.blocks.on_changed = self._version_changed
        self.policy = fr.Policy(
            heuristic_fraction=settings.heuristic_fraction,
            heuristic_max=settings.heuristic_max_ttl,
            default_ttls=settings.ttl_rules,
            stale_while_revalidate=settings.stale_while_revalidate,
            stale_if_error=settings.stale_if_error,
        )
        self._flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task] = set()

    async def aclose(self) -> None:
        if self.blocks:
            await self.blocks.aclose()
        for task in list(self._tasks):
            task.cancel()
        await self.origin.aclose()
        if self.store:
            self.store.close()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- entry point ---------------------------------------------------------
    async def handle(self, req: ProxyRequest) -> Reply:
        try:
            if req.method not in ("GET", "HEAD"):
                return await self._forward_unsafe(req)
            if self.store is None:
                return await self._relay(req, "bypass")
            return await self._read(req)
        except OriginError as e:
            return self._origin_failed(e)

    def _origin_failed(self, e: OriginError) -> Reply:
        log.warning("origin failed: %s", e)
        message = (
            "Gateway Timeout: the origin did not answer in time"
            if e.status == 504
            else "Bad Gateway: the origin could not be reached"
        )
        return text_reply(e.status, message, [("Cache-Status", cache_status(fwd="miss", detail=e.kind)),
                                              ("X-Cache", "MISS")])

    # --- reads through the cache -----------------------------------------
    async def _read(self, req: ProxyRequest) -> Reply:
        primary = self.origin.cache_key(req.target)
        obj, fwd = await self._lookup(primary, req.headers)
        if obj is not None and obj.passthrough is not None:
            if obj.passthrough == "too large" or time.time() - obj.response_time < UNCACHEABLE_TTL:
                return await self._relay(req, "bypass", detail=obj.passthrough)
            obj = None  # remembered as uncacheable long enough ago: ask again
        if obj is not None and not _may_answer(obj, req.headers):
            obj = None
        if obj is None and not fr.only_if_cached(req.headers) and _request_prevents_storing(req.headers):
            # Authorization or no-store: the response cannot be stored, forward the request as it is.
            return await self._relay(req, fwd)
        if obj is None:
            if fr.only_if_cached(req.headers):
                return text_reply(504, "Gateway Timeout: not in cache (only-if-cached)",
                                  [("Cache-Status", cache_status(fwd=fwd, detail="only-if-cached"))])
            return await self._miss(req, primary, None, fwd)
        now = time.time()
        age = fr.current_age(obj.headers, obj.request_time, obj.response_time, now)
        lifetime = fr.freshness_lifetime(obj.status, obj.headers, primary, obj.response_time, self.policy)
        decision = fr.reuse(req.headers, obj.status, obj.headers, lifetime, age, self.policy)
        if decision.kind == "fresh":
            return self._serve(obj, req, age, cache_status(hit=True, ttl=decision.ttl), x_cache(hit=True))
        if decision.kind == "stale-ok":
            if decision.background:
                self._spawn(self._refresh(req, primary, obj))
            return self._serve(obj, req, age, cache_status(hit=True, ttl=decision.ttl, detail="stale"),
                               x_cache(hit=True, stale=True))
        if fr.only_if_cached(req.headers):
            return text_reply(504, "Gateway Timeout: stale in cache (only-if-cached)",
                              [("Cache-Status", cache_status(fwd="stale", detail="only-if-cached"))])
        requested = "no-cache" in fr.cache_control(fr.get(req.headers, "cache-control")) or decision.ttl > 0
        try:
            return await self._miss(req, primary, obj, "request" if requested else "stale",
                                    stale_if_error=decision.stale_if_error, age=age)
        except OriginError as e:
            if not decision.stale_if_error:
                raise
            log.warning("origin failed, serving stale: %s", e)
            return self._serve(obj, req, age, cache_status(fwd="stale", ttl=decision.ttl, detail=e.kind),
                               x_cache(hit=True, stale=True))

    async def _miss(
        self, req: ProxyRequest, primary: str, obj: CachedObject | None, fwd: str,
        *, stale_if_error: bool = False, age: float = 0.0,
    ) -> Reply:
        fetched = await self._collapsed_fetch(req, primary, obj)
        if fetched.response is not None and fetched.status >= 500 and obj is not None and stale_if_error:
            await fetched.response.close()
            return self._serve(obj, req, age, cache_status(fwd=fwd, fwd_status=fetched.status, detail="stale"),
                               x_cache(hit=True, stale=True))
        if fetched.response is not None:
            return self._relay_response(fetched.response, req.method,
                                        cache_status(fwd=fwd, fwd_status=fetched.status), "MISS")
        served = fetched.obj
        assert served is not None
        if served.passthrough is not None:
            return await self._relay(req, "bypass", detail=served.passthrough)
        status = cache_status(
            fwd=fwd,
            fwd_status=None if fetched.collapsed else fetched.status,
            stored=fetched.stored,
            detail="collapsed" if fetched.collapsed else None,
        )
        age = fr.current_age(served.headers, served.request_time, served.response_time, time.time())
        return self._serve(served, req, age, status, x_cache(hit=fetched.revalidated))

    async def _refresh(self, req: ProxyRequest, primary: str, obj: CachedObject) -> None:
        """stale-while-revalidate: refresh in the background, once."""
        try:
            fetched = await self._collapsed_fetch(req, primary, obj)
            if fetched.response is not None:
                await fetched.response.close()
        except (OriginError, StoreErrors) as e:
            log.warning("background revalidation failed: %s", e)

    async def _lookup(self, primary: str, headers: Headers, fresh: bool = False) -> tuple[CachedObject | None, str]:
        """The stored response selected for this request, and the fwd reason if none."""
        assert self.store is not None

        def lookup() -> tuple[CachedObject | None, str]:
            index = self.store.get(vary_index_key(primary), fresh)
            if isinstance(index, VaryIndex):
                obj = self.store.get_object(meta_key(primary, fr.vary_key(index.fields, headers)), fresh)
                return obj, "vary-miss"
            return self.store.get_object(meta_key(primary, ""), fresh), "uri-miss"

        try:
            return await anyio.to_thread.run_sync(lookup)
        except StoreErrors as e:
            log.warning("cache lookup failed, going to the origin: %s", e)
            return None, "miss"

    # --- asking the origin, once for many ------------------------------------
    async def _collapsed_fetch(self, req: ProxyRequest, primary: str, obj: CachedObject | None) -> _Fetched:
        """One origin exchange per primary key at a time, in this process and across workers."""
        flight = self._flights.get(primary)
        if flight is not None:
            await flight.done.wait()
            if flight.obj is not None and self._selects(flight.obj, primary, req.headers):
                return _Fetched(flight.obj, None, 0, collapsed=True)
            return await self._fetch(req, primary, obj)
        flight = self._flights[primary] = _Flight(anyio.Event())
        try:
            other = await self._wait_for_other_worker(req, primary, obj)
            if other is not None:
                flight.obj = other
                return _Fetched(other, None, 0, collapsed=True)
            fetched = await self._fetch(req, primary, obj)
            flight.obj = fetched.obj
            return fetched
        finally:
            del self._flights[primary]
            flight.done.set()

    def _selects(self, obj: CachedObject, primary: str, headers: Headers) -> bool:
        return obj.key == meta_key(primary, fr.selection(obj.headers, headers))

    async def _wait_for_other_worker(
        self, req: ProxyRequest, primary: str, obj: CachedObject | None
    ) -> CachedObject | None:
        """If another process is fetching this key, wait for what it stores (or for it to give up)."""
        assert self.store is not None
        lease, owner = "p|" + primary, secrets.token_hex(8)
        ttl = self.settings.origin_response_timeout + 5
        try:
            if await anyio.to_thread.run_sync(self.store.take_lease, lease, owner, ttl):
                self._spawn(self._release_after_fetch(lease, owner, primary))
                # Another worker may have stored it between our lookup and our lease.
                found, _ = await self._lookup(primary, req.headers, fresh=True)
                if found is not None and (obj is None or found.response_time != obj.response_time):
                    return found
                return None
            deadline = time.monotonic() + ttl
            while time.monotonic() < deadline:
                await anyio.sleep(0.02)
                found, _ = await self._lookup(primary, req.headers, fresh=True)
                if found is not None and (obj is None or found.response_time != obj.response_time):
                    return found
                if await anyio.to_thread.run_sync(self.store.lease_holder, lease) is None:
                    return None
        except StoreErrors as e:
            log.warning("fetch lease unavailable: %s", e)
        return None

    async def _release_after_fetch(self, lease: str, owner: str, primary: str) -> None:
        flight = self._flights.get(primary)
        if flight is not None:
            await flight.done.wait()
        assert self.store is not None
        try:
            await anyio.to_thread.run_sync(self.store.release_lease, lease, owner)
        except StoreErrors:
            pass

    async def _fetch(
        self, req: ProxyRequest, primary: str, obj: CachedObject | None, ranged: bool = True
    ) -> _Fetched:
        """Ask the origin for the block the client needs first (conditionally if we hold a copy).

        Without `ranged`, ask for the whole body (after a 416: the object is
        shorter than the block asked for, or empty).
        """
        block_size = self.settings.block_size
        first_block = _first_block(fr.get(req.headers, "range"), block_size) if req.method == "GET" else 0
        headers = block_request_headers(req.headers, first_block * block_size, (first_block + 1) * block_size - 1, None)
        if not ranged:
            headers = [(n, v) for n, v in headers if n != "Range"]
        if obj is not None:
            headers += _revalidation_headers(obj)
        request_time = time.time()
        response = await self.origin.request("GET", req.target, headers)
        response_time = time.time()
        if response.status == 304 and obj is not None:
            await response.close()
            etag = response.header("etag")
            if etag is not None and obj.origin_etag is not None and etag != obj.origin_etag:
                return await self._fetch(req, primary, None, ranged)
            refreshed = dataclasses.replace(
                obj,
                headers=fr.merge_304(obj.headers, response.headers),
                request_time=request_time,
                response_time=response_time,
            )
            await self._put_meta(primary, req.headers, refreshed)
            return _Fetched(refreshed, None, 304, stored=True, revalidated=True)
        if response.status == 416 and ranged:
            await response.close()
            return await self._fetch(req, primary, obj, ranged=False)
        if response.status in (200, 206):
            return await self._store_representation(req, primary, obj, response, request_time, response_time, first_block)
        return await self._store_other(req, primary, obj, response, request_time, response_time)

    async def _store_representation(
        self, req: ProxyRequest, primary: str, old: CachedObject | None, response: OriginResponse,
        request_time: float, response_time: float, first_block: int,
    ) -> _Fetched:
        size = _representation_size(response)
        headers = [(n, v) for n, v in response.headers if n.lower() not in ("content-length", "content-range")]
        if size is None or not fr.storable("GET", req.headers, 200, headers):
            return await self._uncacheable(req, primary, response, response_time)
        origin_etag = response.header("etag")
        last_modified = parse_http_date(response.header("last-modified"), now=response_time)
        key = meta_key(primary, fr.selection(headers, req.headers))
        obj = CachedObject(
            key=key,
            status=200,
            headers=headers,
            size=size,
            etag=origin_etag or (f'"{last_modified:x}-{size:x}"' if last_modified is not None else None),
            origin_etag=origin_etag,
            last_modified=last_modified,
            request_time=request_time,
            response_time=response_time,
            block_size=self.settings.block_size,
            passthrough="too large" if size > self.settings.max_object_size else None,
        )
        assert self.blocks is not None
        index = first_block if response.status == 206 else 0
        # Claim the block before the metadata is visible, so no other worker fetches it again.
        progress = await self.blocks.claim(obj, index) if size and obj.passthrough is None else None
        if not await self._put_meta(primary, req.headers, obj):
            if progress is not None:
                self.blocks.abandon(progress)
            return await self._uncacheable(req, primary, response, None)
        if old is not None and old.validator != obj.validator:
            self._spawn(self._drop_blocks(old))
        if obj.passthrough is not None:
            await response.close()
            return _Fetched(obj, await self._forward(req), response.status)
        if progress is None:
            await response.close()
        else:
            self.blocks.fill(obj, req.target, req.headers, index, progress, response)
        return _Fetched(obj, None, response.status, stored=True)

    async def _store_other(
        self, req: ProxyRequest, primary: str, old: CachedObject | None, response: OriginResponse,
        request_time: float, response_time: float,
    ) -> _Fetched:
        """A response other than the representation (3xx, 404, 5xx...): stored inline when small."""
        size = response.content_length
        if size is None or size > INLINE_MAX or not fr.storable("GET", req.headers, response.status, response.headers):
            remember = response.status < 400 and size is not None and size <= INLINE_MAX
            return await self._uncacheable(req, primary, response, response_time if remember else None)
        body = bytearray()
        async for chunk in response.body:
            body += chunk
            if len(body) > size:
                break
        await response.close()
        if len(body) != size:
            raise OriginError("unreachable", f"origin sent {len(body)} bytes of a {size}-byte body")
        obj = CachedObject(
            key=meta_key(primary, fr.selection(response.headers, req.headers)),
            status=response.status,
            headers=[(n, v) for n, v in response.headers if n.lower() != "content-length"],
            size=size,
            etag=response.header("etag"),
            origin_etag=response.header("etag"),
            last_modified=parse_http_date(response.header("last-modified"), now=response_time),
            request_time=request_time,
            response_time=response_time,
            block_size=self.settings.block_size,
            body=bytes(body),
        )
        stored = await self._put_meta(primary, req.headers, obj)
        if old is not None and old.validator != obj.validator:
            self._spawn(self._drop_blocks(old))
        return _Fetched(obj, None, response.status, stored=stored)

    async def _uncacheable(
        self, req: ProxyRequest, primary: str, response: OriginResponse, remember_at: float | None
    ) -> _Fetched:
        """Not storable: relay the response when it answers the client's request, else ask again.

        A 206 holds our block, not what the client asked for; anything else answers
        any GET (a server may ignore Range, RFC 9110 section 14.2). With
        `remember_at`, a marker (no content) sends the next requests for a while
        straight to the origin, without the block request first.
        """
        if remember_at is not None:
            marker = CachedObject(
                key=meta_key(primary, ""), status=response.status, headers=[], size=0, etag=None,
                origin_etag=None, last_modified=None, request_time=remember_at, response_time=remember_at,
                block_size=self.settings.block_size, passthrough="uncacheable",
            )
            await self._put_meta(primary, req.headers, marker)
        if response.status == 206:
            await response.close()
            forwarded = await self._forward(req)
            return _Fetched(None, forwarded, forwarded.status)
        return _Fetched(None, response, response.status)

    async def _put_meta(self, primary: str, request_headers: Headers, obj: CachedObject) -> bool:
        assert self.store is not None
        vary = fr.vary_fields(obj.headers)

        def put() -> None:
            if vary:
                index = self.store.get(vary_index_key(primary))
                selections = index.selections if isinstance(index, VaryIndex) and index.fields == vary else frozenset()
                self.store.put(vary_index_key(primary), VaryIndex(vary, selections | {obj.key}))
            elif self.store.get(vary_index_key(primary)) is not None:
                self.store.delete(vary_index_key(primary))  # it no longer varies
            self.store.put(obj.key, obj)

        try:
            await anyio.to_thread.run_sync(put)
            return True
        except StoreErrors as e:
            log.warning("metadata not stored: %s", e)
            return False

    async def _version_changed(self, obj: CachedObject) -> None:
        """A fill met a new version at the origin: forget the old one so the next request refetches."""
        assert self.store is not None
        try:
            await anyio.to_thread.run_sync(self.store.delete, obj.key)
        except StoreErrors:
            pass
        await self._drop_blocks(obj)

    async def _drop_blocks(self, obj: CachedObject) -> None:
        assert self.store is not None
        try:
            await anyio.to_thread.run_sync(self.store.drop_blocks, obj)
        except StoreErrors as e:
            log.warning("old blocks not dropped: %s", e)

    async def invalidate(self, primary: str) -> int:
        """Forget every stored response for a primary key (RFC 9111 section 4.4); count them."""
        if self.store is None:
            return 0
        return await anyio.to_thread.run_sync(self.store.purge, primary)

    async def purge(self, path: str | None, prefix: str | None) -> list[str]:
        """Purge one cache key or all under a prefix; the keys that held something."""
        if self.store is None:
            return []
        if prefix is not None:
            return await anyio.to_thread.run_sync(self.store.purge_prefix, prefix)
        assert path is not None
        return [path] if await self.invalidate(path) else []

    # --- uploads -------------------------------------------------------------------
    async def upload(
        self, target: Target, chunks: AsyncIterator[bytes], content_type: str | None, length: int | None = None
    ) -> Uploaded:
        """Store a file at the origin (streamed), then forget what the edge cached for it."""
        if isinstance(self.origin, LocalOrigin):
            created, rep = await self.origin.write(target.path, chunks)
            uploaded = Uploaded(201 if created else 200, rep.size, rep.etag, rep.content_type)
        else:
            uploaded = await self._upload_upstream(target, chunks, content_type, length)
        if 200 <= uploaded.status < 300:
            await self.invalidate(self.origin.cache_key(target))
        return uploaded

    async def _upload_upstream(
        self, target: Target, chunks: AsyncIterator[bytes], content_type: str | None, length: int | None
    ) -> Uploaded:
        size = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                yield chunk

        media = content_type or content_type_for(target.path)
        headers = [("Content-Type", media)] + ([("Content-Length", str(length))] if length is not None else [])
        response = await self.origin.request("PUT", target, headers, counted())
        detail = b""
        try:
            async for chunk in response.body:
                detail += chunk[: 1024 - len(detail)]
        finally:
            await response.close()
        return Uploaded(response.status, size, response.header("etag"), media,
                        detail.decode("utf-8", "replace").strip())

    # --- serving ---------------------------------------------------------------
    def _serve(self, obj: CachedObject, req: ProxyRequest, age: float, status: str, xcache: str) -> Reply:
        extra = [("Age", str(int(max(age, 0)))), ("Cache-Status", status), ("X-Cache", xcache)]
        if obj.body is not None:  # a stored non-200 response
            headers = [*obj.headers, ("Content-Length", str(obj.size)), *extra]
            body = obj.body

            async def inline() -> AsyncIterator[bytes]:
                yield body

            has_body = req.method == "GET" and obj.status not in (204, 304)
            return Reply(obj.status, headers, inline() if has_body else None, _nothing_to_close)
        rep = Representation(
            size=obj.size,
            etag=obj.etag,
            last_modified=obj.last_modified,
            content_type=fr.get(obj.headers, "content-type") or content_type_for(req.target.path),
            extra_headers=tuple((n, v) for n, v in obj.headers if n.lower() not in _GENERATED),
        )
        plan = plan_response(
            req.method, conditions_from(req.headers), fr.get(req.headers, "range"), rep,
            max_ranges=self.settings.max_ranges, boundary=secrets.token_hex(12), now=time.time(),
        )
        headers = [*plan.headers, *extra]
        if req.method == "HEAD" or not plan.body:
            return Reply(plan.status, headers, None, _nothing_to_close)
        blocks = self.blocks
        assert blocks is not None

        def reader(start: int, end: int) -> AsyncIterator[bytes]:
            return blocks.read(obj, req.target, req.headers, start, end)

        return Reply(plan.status, headers, plan_chunks(plan, reader), _nothing_to_close)

    # --- straight through -----------------------------------------------------------
    async def _forward(self, req: ProxyRequest) -> OriginResponse:
        return await self.origin.request(req.method, req.target, req.headers, req.body)

    async def _relay(self, req: ProxyRequest, fwd: str, detail: str | None = None) -> Reply:
        response = await self._forward(req)
        xcache = "BYPASS" if fwd == "bypass" else "MISS"
        return self._relay_response(response, req.method, cache_status(fwd=fwd, fwd_status=response.status, detail=detail), xcache)

    def _relay_response(self, response: OriginResponse, method: str, status: str, xcache: str) -> Reply:
        headers = [*response.headers, ("Cache-Status", status), ("X-Cache", xcache)]
        has_body = method != "HEAD" and response.status not in (204, 304) and response.status >= 200
        return Reply(response.status, headers, response.body if has_body else None, response.close)

    async def _forward_unsafe(self, req: ProxyRequest) -> Reply:
        """Other methods go to the origin uncached; success invalidates the target (RFC 9111 section 4.4)."""
        response = await self._forward(req)
        if self.store is not None and 200 <= response.status < 400:
            primary = self.origin.cache_key(req.target)
            targets = {primary} | {
                p for p in (_same_origin_path(response.header(h)) for h in ("location", "content-location")) if p
            }
            for target in targets:
                try:
                    await self.invalidate(target)
                except StoreErrors as e:
                    log.warning("invalidation of %s failed: %s", target, e)
        return self._relay_response(response, req.method, cache_status(fwd="method", fwd_status=response.status), "BYPASS")


def _first_block(range_field: str | None, block_size: int) -> int:
    """The block holding the first byte a Range asks for; 0 when there is none or it needs the size."""
    specs = parse_range(range_field) if range_field else None
    firsts = [first for first, _ in specs or [] if first is not None]
    if not firsts or len(firsts) < len(specs or []):
        return 0
    return min(firsts) // block_size


def _request_prevents_storing(headers: Headers) -> bool:
    return fr.get(headers, "authorization") is not None or fr.request_forbids_storing(headers)


def _may_answer(obj: CachedObject, headers: Headers) -> bool:
    """A stored response answers a request with Authorization only if it says so (RFC 9111 section 3.5)."""
    if fr.get(headers, "authorization") is None:
        return True
    return fr.allows_authorized(obj.headers)


def _revalidation_headers(obj: CachedObject) -> Headers:
    headers = []
    if obj.origin_etag:
        headers.append(("If-None-Match", obj.origin_etag))
    last_modified = fr.get(obj.headers, "last-modified")
    if last_modified:
        headers.append(("If-Modified-Since", last_modified))
    return headers


def _representation_size(response: OriginResponse) -> int | None:
    if response.status == 206:
        m = _CONTENT_RANGE.fullmatch((response.header("content-range") or "").strip())
        return int(m.group(3)) if m else None
    return response.content_length


def _same_origin_path(value: str | None) -> str | None:
    """A Location / Content-Location that names a path on the origin (not another host)."""
    if not value or not value.startswith("/") or value.startswith("//"):
        return None
    return value

