"""How long a manifest or a segment stays fresh when its origin says nothing (pure).

RFC 9111 comes first: these lifetimes stand in for the heuristic of its section 4.2.2 only,
where an origin gives no explicit freshness (and after the operator's default_ttls rules).
A manifest's lifetime depends on its body: it is read once, when the response is stored,
and what it says is kept with the stored response as `Changes`."""
from __future__ import annotations

from dataclasses import dataclass

from .hls import MediaPlaylist
from .manifests import Kind, Manifest
from .mpd import Mpd
from .streams import NotUnderstood

_COMPLETE = frozenset({200, 203, 206})  # a 404 for a segment not yet published keeps the RFC's rules


@dataclass(frozen=True)
class StreamTtls:
    """Operator defaults in seconds; 0: none (the RFC 9111 heuristic applies)."""

    manifest: int = 0  # a manifest that does not change: a master or VOD playlist, a static MPD
    segment: int = 0  # a media segment


@dataclass(frozen=True, slots=True)
class Changes:
    """What a manifest's body says about how often it changes: every `period` seconds (a live
    playlist's target duration, a dynamic MPD's minimumUpdatePeriod), or never (None). Kept
    with a stored manifest; a stored response that has one is a manifest the edge understood."""

    period: float | None


def changes_of(manifest: Manifest | NotUnderstood) -> Changes | None:
    """How often a parsed manifest changes; None when it is not understood.

    - A live media playlist (no EXT-X-ENDLIST, not VOD) may change every target duration
      (RFC 8216 section 4.3.3.1); a master playlist or a VOD one does not.
    - A dynamic MPD is refetched after its MPD@minimumUpdatePeriod (ISO/IEC 23009-1 section
      5.4.1); 0 means its updates are announced in-band. Without the attribute, or static, the
      MPD does not change (section 5.3.1.2, table 3).
    """
    if isinstance(manifest, NotUnderstood):
        return None
    if isinstance(manifest, MediaPlaylist) and manifest.live:
        return Changes(float(manifest.target_duration))
    if isinstance(manifest, Mpd) and manifest.dynamic and manifest.minimum_update_period is not None:
        return Changes(manifest.minimum_update_period)
    return Changes(None)


def stream_lifetime(status: int, what: Changes | Kind | None, ttls: StreamTtls) -> float | None:
    """Seconds a response is fresh for, by what it is: a manifest's Changes, or its Kind when
    that is all there is (a segment, by its type). None: not a streaming rule's to say.

    - A manifest that changes: half its period. A client reloads an unchanged live playlist
      after half the target duration (RFC 8216 section 6.3.4), and a dynamic MPD after its
      minimumUpdatePeriod (ISO/IEC 23009-1 section 5.4.1): a copy that old is as current as
      the client's own polling.
    - Manifests that do not change (master and VOD playlists, static MPDs) and segments:
      the operator's default, when set.
    """
    if status not in _COMPLETE:
        return None
    if isinstance(what, Changes):
        if what.period is not None:
            return what.period / 2
        return float(ttls.manifest) if ttls.manifest else None
    if what is Kind.SEGMENT:
        return float(ttls.segment) if ttls.segment else None
    return None
