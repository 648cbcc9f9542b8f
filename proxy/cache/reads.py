"""The read path: asks `decide` and `on_response` what to do, and does it on the store and origin."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import anyio

from ..config import Settings
from ..http import cache as hc
from ..http.cache import Fwd
from ..http.cachestatus import cache_status, x_cache
from ..http.conditional import conditions_from
from ..http.directives import Fields, Headers, get
from ..http.freshness import Policy, selection, stored_headers, vary_fields
from ..http.headers import format_http_date
from ..http.lifetimes import Changes, changes_of
from ..http.manifests import stored_whole
from ..http.model import ResponsePlan, Span
from ..http.plan import one_span, plan_response, respan, same_but_span
from ..http.ranges import content_range, parse_range
from ..http.tags import response_tags
from ..origins.base import Origin, OriginError, OriginResponse, Target
from ..store.disk import Store, StoreErrors
from ..store.objects import CachedObject, meta_key
from ..streaming import Chunk, FileSpan, Given, multipart_boundary, plan_chunks, size_of
from .blocks import IN_MEMORY, BlockSource, Coming
from .entries import Entries
from .fills import Filler, FillFailed
from .flights import Flight, Flights
from .hits import HitTally
from .replies import InHand, Reply, Retimed, Steady, Twin, nothing_to_close, relay, relay_forwarded, text_reply
from .segments import MANIFEST_BASE, Parsed, SegmentPrefetch, read_manifest
from .spool import Spool
from .threads import StoreThreads
from .whole import read_whole, whole_size

log = logging.getLogger("edgecache")

UNCACHEABLE_TTL = 120.0  # seconds an uncacheable answer sends requests straight to the origin
COLLAPSE_ROUNDS = 3  # times a request waits for another's exchange before it asks the origin itself
REFETCHES = 2  # times one request asks the origin again after an answer it could not use (hc.Refetch)
PART_SWEEP_INTERVAL = 60.0  # seconds between sweeps of part files left by dead fills (kill -9 of a worker)
SPOOL_COLLAPSE = 1.0  # seconds others wait for a relayed body to be stored before asking the origin
EAGER_BLOCKS = 16  # missing blocks of one answer filled, and their origin's answer awaited, before its status line
WHOLE_BACKLOG = 64  # entries waiting for the store's writer beyond which a small miss waits for its own store
_FRAMING = frozenset({"content-length", "content-range"})


@dataclasses.dataclass(frozen=True)
class ProxyRequest:
    method: str
    target: Target
    headers: Headers  # as received (lower-case names)
    body: AsyncIterator[bytes] | None = None
    prefetch: bool = False  # the cache's own read ahead of a player (segments.py), not a client's


@dataclasses.dataclass(frozen=True)
class _Exchange:
    """One request's facts for the read path, and what was found when it was looked up: the
    key's generation, its change mark (Store.change_mark, taken just before), the Vary fields
    that selected the entry, and the time it was decided at."""

    req: ProxyRequest
    primary: str
    facts: hc.Request
    generation: int | None
    mark: tuple[int, int]
    varies_on: tuple[str, ...]
    now: float
    purges: int  # Store.purge_mark() as it was looked up

    @property
    def method(self) -> str:
        return self.req.method


class ReadPath:
    def __init__(self, settings: Settings, origin: Origin, store: Store, policy: Policy) -> None:
        self.settings = settings
        self.origin = origin
        self.store = store
        self.policy = policy
        self.threads = StoreThreads(4, store.connect)
        self.entries = Entries(store, self.threads)
        self.filler = Filler(store, self.threads, origin, self.entries.forget)
        self.blocks = BlockSource(store, self.threads, origin, self.filler, settings.chunk_size,
                                  settings.read_ahead_blocks)
        self.flights = Flights(store, settings.origin_response_timeout + 5)
        self._storing: dict[str, asyncio.Task[None]] = {}  # small answers given: the tasks storing them
        self.hits = HitTally()
        self.segments = SegmentPrefetch(
            settings.prefetch_segments, settings.prefetch_max_fills, store, self.threads, self.entries,
            origin.cache_key, settings.origin_is_http, settings.serve_dotfiles, self.prefetch, self.filler.spawn,
        ) if settings.prefetch_segments else None

    def start(self) -> None:
        """Background upkeep while serving: part files of dead fills are swept."""
        self.filler.spawn(self._sweep_parts())

    async def _sweep_parts(self) -> None:
        while True:
            await asyncio.sleep(PART_SWEEP_INTERVAL)
            try:
                removed = await self.threads.run(self.store.sweep_parts, PART_SWEEP_INTERVAL)
            except StoreErrors as e:
                log.warning("part files not swept: %s", e)
            else:
                if removed:
                    log.info("swept %d part files of dead fills", removed)

    async def aclose(self) -> None:
        await self.settled()
        await self.filler.aclose()
        await self.entries.aclose()
        self.flights.close()
        self.blocks.close()
        self.threads.close()

    async def settled(self) -> None:
        """Until the stores of the small answers given so far have ended (what a purge then looks at
        holds them); those of answers given meanwhile are not waited for."""
        if self._storing:  # (asyncio.wait cancels none of them)
            await asyncio.wait(list(self._storing.values()))

    # --- a request ---------------------------------------------------------------
    async def read(self, req: ProxyRequest) -> Reply:
        primary = self.origin.cache_key(req.target)
        storing = self._storing.get(primary)
        if storing is not None:  # answered already, its store still to commit: what it stores is seen
            await asyncio.wait([storing], timeout=self.flights.wait_limit)
        facts = hc.Request(req.method, req.headers, primary)
        flight: Flight | None = None  # once we lead the key's exchange with the origin
        attempt = -1
        try:
            while True:  # a round ends in an answer from round COLLAPSE_ROUNDS on (no waiting, no looking again)
                attempt += 1
                mark, purges = self.store.change_mark(primary), self.store.purge_mark()
                found = await self.entries.lookup(primary, req.headers, fresh=attempt > 0, epoch=mark[1])
                now = time.time()
                ex = _Exchange(req, primary, facts, found.generation, mark, found.varies_on, now, purges)
                action = hc.decide(facts, found.entry, found.miss, now, self.policy)
                stored = found.entry if isinstance(found.entry, CachedObject) else None
                if isinstance(action, (hc.Serve, hc.Answer, hc.Relay)) or (
                        isinstance(action, hc.Fetch) and action.as_is):
                    if flight is not None:
                        flight.end()
                        flight = None
                    if not isinstance(action, hc.Serve):
                        return await self._without_flight(ex, stored, action)
                    assert stored is not None
                    try:
                        return await _primed(await self._serve_stored(ex, stored, action))
                    except StoreErrors as e:  # our disk, not the origin: serve from the origin
                        log.warning("stored body unreadable, relaying %s: %s", primary, e)
                        return relay_forwarded(await self._forward(req), req.method, Fwd.MISS, "store error")
                    except FillFailed as e:  # gone, or its one fill died: look again, and fetch it anew
                        if attempt >= COLLAPSE_ROUNDS:
                            raise OriginError("unreachable", str(e)) from None
                        log.info("stored body of %s gone before the first byte, looking again: %s", primary, e)
                        continue
                if flight is None and attempt < COLLAPSE_ROUNDS:
                    joined = await self.flights.join(primary)
                    if isinstance(joined, OriginError):
                        # The request we waited for found the origin failing: so do we, stale if allowed.
                        allowed = isinstance(action, hc.Validate) and hc.on_failure(
                            hc.Sent(None, stale_if_unreachable=action.stale_if_unreachable), stored) is not None
                        if stored is None or not allowed:
                            raise joined
                        return self._serve_stale(ex, stored, action, None, joined.kind)
                    flight = joined
                    # Waiting ended: look again, the leader has stored what it could. Leading: look once
                    # more if anything was stored for the key since it was looked up (in any process).
                    if flight is None or self.store.changes_at(mark[0]) != mark[1]:
                        continue
                leader, flight = flight, None
                return await self._exchange(ex, stored, action, leader)
        finally:
            if flight is not None:
                flight.end()

    async def prefetch(self, target: Target, headers: Headers) -> Reply:
        """A GET the cache makes of itself, ahead of a player (see segments.py)."""
        return await self.read(ProxyRequest("GET", target, headers, prefetch=True))

    async def _without_flight(self, ex: _Exchange, stored: CachedObject | None,
                              action: hc.Answer | hc.Relay | hc.Fetch) -> Reply:
        """Actions that need no single flight: answer, relay, or fetch as the client asked."""
        if ex.req.prefetch:  # what the cache would not store is not fetched ahead of anyone
            return Reply(204, [], None, nothing_to_close)
        if isinstance(action, hc.Answer):
            return text_reply(action.status, f"Gateway Timeout: {action.detail}",
                              [("Cache-Status", cache_status(fwd=action.fwd.value, detail=action.detail))])
        if isinstance(action, hc.Relay):
            return relay_forwarded(await self._forward(ex.req), ex.method, action.fwd, action.detail)
        return await self._exchange(ex, None, action, None)

    async def _serve_stored(self, ex: _Exchange, obj: CachedObject, action: hc.Serve) -> Reply:
        """Answer from the stored response: a hit when every block the answer needs is stored, else a
        miss (`fwd=partial`) once the fills of the missing blocks have the origin's answer."""
        if action.refresh:
            self.filler.spawn(self._refresh(ex, obj))
        plan = self._plan(ex.req, obj, ex.now)
        partial = await self._fill_missing(ex, obj, needed_blocks(obj, plan, ex.method))
        if partial is not None:
            status = cache_status(fwd=Fwd.PARTIAL.value, fwd_status=partial.status, collapsed=partial.collapsed)
            return self._serve(ex.req, obj, action.age, status, x_cache(hit=False), now=ex.now, plan=plan)
        if not ex.req.prefetch:  # the cache policy and the listing count clients' hits only
            self.hits.count(obj.key)
        detail = "stale" if action.stale else None
        status = cache_status(hit=True, ttl=action.ttl, detail=detail)
        xcache = x_cache(hit=True, stale=action.stale)
        reply = self._serve(ex.req, obj, action.age, status, xcache, now=ex.now, plan=plan)
        until = hc.steady_until(action, ex.now)
        if until > ex.now:
            # (Not when the response varies on Range: another Range selects another stored response.)
            if reply.in_hand and plan is not None and ex.method == "GET" and one_span(plan) and \
                    "range" not in ex.varies_on and isinstance(ex.req.headers, Fields) and \
                    ex.req.headers.reads is not None:
                reply.rerange = self._rerange(ex.req.target, ex.req.headers.reads, obj, plan)
            if reply.whole is not None or reply.rerange is not None:
                reply.steady = Steady(ex.now, until, *ex.mark, obj.key, ex.varies_on,
                                      self._renewal(ex, obj, get(reply.headers, "date")))
        return reply

    def _renewal(self, ex: _Exchange, obj: CachedObject,
                 date: str | None) -> Callable[[Fields, float], Retimed | None] | None:
        """How the steady hit of `ex` is the answer at a later time (Steady.renew): the rules decide
        again, on the same stored response, for a request asking the same (its fields those they
        read); while that is a fresh hit, only its Date (when the edge dated it: `date` is the
        hit's), Age and ttl differ (http.cache.steady_until). None when the hit's Date cannot be
        told apart from the stored response's own (stored in the second it was answered in); and
        for a manifest the segment planner follows: each answer of one by the read path plans the
        segments its players ask for next (a live playlist's plan moves with time), as it did
        when every kept answer ended within a second."""
        if self.segments is not None and obj.changes is not None:
            return None
        stored_date, dated_now = get(obj.fields, "date"), format_http_date(ex.now)
        if date is None or (date == dated_now) == (date == stored_date):
            return None
        edge_dated = date == dated_now
        method, primary, mark, varies_on, policy = ex.method, ex.primary, ex.mark, ex.varies_on, self.policy

        def renew(fields: Fields, now: float) -> Retimed | None:
            # (Asked only while the stored response is unchanged: any `miss` is never the answer.)
            action = hc.decide(hc.Request(method, fields, primary), obj, Fwd.URI_MISS, now, policy)
            if not isinstance(action, hc.Serve):
                return None
            until = hc.steady_until(action, now)
            if until <= now:
                return None
            return Retimed(Steady(now, until, *mark, obj.key, varies_on, renew),
                           format_http_date(now) if edge_dated else None, hc.age_field(action.age), int(action.ttl))
        return renew

    def _rerange(self, target: Target, read: set[str], obj: CachedObject,
                 plan: ResponsePlan) -> Callable[[Twin, bool], InHand | None]:
        """The hit just served (of `target`, its rules having read the fields named in `read`), for
        a request that differs from its own only in its Range and in fields no rule read, while
        the hit is steady (replies.Reply.rerange: the caller knows it is); None where that is not
        so or its blocks are not at hand. Holds nothing of the request it was made for but those
        names."""
        blocks, size, max_ranges = self.blocks, obj.size, self.settings.max_ranges

        def again(twin: Twin, borrow: bool) -> InHand | None:
            span = respan(plan, twin.range, size, max_ranges)  # most often the Range alone decides
            if span is not None:
                first, last = span
                start, end = first, last + 1
                fields: Headers = [("Content-Range", content_range(first, last, size)),
                                   ("Content-Length", str(end - start))]
            else:
                headers = twin.fields()
                headers.reads = set()
                new = self._plan(ProxyRequest("GET", target, headers), obj, time.time())
                if new is None or not same_but_span(plan, new) or not headers.reads <= read:
                    return None
                whole = new.body[0]
                assert isinstance(whole, Span)  # (same_but_span: one span)
                start, end, fields = whole.start, whole.end, new.headers
            chunks = blocks.at_hand(obj, target, twin.fields, start, end, borrow)
            if chunks is None:
                return None
            body = InHand(fields, chunks, borrow)
            try:
                self._get_served(target, twin.fields, obj)  # (once it is the answer: else the read path plans)
            except BaseException:
                body.close()  # (descriptors of its own, unless borrowed)
                raise
            return body
        return again

    async def _fill_missing(self, ex: _Exchange, obj: CachedObject, needed: list[int]) -> Coming | None:
        """None when the blocks `needed` are all stored; else how the first missing one comes,
        once the fills of the first EAGER_BLOCKS missing ones have the origin's answer (RFC 9211
        section 2.2: the answer is then a miss, collapsed if no fill was its own). An origin that cannot give them
        raises its OriginError, before any status line; a missing block of an object that cannot
        be patched (no strong validator) and whose one whole-body fill is not under way means the
        object is gone (FillFailed, changed)."""
        held = self.blocks.open_blocks
        unknown = [index for index in needed if not held.holds(obj.block_key(index))]
        if not unknown:
            return None
        stored = self.store.has_block
        missing = await self.threads.run(lambda: [i for i in unknown if not stored(obj.block_key(i))])
        if not missing:
            return None
        req = ex.req
        answers = await asyncio.gather(*(self.blocks.ready(obj, req.target, req.headers, index)
                                         for index in missing[:EAGER_BLOCKS]), return_exceptions=True)
        coming: list[Coming] = []
        for answer in answers:
            if isinstance(answer, FillFailed) and answer.origin is not None:
                raise answer.origin
            if isinstance(answer, BaseException):
                raise answer
            if answer is not None:
                coming.append(answer)
        if not coming:
            return None  # stored meanwhile
        return Coming(coming[0].status, collapsed=all(c.collapsed for c in coming))

    async def _refresh(self, ex: _Exchange, obj: CachedObject) -> None:
        """stale-while-revalidate: revalidate in the background, once per key at a time."""
        flight = await self.flights.join(ex.primary)
        if not isinstance(flight, Flight):
            return
        action = hc.Validate(hc.validators(obj.headers), Fwd.STALE, 0.0, 0.0, False)
        # Asked as for a HEAD: nothing is read back from the store, and a body the origin sends
        # is stored in the background like a HEAD miss's.
        head = dataclasses.replace(ex, req=dataclasses.replace(ex.req, method="HEAD"))
        try:
            reply = await self._exchange(head, obj, action, flight)
            await reply.close()
        except OriginError as e:
            log.warning("background revalidation failed: %s", e)
        except StoreErrors as e:
            log.warning("background revalidation not stored: %s", e)
        finally:
            flight.end()

    # --- asking the origin --------------------------------------------------------
    async def _exchange(
        self, ex: _Exchange, stored: CachedObject | None, action: hc.Fetch | hc.Validate, flight: Flight | None,
        *, whole: bool = False,
    ) -> Reply:
        """Ask the origin and execute what `on_response` makes of its answer.

        The flight (if we lead one) ends once the outcome is stored, or at once.
        """
        handed_over = False
        try:
            reply, handed_over = await self._ask(ex, stored, action, flight, whole)
            return reply
        except OriginError as e:
            if flight is not None:
                flight.failure = e
            raise
        finally:
            if flight is not None and not handed_over:
                flight.end()

    async def _ask(
        self, ex: _Exchange, stored: CachedObject | None, action: hc.Fetch | hc.Validate, flight: Flight | None,
        whole: bool,
    ) -> tuple[Reply, bool]:
        """Ask the origin and do what its answer calls for (on_response). An answer the cache cannot
        use is asked for again, REFETCHES times at most: unconditionally, or whole (hc.Refetch)."""
        # A manifest (by its name) is asked for whole: it is stored from one response (on_response).
        whole = whole or stored_whole(ex.primary.partition("?")[0], None)
        for _ in range(REFETCHES + 1):
            asked = await self._ask_once(ex, stored, action, flight, whole)
            if not isinstance(asked, hc.Refetch):
                return asked
            if asked is hc.Refetch.UNCONDITIONAL:  # the stored response cannot be used: ask as if none
                stored, action = None, hc.Fetch(action.fwd)
            else:  # a range answer that cannot be stored in blocks: ask for the whole body
                whole = True
        log.warning("the origin's answers for %s could not be used, %d times", ex.primary, REFETCHES + 1)
        if flight is not None:  # the waiters answer the same, without asking again each
            flight.failure = OriginError("invalid", "the origin's answers could not be used")
        return text_reply(502, "Bad Gateway: the origin's answers could not be used",
                          [("Cache-Status", cache_status(fwd=action.fwd.value, detail="refetch"))]), False

    async def _ask_once(
        self, ex: _Exchange, stored: CachedObject | None, action: hc.Fetch | hc.Validate, flight: Flight | None,
        whole: bool,
    ) -> tuple[Reply, bool] | hc.Refetch:
        block = None if whole or (isinstance(action, hc.Fetch) and action.as_is) else self._first_block(ex.req)
        body = None
        if isinstance(action, hc.Fetch) and action.as_is:
            method, headers, body = ex.method, ex.req.headers, ex.req.body
            sent = hc.Sent(None)
        else:
            validation = action if isinstance(action, hc.Validate) else None
            validators = validation.validators if validation else []
            method, headers = "GET", hc.fetch_headers(ex.req.headers, block, validators)
            sent = hc.Sent(block, conditional=bool(validators),
                           stale_if_error=validation is not None and validation.stale_if_error,
                           stale_if_unreachable=validation is not None and validation.stale_if_unreachable)
        request_time = time.time()
        try:
            response = await self.origin.request(method, ex.req.target, headers, body)
        except OriginError as e:
            if hc.on_failure(sent, stored) is None or stored is None:
                raise
            if flight is not None:
                flight.failure = e  # the waiters serve their stale copy without asking again
            log.warning("origin failed, serving stale: %s", e)
            return self._serve_stale(ex, stored, action, None, e.kind), False
        try:
            return await self._answered(ex, stored, action, flight, sent, headers, response, request_time)
        except BaseException:  # cancelled or failed before a reply or a fill took the response: its connection back
            with anyio.CancelScope(shield=True):
                await response.close()
            raise

    async def _answered(
        self, ex: _Exchange, stored: CachedObject | None, action: hc.Fetch | hc.Validate, flight: Flight | None,
        sent: hc.Sent, headers: Headers, response: OriginResponse, request_time: float,
    ) -> tuple[Reply, bool] | hc.Refetch:
        """Do what the origin's answer to the request as `sent` (with `headers`) calls for."""
        response_time = time.time()
        outcome = hc.on_response(ex.facts, sent, response.status, response.headers, stored, self.policy)
        fwd = action.fwd
        if isinstance(outcome, (hc.StoreBlocks, hc.StoreBody)):
            return await self._store(ex, stored, fwd, outcome, response, headers, request_time, response_time,
                                     flight)
        if isinstance(outcome, (hc.Pass, hc.Forward)) and outcome.remember:
            marker = hc.PassMarker(hc.PassReason.UNCACHEABLE, response_time + UNCACHEABLE_TTL)
            await self._remember(ex, marker, response.headers, headers)
        if isinstance(outcome, hc.Pass):
            detail = action.detail if isinstance(action, hc.Fetch) else None
            return relay_forwarded(response, ex.method, fwd, detail), False
        await response.close()
        if isinstance(outcome, hc.Freshen):
            assert stored is not None
            fresh = dataclasses.replace(stored, headers=stored_headers(outcome.headers, self.policy),
                                        request_time=request_time,
                                        response_time=response_time, stale_at=None)
            updated = await self.entries.put(ex.primary, stored.key, fresh, vary_fields(fresh.headers), ex.generation,
                                             self._tags(fresh.headers))
            status = cache_status(fwd=fwd.value, fwd_status=304, stored=updated)
            return self._serve(ex.req, fresh, self._age(fresh), status, x_cache(hit=True)), False
        if isinstance(outcome, hc.ServeStale):
            assert stored is not None
            return self._serve_stale(ex, stored, action, outcome.fwd_status, None), False
        if isinstance(outcome, hc.Forward):
            return relay_forwarded(await self._forward(ex.req), ex.method, fwd), False
        if isinstance(outcome, hc.BadGateway):
            log.warning("origin answered wrongly for %s: %s", ex.primary, outcome.detail)
            return text_reply(502, f"Bad Gateway: {outcome.detail}",
                              [("Cache-Status", cache_status(fwd=fwd.value, fwd_status=response.status,
                                                             detail="bad-range"))]), False
        return outcome

    def _serve_stale(
        self, ex: _Exchange, stored: CachedObject, action: hc.Fetch | hc.Validate, fwd_status: int | None,
        detail: str | None,
    ) -> Reply:
        status = cache_status(fwd=action.fwd.value, fwd_status=fwd_status, detail=detail or "stale")
        return self._serve(ex.req, stored, self._age(stored), status, x_cache(hit=True, stale=True))

    async def _remember(self, ex: _Exchange, marker: hc.PassMarker, response: Headers, sent: Headers) -> None:
        """Store a pass marker where the response's variant lives, leaving other variants alone."""
        key = meta_key(ex.primary, selection(response, sent))
        await self.entries.put(ex.primary, key, marker, vary_fields(response) or None, ex.generation)

    async def _store(
        self, ex: _Exchange, old: CachedObject | None, fwd: Fwd, outcome: hc.StoreBlocks | hc.StoreBody,
        response: OriginResponse, sent: Headers, request_time: float, response_time: float, flight: Flight | None,
    ) -> tuple[Reply, bool]:
        """Store what the origin sent for the request as it was `sent` (the variant it selects)."""
        # The 206 of a block describes that block only; a 200's fields are all the origin's.
        framing = _FRAMING if response.status == 206 else {"content-length"}
        headers = stored_headers([(n, v) for n, v in response.headers if n.lower() not in framing], self.policy)
        key = meta_key(ex.primary, selection(headers, sent))
        # Fields the cache may not keep (private="set-cookie", ...) still go to the client who asked.
        own = [(n, v) for n, v in response.headers if (n, v) not in headers and n.lower() not in _FRAMING]
        size = whole_size(outcome, response.status, response.headers, ex.primary.partition("?")[0],
                          min(IN_MEMORY, self.settings.block_size, self.settings.max_object_size))
        if size is not None:
            return await self._store_whole(ex, old, fwd, key, outcome, response, headers, own, size, request_time,
                                           response_time, flight)
        if isinstance(outcome, hc.StoreBody):
            return await self._store_body(ex, old, fwd, key, response, headers, sent, request_time, response_time,
                                          flight)
        if outcome.size > self.settings.max_object_size:
            await response.close()
            marker = hc.PassMarker(hc.PassReason.TOO_LARGE, float("inf"))
            await self._remember(ex, marker, headers, sent)
            return relay_forwarded(await self._forward(ex.req), ex.method, Fwd.BYPASS, marker.reason.value), False
        obj = self._new_object(outcome, 200, headers, key, outcome.size, request_time, response_time)
        index = outcome.first_block // obj.block_size
        try:
            # Claim the block before the metadata is visible, so no other worker fetches it again.
            progress = await self.filler.claim(obj, index) if obj.size else None
        except StoreErrors as e:
            log.warning("block not claimed, relaying: %s", e)
            await response.close()
            return relay_forwarded(await self._forward(ex.req), ex.method, fwd), False
        if not await self.entries.put(ex.primary, key, obj, vary_fields(headers), ex.generation, self._tags(headers)):
            if progress is not None:
                await self.filler.abandon(progress)
            await response.close()
            return relay_forwarded(await self._forward(ex.req), ex.method, fwd), False
        if old is not None and old.validator != obj.validator:
            self.filler.spawn(self.entries.drop_blocks(old))
        if progress is None:
            await response.close()
        else:
            self.filler.fill(obj, ex.req.target, ex.req.headers, index, progress, response)
        status = cache_status(fwd=fwd.value, fwd_status=response.status, stored=True)
        return self._serve(ex.req, obj, self._age(obj), status, x_cache(hit=False), own), False

    def _new_object(self, outcome: hc.StoreBlocks | hc.StoreBody, status: int, headers: Headers, key: str, size: int,
                    request_time: float, response_time: float, changes: Changes | None = None) -> CachedObject:
        """The metadata of a response about to be stored: in blocks of the configured size, named by
        its strong validator when it has one (StoreBlocks), or stored as it is, in one block of its
        own size named by a token: no other response may ever complete it."""
        if isinstance(outcome, hc.StoreBlocks):
            validator = hc.strong_validator(headers) if outcome.sliceable else None
            return CachedObject(
                status=200, headers=headers, request_time=request_time, response_time=response_time, key=key,
                size=size, block_size=self.settings.block_size,
                validator=validator or "r:" + secrets.token_hex(12), sliceable=outcome.sliceable,
            )
        return CachedObject(
            status=status, headers=headers, request_time=request_time, response_time=response_time, key=key,
            size=size, block_size=max(size, 1), validator="r:" + secrets.token_hex(12), sliceable=False,
            changes=changes,
        )

    async def _store_whole(
        self, ex: _Exchange, old: CachedObject | None, fwd: Fwd, key: str, outcome: hc.StoreBlocks | hc.StoreBody,
        response: OriginResponse, headers: Headers, own: Headers, size: int, request_time: float,
        response_time: float, flight: Flight | None,
    ) -> tuple[Reply, bool]:
        """A small body that comes whole in this answer: read into memory and answered from memory at
        once, as nginx answers while it writes its cache file. It is stored with its metadata in one
        store transaction just after (the flight, handed over, ends once it is: a request for the key
        meanwhile waits for it, then is a hit; any request of this process for the key waits for it
        before it looks, so what a client was answered it finds stored). The answer waits for its
        own store instead when anything changed for the key since it was looked up (a purge:
        Cache-Status then says truly whether it was stored), and while the store's writer has
        WHOLE_BACKLOG entries waiting (so the bodies held are bounded, and the writer's batches
        grow). Otherwise Cache-Status says `stored` as it does for a body relayed while it is
        written: the response was taken to be stored; a purge after the answer, before the store,
        wins over it. A body cut short (or too long) is an origin error, and nothing is stored."""
        try:
            body = await read_whole(response, size)
        finally:
            await response.close()
        obj = self._new_object(outcome, response.status, headers, key, size, request_time, response_time)
        steady = self.store.changes_at(ex.mark[0]) == ex.mark[1]
        if steady and self.entries.pending < WHOLE_BACKLOG and ex.primary not in self._storing:
            # Not the filler's (its tasks are cancelled at shutdown): aclose waits for it (settled).
            task = asyncio.get_running_loop().create_task(_logged(self._keep_whole(ex, old, obj, headers, body),
                                                                  ex.primary))
            self._storing[ex.primary] = task

            def ended(_: object) -> None:  # however the store ended; before those waiting for it resume
                if flight is not None:
                    flight.end()
                del self._storing[ex.primary]

            task.add_done_callback(ended)
            stored = True
        else:
            try:
                stored = await self._keep_whole(ex, old, obj, headers, body)
            finally:
                if flight is not None:
                    flight.end()
        status = cache_status(fwd=fwd.value, fwd_status=response.status, stored=stored)
        return self._serve(ex.req, obj, self._age(obj), status, x_cache(hit=False), own, body=body), True

    async def _keep_whole(self, ex: _Exchange, old: CachedObject | None, obj: CachedObject, headers: Headers,
                          body: bytes) -> bool:
        """Store a whole small response with its body (not if a purge by prefix or tag came since its
        request was looked up: it may have looked before the store); was it stored?"""
        stored = await self.entries.put(ex.primary, obj.key, obj, vary_fields(headers), ex.generation,
                                        self._tags(headers), body, ex.purges)
        if stored and obj.size:
            self.blocks.open_blocks.adopt(obj.block_key(0), body)  # at hand for the hits that follow
        if stored and old is not None and old.validator != obj.validator:
            self.filler.spawn(self.entries.drop_blocks(old))
        return stored

    async def _store_body(
        self, ex: _Exchange, old: CachedObject | None, fwd: Fwd, key: str, response: OriginResponse,
        headers: Headers, sent: Headers, request_time: float, response_time: float, flight: Flight | None,
    ) -> tuple[Reply, bool]:
        """Relay this one response while writing it to a part file; store it once complete."""
        try:
            fd, path = await self.threads.run(self.store.new_part)
        except StoreErrors as e:
            log.warning("no part file, relaying: %s", e)
            return relay_forwarded(response, ex.method, fwd), False

        async def publish(part: str, size: int) -> None:
            try:
                # A manifest is read as it is stored: how long it stays fresh depends on its body.
                manifest = response.status == 200 and stored_whole(ex.primary.partition("?")[0],
                                                                   get(headers, "content-type"), size)
                parsed = await anyio.to_thread.run_sync(_read_part, part, size, MANIFEST_BASE + ex.req.target.raw) \
                    if manifest else None
                obj = self._new_object(hc.StoreBody(), response.status, headers, key, size, request_time,
                                       response_time, changes_of(parsed.manifest) if parsed is not None else None)
                if size:
                    await self.threads.run(self.store.publish_block, obj.block_key(0), part, size)
                stored = await self.entries.put(ex.primary, key, obj, vary_fields(headers), ex.generation,
                                                self._tags(headers), purges=ex.purges)  # (as _keep_whole)
                if stored and old is not None:
                    await self.entries.drop_blocks(old)
            except StoreErrors as e:
                log.warning("response not stored: %s", e)
                return
            if stored:
                self._served(ex.req, obj, parsed)

        async def too_large() -> None:
            marker = hc.PassMarker(hc.PassReason.TOO_LARGE, float("inf"))
            await self._remember(ex, marker, headers, sent)

        spool = Spool(response, fd, path, self.settings.max_object_size, publish, too_large,
                      flight.end if flight is not None else _nothing)
        if flight is not None:
            # Others wait for this body a moment (it is usually small), not for a slow client's whole read.
            asyncio.get_running_loop().call_later(SPOOL_COLLAPSE, flight.end)
        status = cache_status(fwd=fwd.value, fwd_status=response.status, stored=True)
        reply = relay(response, ex.method, status, x_cache(hit=False))
        if reply.chunks is None:  # HEAD, or a status without a body: store it all the same
            reply = dataclasses.replace(reply, close=nothing_to_close)
            self.filler.spawn(spool.drain()).add_done_callback(lambda _: spool.release())
        else:
            reply = dataclasses.replace(reply, chunks=spool.chunks(), close=spool.close)
        return reply, True

    def _tags(self, headers: Headers) -> tuple[str, ...]:
        return response_tags(headers, self.settings.max_cache_tags)

    # --- answering from the store ----------------------------------------------------
    def _age(self, obj: CachedObject) -> float:
        return obj.age(time.time())

    def _served(self, req: ProxyRequest, obj: CachedObject, parsed: Parsed | None = None) -> None:
        """A client's GET is answered from `obj` (or by storing it): see _get_served."""
        if req.method == "GET" and not req.prefetch:
            self._get_served(req.target, lambda: req.headers, obj, parsed)

    def _get_served(self, target: Target, fields: Callable[[], Headers], obj: CachedObject,
                    parsed: Parsed | None = None) -> None:
        """A client's GET of `target` is answered from `obj`: the segments its player asks for
        next are planned (`fields`: the request's, made when needed; `parsed`: its manifest,
        read as it was stored)."""
        if self.segments is not None and obj.status == 200:
            self.segments.served(target, fields, obj, parsed)

    def _plan(self, req: ProxyRequest, obj: CachedObject, now: float) -> ResponsePlan | None:
        """What the response rules make of a stored 200 for this request (None: another status)."""
        if obj.status != 200:
            return None
        return plan_response(
            req.method, conditions_from(req.headers), get(req.headers, "range"), obj.representation(req.target.path),
            max_ranges=self.settings.max_ranges, new_boundary=multipart_boundary, now=now,
        )

    def _serve(
        self, req: ProxyRequest, obj: CachedObject, age: float, status: str, xcache: str, own: Headers | None = None,
        now: float | None = None, plan: ResponsePlan | None = None, body: bytes | None = None,
        borrow: bool = False,
    ) -> Reply:
        """Answer from a stored response at `now` (default: now), with its `plan` if already made;
        `own`: fields for this client only, not stored; `body`: its whole body, when in hand (the
        blocks are not read); `borrow`: the blocks at hand are sent before the caller yields to the
        event loop (BlockSource.at_hand: the reply closes no descriptor)."""
        now = time.time() if now is None else now
        self._served(req, obj)
        extra = [*(own or []), ("Age", hc.age_field(age)), ("Cache-Status", status), ("X-Cache", xcache)]
        if obj.status != 200:
            kept = [(n, v) for n, v in obj.headers if n.lower() != "age"]  # the edge's Age replaces it
            # RFC 9110 section 8.6: no Content-Length in a 204 (nor a 304).
            length = [] if obj.status in (204, 304) else [("Content-Length", str(obj.size))]
            # RFC 9110 section 6.6.1: a Date, the time of this answer (as a 200's plan adds it).
            dated = [] if get(obj.fields, "date") is not None else [("Date", format_http_date(now))]
            headers = [*kept, *length, *dated, *extra]
            has_body = req.method == "GET" and obj.status not in (204, 304) and obj.size > 0
            if not has_body:
                return Reply(obj.status, headers, None, nothing_to_close, whole=b"")
            if body is not None:
                return Reply(obj.status, headers, Given(body), nothing_to_close, in_hand=True, whole=body)
            return Reply(obj.status, headers, self.blocks.read(obj, req.target, req.headers, 0, obj.size),
                         nothing_to_close)
        plan = plan or self._plan(req, obj, now)
        assert plan is not None
        headers = [*plan.headers, *extra]
        if req.method == "HEAD" or not plan.body:
            return Reply(plan.status, headers, None, nothing_to_close, whole=b"")
        blocks = self.blocks
        if len(plan.body) == 1 and isinstance(plan.body[0], Span):
            span = plan.body[0]
            chunks = blocks.at_hand(obj, req.target, lambda: req.headers, span.start, span.end, borrow) \
                if body is None \
                else [body[span.start:span.end]]
            if chunks is not None:
                fds = [chunk.fd for chunk in chunks if isinstance(chunk, FileSpan) and not borrow]
                whole = chunks[0] if len(chunks) == 1 and isinstance(chunks[0], bytes) else None
                return Reply(plan.status, headers, Given(*chunks), closing(*fds) if fds else nothing_to_close,
                             in_hand=True, whole=whole)

        def reader(start: int, end: int) -> AsyncIterator[Chunk]:
            return blocks.read(obj, req.target, req.headers, start, end) if body is None else Given(body[start:end])

        literal = next((i for i, segment in enumerate(plan.body) if isinstance(segment, Span)), 0)
        return Reply(plan.status, headers, plan_chunks(plan, reader), nothing_to_close, literal)

    # --- straight through ---------------------------------------------------------------
    async def _forward(self, req: ProxyRequest) -> OriginResponse:
        return await self.origin.request(req.method, req.target, req.headers, req.body)

    def _first_block(self, req: ProxyRequest) -> tuple[int, int]:
        """The block holding the first byte the client's Range asks for (block 0 without one)."""
        size = self.settings.block_size
        specs = parse_range(get(req.headers, "range") or "") if req.method == "GET" else None
        firsts = [first for first, _ in specs or [] if first is not None]
        index = min(firsts) // size if firsts and len(firsts) == len(specs or []) else 0
        return index * size, (index + 1) * size - 1


