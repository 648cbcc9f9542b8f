"""What warming a manifest fetches (pure): the renditions `--renditions` picks, the playlists
they need, and their segments with their initialization sections.

Syntax, comma-separated, each item adding what it matches (`all` alone: everything):
`best` / `lowest` (the highest / lowest bandwidth), `0` (an index, in the manifest's order),
`720p` (a height), `1280x720` (a size), `<=3M` / `>=800k` (a bandwidth bound in bit/s, with
an optional k, M or G). They choose among the video renditions (an HLS master playlist's
EXT-X-STREAM-INF variants; a DASH Period's video Representations, or all of them when it has
none); what plays alongside is always warmed (the EXT-X-MEDIA renditions of the groups a
chosen variant names; a Period's other Representations). `all` adds I-frame playlists and
alternative renditions no variant names.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..http.hls import MasterPlaylist, MediaPlaylist, Variant
from ..http.manifests import Manifest
from ..http.mpd import Mpd, Representation
from ..http.prefetch import following
from ..http.streams import Ref, Track

_RATE = re.compile(r"(<=|>=)(\d{1,12}(?:\.\d{1,6})?)([kmg]?)", re.IGNORECASE)
_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
_HEIGHT = re.compile(r"(\d{1,5})p", re.IGNORECASE)
_MULTIPLIER = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}


@dataclass(frozen=True)
class Choice:
    """A rendition as a selection sees it."""

    bandwidth: int
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Selection:
    """Parsed --renditions items; none: all."""

    items: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        return not self.items

    def pick(self, choices: Sequence[Choice]) -> list[int]:
        """The indexes of the choices the items match, in the manifest's order."""
        if self.everything:
            return list(range(len(choices)))
        return [i for i, c in enumerate(choices) if any(_matches(item, i, c, choices) for item in self.items)]


ALL = Selection()


def parse_selection(text: str) -> Selection:
    """`--renditions` as a Selection; ValueError says what is wrong."""
    items = tuple(item.strip().lower() for item in text.split(","))
    if items == ("all",):
        return ALL
    for item in items:
        if item not in ("best", "lowest") and not item.isdigit() and not (
                _HEIGHT.fullmatch(item) or _SIZE.fullmatch(item) or _RATE.fullmatch(item)):
            raise ValueError(f"{item!r} is not one of all, best, lowest, an index (0), a height (720p), "
                             f"a size (1280x720) or a bandwidth bound (<=3M, >=800k)")
    return Selection(items)


def _matches(item: str, index: int, choice: Choice, choices: Sequence[Choice]) -> bool:
    if item in ("best", "lowest"):
        rates = [c.bandwidth for c in choices]
        wanted = max(rates) if item == "best" else min(rates)
        return index == rates.index(wanted)  # the first of equals
    if item.isdigit():
        return index == int(item)
    if m := _HEIGHT.fullmatch(item):
        return choice.height == int(m[1])
    if m := _SIZE.fullmatch(item):
        return (choice.width, choice.height) == (int(m[1]), int(m[2]))
    m = _RATE.fullmatch(item)
    assert m is not None  # parse_selection let nothing else through
    bound = float(m[2]) * _MULTIPLIER[m[3].lower()]
    return choice.bandwidth <= bound if m[1] == "<=" else choice.bandwidth >= bound


@dataclass(frozen=True)
class Expansion:
    """What a manifest leads to: playlists to fetch and expand in turn, tracks whose segments
    to fetch; `matched` is False when the selection picked nothing it could choose from."""

    playlists: tuple[str, ...] = ()
    tracks: tuple[Track, ...] = ()
    matched: bool = True


def expand(manifest: Manifest, selection: Selection) -> Expansion:
    if isinstance(manifest, MasterPlaylist):
        return _master(manifest, selection)
    if isinstance(manifest, MediaPlaylist):
        return Expansion(tracks=(manifest,))
    return _mpd(manifest, selection)


def _master(master: MasterPlaylist, selection: Selection) -> Expansion:
    chosen = [master.variants[i] for i in selection.pick([_choice(v) for v in master.variants])]
    groups = {group for v in chosen for group in v.groups}
    media = [m.url for m in master.media if selection.everything or (m.type, m.group_id) in groups]
    iframes = [v.url for v in master.iframes] if selection.everything else []
    urls = [v.url for v in chosen] + media + iframes
    return Expansion(playlists=tuple(dict.fromkeys(urls)), matched=bool(chosen) or not master.variants)


def _choice(variant: Variant) -> Choice:
    width, height = variant.resolution or (None, None)
    return Choice(variant.bandwidth, width, height)


def _mpd(mpd: Mpd, selection: Selection) -> Expansion:
    tracks: list[Representation] = []
    matched = True
    for period in mpd.periods:
        videos = [r for r in period.representations if r.content_type == "video"] or list(period.representations)
        picked = [videos[i] for i in selection.pick([Choice(r.bandwidth, r.width, r.height) for r in videos])]
        matched = matched and (bool(picked) or not videos)
        tracks += [r for r in period.representations if r in picked or r not in videos]
    return Expansion(tracks=tuple(tracks), matched=matched)


def files_of(track: Track, now: float | None) -> tuple[Ref, ...]:
    """A track's segments available at `now`, each initialization section before the first
    segment that uses it."""
    window = track.available(now)
    return following(track, window.start, len(window), now=now)
