"""The vocabulary shared by the streaming manifest parsers (hls.py, mpd.py) and the rules that
use them (manifests.py, prefetch.py, lifetimes.py): references, segments, tracks. Pure."""
from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urldefrag, urljoin, urlsplit

MAX_MANIFEST_BYTES = 8 * 1024 * 1024  # a longer manifest is not understood (parsing stays bounded)
MAX_SEGMENTS = 200_000  # segments one rendition may list or generate (a SegmentTimeline's @r is a number)

ByteRange = tuple[int, int]  # first and last byte, inclusive (RFC 9110 section 14.1.2)


@dataclass(frozen=True, slots=True)
class NotUnderstood:
    """A manifest this edge cannot use (it is relayed as it is); `reason` says why."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ref:
    """A resource a manifest names: its resolved URL, and a byte range of it or None for all of it."""

    url: str
    byte_range: ByteRange | None = None


@dataclass(frozen=True, slots=True)
class Segment:
    """A media segment: where it is, how long it plays, its number, and the initialization
    section a player needs before it (EXT-X-MAP, a DASH initialization segment), or None."""

    ref: Ref
    duration: float  # seconds
    number: int  # HLS media sequence number (RFC 8216 section 6.3.2); DASH $Number$
    init: Ref | None = None


@dataclass(frozen=True, slots=True)
class Located:
    """Where a request lies in a track: the segment at `index`, or, when `init`, the
    initialization section that the segment at `index` is the first to use."""

    index: int
    init: bool = False


class Track(Protocol):
    """One rendition's segments in order: an HLS media playlist or a DASH Representation."""

    @property
    def key(self) -> str:
        """Names the rendition: its playlist's URL, or its MPD's URL with Period and Representation."""
        ...

    @property
    def live(self) -> bool:
        """Can segments still be added (a live HLS playlist, a dynamic MPD)?"""
        ...

    def locate(self, ref: Ref) -> Located | None:
        """Where `ref` (a request's URL and the range it starts with) lies in the track; None when
        it is not part of it."""
        ...

    def available(self, now: float | None) -> range:
        """The indexes of the segments that can be fetched at `now` (seconds since the epoch;
        None: regardless of the clock, as for a static presentation)."""
        ...

    def segment(self, index: int) -> Segment:
        """The segment at `index`."""
        ...

    def directories(self) -> frozenset[str]:
        """The URL directories (up to the last '/') its segments and initialization sections are in."""
        ...


def resolve(base: str, reference: str) -> str:
    """A URI reference resolved against the URL of the manifest that names it (RFC 3986
    section 5.2; RFC 8216 section 4.1; ISO/IEC 23009-1 section 5.6.4), without its fragment,
    which is never sent to a server (RFC 3986 section 3.5)."""
    reference = reference.strip()
    folder = _folder(base)
    if folder is not None and _PLAIN.fullmatch(reference) and "/." not in reference and "//" not in reference:
        return folder + reference  # what section 5.2.2 gives for a plain relative path, at a fraction of the cost
    return urldefrag(urljoin(base, reference)).url


# A plain relative path: RFC 3986 pchars and '/' only, without ':' or ';' and not starting with a dot;
# its dot-segments and empty segments are checked apart. Anything else goes to urljoin (which also
# drops empty segments, removes tabs and line breaks, and reads ';' as parameters).
_PLAIN = re.compile(r"[\w\-~!$&'()*+,=@%][\w\-.~!$&'()*+,=@%/]*", re.ASCII)


@functools.lru_cache(maxsize=64)  # a manifest's URIs share one base
def _folder(base: str) -> str | None:
    """The base's scheme, authority and path up to its last '/', when that is what a plain
    relative path is appended to: an absolute URL whose path holds no dot-segment nor empty one."""
    parts = urlsplit(base)
    if not parts.scheme or not parts.netloc or not parts.path.startswith("/") or "/." in parts.path \
            or "//" in parts.path:
        return None
    return f"{parts.scheme}://{parts.netloc}{parts.path[: parts.path.rfind('/') + 1]}"


def local_target(url: str, base: str) -> str | None:
    """The path and query to ask the server `base` names (its scheme and authority) for `url`;
    None when `url` is on another server."""
    there, here = urlsplit(url), urlsplit(base)
    if (there.scheme.lower(), there.netloc.lower()) != (here.scheme.lower(), here.netloc.lower()):
        return None
    return (there.path or "/") + ("?" + there.query if there.query else "")


def directories_of(segments: Iterable[Segment]) -> frozenset[str]:
    """The directories of segments listed one by one and of their initialization sections."""
    return frozenset(directory(r.url) for s in segments for r in (s.ref, s.init) if r is not None)


def directory(url: str) -> str:
    """A URL up to and including the last '/' of its path (the query dropped)."""
    path = url.partition("?")[0]
    return path[: path.rfind("/") + 1]


_WHOLE = 2**63  # the last byte of a resource named without a byte range


class SegmentIndex:
    """Finds a request among segments listed one by one (HLS, a DASH SegmentList): the segment
    whose bytes hold the first byte asked for, else the initialization section that does."""

    def __init__(self, segments: Iterable[Segment]) -> None:
        listed = list(segments)
        self._segments = _spans((s.ref, i) for i, s in enumerate(listed))
        firsts: dict[Ref, int] = {}
        for i, s in enumerate(listed):
            if s.init is not None:
                firsts.setdefault(s.init, i)
        self._inits = _spans(firsts.items())

    def locate(self, ref: Ref) -> Located | None:
        first = ref.byte_range[0] if ref.byte_range else 0
        found = _containing(self._segments.get(ref.url), first)
        if found is not None:
            return Located(found)
        found = _containing(self._inits.get(ref.url), first)
        return Located(found, init=True) if found is not None else None


# For one URL: its spans as (first byte, last byte, index), by first byte.
_Spans = list[tuple[int, int, int]]


def _spans(refs: Iterable[tuple[Ref, int]]) -> dict[str, _Spans]:
    by_url: dict[str, _Spans] = {}
    for ref, index in refs:
        first, last = ref.byte_range or (0, _WHOLE)
        by_url.setdefault(ref.url, []).append((first, last, index))
    for spans in by_url.values():
        if len(spans) > 1:
            spans.sort()
    return by_url


def _containing(spans: _Spans | None, byte: int) -> int | None:
    """The index of the span holding `byte`, or None."""
    if spans is None:
        return None
    at = bisect.bisect_right(spans, (byte, _WHOLE, _WHOLE)) - 1
    return spans[at][2] if at >= 0 and byte <= spans[at][1] else None
