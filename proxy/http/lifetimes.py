"""How long a manifest or a segment stays fresh when its origin says nothing (pure).

RFC 9111 comes first: these lifetimes stand in for the heuristic of its section 4.2.2 only,
where an origin gives no explicit freshness (and after the operator's default_ttls rules)."""
from __future__ import annotations

from dataclasses import dataclass

from .hls import MasterPlaylist, MediaPlaylist
from .manifests import Kind, Manifest
from .mpd import Mpd
from .streams import NotUnderstood

_COMPLETE = frozenset({200, 203, 206})  # a 404 for a segment not yet published keeps the RFC's rules


@dataclass(frozen=True)
class StreamTtls:
    """Operator defaults in seconds; 0: none (the RFC 9111 heuristic applies)."""

    manifest: int = 0  # a manifest that does not change: a master or VOD playlist, a static MPD
    segment: int = 0  # a media segment


def stream_lifetime(status: int, what: Manifest | NotUnderstood | Kind, ttls: StreamTtls) -> float | None:
    """Seconds a response is fresh for, by what it is: a parsed manifest, or a Kind when that is
    all the caller knows (a segment, by its type). None: not a streaming rule's to say.

    - A live media playlist (no EXT-X-ENDLIST, not VOD): half its target duration. A client
      reloads an unchanged playlist after half the target duration (RFC 8216 section 6.3.4),
      so a copy that old is as current as the client's own polling.
    - A dynamic MPD: half its MPD@minimumUpdatePeriod, by the same reasoning (clients refetch
      it after that period, ISO/IEC 23009-1 section 5.4.1); 0 (updates announced in-band) is 0.
      Without the attribute the MPD does not change (section 5.3.1.2, table 3).
    - Manifests that do not change (master and VOD playlists, static MPDs) and segments:
      the operator's default, when set.
    """
    if status not in _COMPLETE:
        return None
    if isinstance(what, MediaPlaylist) and what.live:
        return what.target_duration / 2
    if isinstance(what, Mpd) and what.dynamic and what.minimum_update_period is not None:
        return what.minimum_update_period / 2
    if isinstance(what, MasterPlaylist | MediaPlaylist | Mpd):
        return float(ttls.manifest) if ttls.manifest else None
    if what is Kind.SEGMENT:
        return float(ttls.segment) if ttls.segment else None
    return None
