"""Segment prefetch: the next segments of a rendition are filled before its player asks for them.

When a segment (or an initialization section) of a rendition is served, the next
`prefetch_segments` segments of that rendition are filled in the background; when an HLS media
playlist is served, the ones its player asks for first. What to fill is decided by the pure
plans of http/prefetch.py; this driver finds the rendition a request belongs to and executes
the plans:

- a manifest is parsed once per stored version, on a worker thread: when it is stored (the
  read path hands it over) or, in a worker that did not store it, from its stored body;
- a segment's rendition is found among the manifests that list segments in its directory:
  those this process parsed, and those any process recorded in the store's listings (read
  again when their change count for the directory moved);
- each planned reference is an internal GET through the read path (with a Range for a byte
  range), flagged as a prefetch: it collapses with the clients' requests for the same
  segment, is stored as they would be, is never forwarded when the cache would not store it
  (a pass marker), never holds up the client whose request planned it, and starts no plan
  of its own. A seek plans from the new position; what was planned before finishes.

Bounded: at most `count` fills in flight per rendition and `max_fills` in all; parsed manifests,
directories and renditions are remembered up to the constants below, least recently used
forgotten first.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import anyio

from ..http.cache import fetch_headers
from ..http.directives import Headers, get
from ..http.hls import MediaPlaylist
from ..http.manifests import Kind, Manifest, kind_of, parse_manifest, tracks
from ..http.prefetch import plan_prefetch, plan_start, rendition_of
from ..http.ranges import parse_range
from ..http.streams import MAX_MANIFEST_BYTES, NotUnderstood, Ref, Track, directory, local_target
from ..origins.base import BodyAborted, OriginError, Target
from ..request.paths import BadPath, HiddenPath, clean_path, origin_path, url_path
from ..store.disk import Store, StoreErrors
from ..store.objects import CachedObject
from .entries import Entries
from .replies import Reply
from .threads import StoreThreads

log = logging.getLogger("edgecache.fill")

MANIFEST_BASE = "http://edge.invalid"  # manifests are read as if from here: references to it are the edge's own
MANIFESTS_KEPT = 64  # parsed manifests remembered per process...
MANIFEST_BYTES_KEPT = 32 * 1024**2  # ... whose bodies total at most this
DIRECTORIES_KEPT = 4096  # directories whose manifests are remembered per process
RENDITIONS_KEPT = 1024  # renditions whose fills are tracked per process
DONE_KEPT = 256  # references per rendition remembered as filled (not planned again)

_FAILURES: tuple[type[Exception], ...] = (OriginError, BodyAborted, *StoreErrors)

Read = Callable[[Target, Headers], Awaitable[Reply]]
Spawn = Callable[[Coroutine[Any, Any, None]], object]


@dataclass(frozen=True)
class Parsed:
    """A manifest, parsed and indexed, with the directories its segments are in."""

    manifest: Manifest
    folders: frozenset[str]


def read_manifest(body: bytes, url: str) -> Parsed | None:
    """A manifest's body parsed (None when not understood) and its tracks indexed: call it on a
    worker thread, a long manifest takes a while."""
    manifest = parse_manifest(body, url)
    if isinstance(manifest, NotUnderstood):
        return None
    renditions = tracks(manifest)
    for track in renditions:
        track.locate(Ref(url))  # builds the track's index here, not when a request is located
    return Parsed(manifest, frozenset(d for track in renditions for d in track.directories()))


@dataclass
class _Kept:
    validator: str
    parsed: Parsed
    size: int


@dataclass
class _Folder:
    manifests: tuple[str, ...]  # the manifests (path and query) known to list segments there, latest first
    mark: int | None = None  # the listings' change count for it when last read (Listings.mark); None: never


@dataclass
class _Rendition:
    in_flight: set[Ref] = field(default_factory=set)
    done: OrderedDict[Ref, None] = field(default_factory=OrderedDict)

    def have(self) -> set[Ref]:
        return self.in_flight | self.done.keys()


class SegmentPrefetch:
    def __init__(self, count: int, max_fills: int, store: Store, threads: StoreThreads, entries: Entries,
                 key_of: Callable[[Target], str], http_origin: bool, dotfiles: bool, read: Read,
                 spawn: Spawn) -> None:
        self.count = count
        self.max_fills = max_fills
        self.store = store
        self.threads = threads
        self.entries = entries
        self.key_of = key_of  # the cache key of a target (the origin's)
        self.http_origin = http_origin
        self.dotfiles = dotfiles
        self.read = read  # an internal GET through the read path
        self.spawn = spawn
        self.fills = 0  # in flight, all renditions
        self._manifests: OrderedDict[str, _Kept] = OrderedDict()  # by meta key
        self._bytes = 0
        self._parsing: dict[tuple[str, str], asyncio.Future[Parsed | None]] = {}  # (meta key, validator)
        self._folders: OrderedDict[str, _Folder] = OrderedDict()
        self._renditions: OrderedDict[str, _Rendition] = OrderedDict()

    # --- what the read path tells ------------------------------------------------------
    def served(self, target: Target, fields: Callable[[], Headers], obj: CachedObject,
               parsed: Parsed | None = None) -> None:
        """A client's GET of `target` is answered from the stored `obj` (or by storing it);
        `fields`: the request's, made only when needed; `parsed`: its manifest, parsed as it was
        stored. Plans in the background."""
        if parsed is not None:
            self._keep(obj, parsed, target.raw)
            if parsed.folders:
                self.spawn(self._listed_in(parsed.folders, target.raw))
            self._start_playlist(parsed.manifest, fetch_headers(fields(), None))  # (the client's fields, copied now)
            return
        if obj.changes is not None:  # a manifest the edge understood when it stored it
            self.spawn(self._manifest_served(target.raw, obj, fetch_headers(fields(), None)))
            return
        path = target.raw.partition("?")[0]
        content_type = get(obj.headers, "content-type") or ""
        if kind_of(path, content_type) is not Kind.SEGMENT and not content_type.startswith(("video/", "audio/")):
            return
        url = MANIFEST_BASE + target.raw
        name = directory(url)
        folder = self._folders.get(name)
        if folder is not None and not folder.manifests and folder.mark == self.store.listings.mark(name):
            return  # no manifest lists segments there, as far as the listings have said since
        specs = parse_range(get(fields(), "range") or "") or []
        first, last = specs[0] if len(specs) == 1 else (None, None)
        ref = Ref(url, None if first is None else (first, last if last is not None else first))
        self.spawn(self._segment_served(ref, fetch_headers(fields(), None)))

    async def _manifest_served(self, raw: str, obj: CachedObject, headers: Headers) -> None:
        parsed = await self._parsed(obj, raw)
        if parsed is not None:
            self._start_playlist(parsed.manifest, headers)

    def _start_playlist(self, manifest: Manifest, headers: Headers) -> None:
        """An HLS media playlist is served: its player asks for these first (a DASH MPD names every
        rendition: the first request of one plans its own)."""
        if isinstance(manifest, MediaPlaylist):
            rendition = self._rendition(manifest.key)
            self._start(rendition, plan_start(manifest, self.count, rendition.have(), time.time()), headers)

    async def _segment_served(self, ref: Ref, headers: Headers) -> None:
        track = await self._track_of(ref, headers)
        if track is not None:
            rendition = self._rendition(track.key)
            planned = plan_prefetch(track, ref, self.count, rendition.have(), time.time())
            self._start(rendition, planned or (), headers)

    # --- fills --------------------------------------------------------------------------
    def _start(self, rendition: _Rendition, planned: tuple[Ref, ...], headers: Headers) -> None:
        for ref in planned:
            if len(rendition.in_flight) >= self.count or self.fills >= self.max_fills:
                return
            local = local_target(ref.url, MANIFEST_BASE)
            target = self._target(local) if local is not None else None
            if target is None:  # on another server, or a path the edge refuses
                self._filled(rendition, ref)
                continue
            rendition.in_flight.add(ref)
            self.fills += 1
            self.spawn(self._fill(rendition, ref, target, fetch_headers(headers, ref.byte_range)))

    async def _fill(self, rendition: _Rendition, ref: Ref, target: Target, headers: Headers) -> None:
        try:
            reply = await self.read(target, headers)
            try:
                if reply.chunks is not None and _filling(reply):
                    async for _ in reply.chunks:  # read to the end: what is read is stored
                        pass
            finally:
                await reply.close()
        except _FAILURES as e:
            log.info("prefetch of %s failed: %s", target.raw, e)
        finally:
            self.fills -= 1
            rendition.in_flight.discard(ref)
            self._filled(rendition, ref)

    @staticmethod
    def _filled(rendition: _Rendition, ref: Ref) -> None:
        rendition.done[ref] = None
        while len(rendition.done) > DONE_KEPT:
            rendition.done.popitem(last=False)

    def _rendition(self, key: str) -> _Rendition:
        rendition = self._renditions.pop(key, None) or _Rendition()
        self._renditions[key] = rendition
        while len(self._renditions) > RENDITIONS_KEPT:
            self._renditions.popitem(last=False)
        return rendition

    def _target(self, local: str) -> Target | None:
        """The target a client's request of `local` (a path and query) makes (see app.py)."""
        path, mark, query = local.partition("?")
        try:
            clean = clean_path(unquote(path), allow_dotfiles=self.dotfiles)
        except (BadPath, HiddenPath):
            return None
        raw = origin_path(path) if self.http_origin else url_path(clean)
        return Target(clean, raw + mark + query)

    # --- finding a segment's rendition --------------------------------------------------
    async def _track_of(self, ref: Ref, headers: Headers) -> Track | None:
        """The rendition `ref` belongs to: among the manifests this process knows to list segments
        in its directory, else those the store's listings name."""
        folder = directory(ref.url)
        known = self._folders.get(folder)
        mine = known.manifests if known is not None else ()
        for raw in mine:
            track = await self._track_in(raw, ref, headers)
            if track is not None:
                return track
        for raw in await self._listings(folder):
            track = await self._track_in(raw, ref, headers) if raw not in mine else None
            if track is not None:
                return track
        return None

    async def _track_in(self, raw: str, ref: Ref, headers: Headers) -> Track | None:
        target = self._target(raw)
        if target is None:
            return None
        found = await self.entries.lookup(self.key_of(target), headers)
        obj = found.entry
        if not isinstance(obj, CachedObject) or obj.changes is None:
            return None
        parsed = await self._parsed(obj, raw)
        return rendition_of(parsed.manifest, ref) if parsed is not None else None

    async def _listings(self, folder: str) -> tuple[str, ...]:
        """The manifests the store's listings name for `folder` (nothing new if they did not
        change since this process read them)."""
        known = self._folders.get(folder)
        mark = self.store.listings.mark(folder)  # before reading: a change meanwhile moves it
        if known is not None and known.mark == mark:
            return ()
        try:
            listed = await self.threads.run(self.store.listings.manifests, folder)
        except StoreErrors as e:
            log.warning("manifest listings unreadable: %s", e)
            listed = ()
        mine = known.manifests if known is not None else ()
        self._folder(folder, _Folder((*listed, *(m for m in mine if m not in listed)), mark))
        return listed

    async def _listed_in(self, folders: frozenset[str], raw: str) -> None:
        try:
            await self.threads.run(self.store.listings.add, sorted(folders), raw)
        except StoreErrors as e:
            log.warning("manifest listings not written: %s", e)

    def _folder(self, name: str, folder: _Folder) -> None:
        self._folders.pop(name, None)
        self._folders[name] = folder
        while len(self._folders) > DIRECTORIES_KEPT:
            self._folders.popitem(last=False)

    # --- parsed manifests ----------------------------------------------------------------
    async def _parsed(self, obj: CachedObject, raw: str) -> Parsed | None:
        """The stored manifest `obj` (fetched as `raw`), parsed: remembered, or read from the store
        and parsed on a worker thread (once, however many ask at a time)."""
        kept = self._manifests.get(obj.key)
        if kept is not None and kept.validator == obj.validator:
            self._manifests.move_to_end(obj.key)
            return kept.parsed
        version = (obj.key, obj.validator)
        parsing = self._parsing.get(version)
        if parsing is not None:
            return await asyncio.shield(parsing)
        future: asyncio.Future[Parsed | None] = asyncio.get_running_loop().create_future()
        self._parsing[version] = future
        parsed = None
        try:
            body = await self.threads.run(self._body, obj) if obj.size <= MAX_MANIFEST_BYTES else None
            if body is not None:
                parsed = await anyio.to_thread.run_sync(read_manifest, body, MANIFEST_BASE + raw)
        except StoreErrors as e:
            log.warning("stored manifest %s unreadable: %s", obj.key, e)
        finally:
            del self._parsing[version]
            future.set_result(parsed)
        if parsed is not None:
            self._keep(obj, parsed, raw)
        return parsed

    def _body(self, obj: CachedObject) -> bytes | None:
        """On a store thread: the stored body, or None when a block of it is missing."""
        parts = []
        for index in range(obj.block_count):
            start, end = obj.block_span(index)
            block = self.store.open_block(obj.block_key(index), end - start)
            if block is None:
                return None
            if isinstance(block, bytes):
                parts.append(block)
            else:
                with block:
                    parts.append(block.read())
        return b"".join(parts)

    def _keep(self, obj: CachedObject, parsed: Parsed, raw: str) -> None:
        old = self._manifests.pop(obj.key, None)
        self._bytes += obj.size - (old.size if old is not None else 0)
        self._manifests[obj.key] = _Kept(obj.validator, parsed, obj.size)
        while len(self._manifests) > MANIFESTS_KEPT or self._bytes > MANIFEST_BYTES_KEPT:
            self._bytes -= self._manifests.popitem(last=False)[1].size
        for name in parsed.folders:
            known = self._folders.get(name)
            if known is None:
                self._folder(name, _Folder((raw,)))
            elif known.manifests[:1] != (raw,):
                self._folder(name, _Folder((raw, *(m for m in known.manifests if m != raw)), known.mark))


def _filling(reply: Reply) -> bool:
    """Whether reading the reply's body stores it: a miss the cache stores (this cache's
    Cache-Status member, the last, says `stored`, or `fwd=partial`); a hit holds it already, a
    relay stores nothing."""
    members = [value for name, value in reply.headers if name.lower() == "cache-status"]
    params = members[-1].split("; ")[1:] if members else []
    return "stored" in params or "fwd=partial" in params
