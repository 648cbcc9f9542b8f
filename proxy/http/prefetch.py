"""Which segments to fill before a player asks for them (pure): the next ones of the rendition
a request belongs to, from where the request is, so a seek starts from its new position; and,
when a rendition's manifest is served, the ones its player will ask for first."""
from __future__ import annotations

from collections.abc import Set

from .manifests import Manifest, tracks
from .streams import Ref, Track

# RFC 8216 section 6.3.3: a client starts a live playlist no less than three target durations
# from its end; a DASH player likewise starts a little behind the live edge.
LIVE_START_SEGMENTS = 3


def rendition_of(manifest: Manifest, ref: Ref) -> Track | None:
    """The rendition of `manifest` that `ref` (a segment or an initialization section, with
    the first byte asked for) belongs to; None when it is in none."""
    return next((t for t in tracks(manifest) if t.locate(ref) is not None), None)


def plan_prefetch(track: Track, requested: Ref, count: int, have: Set[Ref] = frozenset(),
                  now: float | None = None) -> tuple[Ref, ...] | None:
    """What to fill after `requested`, in order: the next `count` segments available at `now`,
    each preceded by its initialization section the first time one is needed (the requested
    segment's own included), leaving out `requested` and what the caller `have`s (stored, or
    being filled). None when `requested` is not part of `track`.

    The request of an initialization section starts nothing in a live track: a live player
    starts near the live edge, not at the first segment listed."""
    located = track.locate(requested)
    if located is None:
        return None
    if located.init and track.live:
        return ()
    own_init = None if located.init else track.segment(located.index).init
    start = located.index if located.init else located.index + 1
    return following(track, start, count, have | {requested}, now, first=own_init)


def plan_start(track: Track, count: int, have: Set[Ref] = frozenset(), now: float | None = None) -> tuple[Ref, ...]:
    """What to fill when a rendition's manifest is served, before its player asks: `count`
    segments from where a player starts (the first of a VOD track; the LIVE_START_SEGMENTS-th
    from the end of a live one), each preceded by its initialization section, less what the
    caller `have`s."""
    window = track.available(now)
    start = max(window.start, window.stop - LIVE_START_SEGMENTS) if track.live else window.start
    return following(track, start, count, have, now)


def following(track: Track, start: int, count: int, have: Set[Ref] = frozenset(), now: float | None = None, *,
              first: Ref | None = None) -> tuple[Ref, ...]:
    """`first` (when given), then up to `count` segments available at `now` from index `start`,
    each after its initialization section the first time one is needed; nothing in `have`,
    nothing twice."""
    window = track.available(now)
    seen = set(have)
    planned: list[Ref] = []
    segments = (track.segment(i) for i in range(max(start, window.start), min(start + count, window.stop)))
    refs = [first] + [r for s in segments for r in (s.init, s.ref)]
    for ref in refs:
        if ref is not None and ref not in seen:
            seen.add(ref)
            planned.append(ref)
    return tuple(planned)
