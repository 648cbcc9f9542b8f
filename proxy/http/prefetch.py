"""Which segments to fill before a player asks for them (pure): the next ones of the rendition
a request belongs to, from where the request is, so a seek starts from its new position."""
from __future__ import annotations

from collections.abc import Set

from .manifests import Manifest, tracks
from .streams import Ref, Track


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
    window = track.available(now)
    start = located.index if located.init else located.index + 1
    seen = set(have) | {requested}
    planned: list[Ref] = []

    def add(ref: Ref | None) -> None:
        if ref is not None and ref not in seen:
            seen.add(ref)
            planned.append(ref)

    if not located.init:
        add(track.segment(located.index).init)
    for index in range(max(start, window.start), min(start + count, window.stop)):
        segment = track.segment(index)
        add(segment.init)
        add(segment.ref)
    return tuple(planned)