def needed_blocks(obj: CachedObject, plan: ResponsePlan | None, method: str) -> list[int]:
    """The blocks an answer from the stored object reads, in order (none for a HEAD, a 304, ...)."""
    if method != "GET":
        return []
    if plan is None:  # a stored status other than 200: its whole body, one block
        return [0] if obj.status not in (204, 304) and obj.size > 0 else []
    size = obj.block_size
    if len(plan.body) == 1:  # (one span: most answers)
        segment = plan.body[0]
        return list(range(segment.start // size, (segment.end - 1) // size + 1)) \
            if isinstance(segment, Span) and segment.end > segment.start else []
    indexes: dict[int, None] = {}
    for segment in plan.body:
        if isinstance(segment, Span) and segment.end > segment.start:
            indexes.update(dict.fromkeys(range(segment.start // size, (segment.end - 1) // size + 1)))
    return list(indexes)


def _nothing() -> None:
    return None


def _read_part(path: str, size: int, url: str) -> Parsed | None:
    """On a worker thread: a manifest's part file, parsed (see segments.read_manifest)."""
    with open(path, "rb") as f:
        return read_manifest(f.read(size), url)


def closing(*fds: int) -> Callable[[], Awaitable[None]]:
    """A reply's close for descriptors it owns (each closed once, however often it is called: the
    number may name another file afterwards)."""
    owned = list(fds)

    async def close() -> None:
        while owned:
            os.close(owned.pop())
    return close


async def _primed(reply: Reply) -> Reply:
    """The reply with its first stored chunk already read (after any multipart framing), so
    that a stored body that cannot be read is found before the status line is sent; then the
    reply is closed and the error raised (FillFailed, or a store error)."""
    if reply.chunks is None or reply.in_hand:
        return reply
    chunks = reply.chunks
    head: list[Chunk] = []
    try:
        while len(head) <= reply.literal:
            head.append(await anext(chunks))
    except StopAsyncIteration:
        pass
    except BaseException:
        await reply.close()
        raise

    async def rest() -> AsyncIterator[Chunk]:
        for chunk in head:
            yield chunk
        async for chunk in chunks:
            yield chunk

    # One span whose first chunk is all of it (a small object, a range within one block).
    in_hand = reply.literal == 0 and len(head) == 1 and str(size_of(head[0])) == get(reply.headers, "content-length")
    return dataclasses.replace(reply, chunks=rest(), in_hand=in_hand)


async def _logged(keep: Coroutine[Any, Any, bool], primary: str) -> None:
    """A store that goes on after the answer: a fault of it is logged (nobody waits for it)."""
    try:
        await keep
    except Exception:
        log.exception("storing %s failed", primary)
