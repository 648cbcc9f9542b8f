"""HLS playlists (RFC 8216): master and media playlists parsed into typed values. Pure.

What a cache needs is kept (URIs, byte ranges, initialization sections, durations, whether
the playlist can still change); other tags (EXT-X-DISCONTINUITY, EXT-X-KEY, EXT-X-PROGRAM-
DATE-TIME, low-latency parts, ...) are tolerated and skipped. A playlist that breaks a rule
the parse depends on is NotUnderstood, never an exception.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .streams import (
    MAX_MANIFEST_BYTES,
    ByteRange,
    Located,
    NotUnderstood,
    Ref,
    Segment,
    SegmentIndex,
    directories_of,
    resolve,
)


@dataclass(frozen=True)
class Variant:
    """A variant stream (EXT-X-STREAM-INF, RFC 8216 section 4.3.4.2) or an I-frame playlist
    (EXT-X-I-FRAME-STREAM-INF, section 4.3.4.3): a rendition's media playlist."""

    url: str
    bandwidth: int
    resolution: tuple[int, int] | None = None  # width, height
    codecs: str | None = None
    groups: tuple[tuple[str, str], ...] = ()  # (AUDIO | VIDEO | SUBTITLES, GROUP-ID) it plays with


@dataclass(frozen=True)
class Media:
    """An alternative rendition with a playlist of its own (EXT-X-MEDIA with URI, section 4.3.4.1)."""

    url: str
    type: str  # AUDIO, VIDEO or SUBTITLES
    group_id: str
    name: str = ""


@dataclass(frozen=True)
class MasterPlaylist:
    url: str
    variants: tuple[Variant, ...]
    iframes: tuple[Variant, ...] = ()
    media: tuple[Media, ...] = ()


@dataclass(frozen=True)
class MediaPlaylist:
    """A media playlist (section 4.3.3): its segments, numbered from EXT-X-MEDIA-SEQUENCE."""

    url: str
    target_duration: int  # seconds (EXT-X-TARGETDURATION, section 4.3.3.1)
    segments: tuple[Segment, ...]
    media_sequence: int = 0
    ended: bool = False  # EXT-X-ENDLIST: no segment will be added (section 4.3.3.4)
    playlist_type: str | None = None  # EXT-X-PLAYLIST-TYPE: EVENT or VOD (section 4.3.3.5)

    @property
    def live(self) -> bool:
        """Can it still change? Not once it has EXT-X-ENDLIST, nor a VOD playlist (section 4.3.3.5)."""
        return not self.ended and self.playlist_type != "VOD"

    @property
    def key(self) -> str:
        return self.url

    def locate(self, ref: Ref) -> Located | None:
        return self._index.locate(ref)

    def available(self, now: float | None) -> range:
        return range(len(self.segments))  # a playlist lists what can be fetched now

    def segment(self, index: int) -> Segment:
        return self.segments[index]

    def directories(self) -> frozenset[str]:
        return directories_of(self.segments)

    @functools.cached_property
    def _index(self) -> SegmentIndex:
        return SegmentIndex(self.segments)


Playlist = MasterPlaylist | MediaPlaylist

# Section 4.2: AttributeName=AttributeValue, comma-separated; a quoted-string holds no '"' or line break.
_ATTRIBUTE = re.compile(r'\s*([A-Z0-9-]+)=("[^"\r\n]*"|[^",]*)\s*(?:,|$)')
_BYTERANGE = re.compile(r"(\d{1,18})(?:@(\d{1,18}))?")  # section 4.3.2.2: n[@o]
_DECIMAL = re.compile(r"\d{1,12}(?:\.\d{0,12})?")  # section 4.2: decimal-integer or decimal-floating-point
_RESOLUTION = re.compile(r"(\d{1,9})x(\d{1,9})")
_MASTER_TAGS = ("#EXT-X-STREAM-INF:", "#EXT-X-I-FRAME-STREAM-INF:", "#EXT-X-MEDIA:")
_MEDIA_TAGS = ("#EXTINF:", "#EXT-X-TARGETDURATION:")


class _Bad(Exception):
    """A rule broken; becomes NotUnderstood(reason)."""


def parse_playlist(body: bytes, url: str) -> Playlist | NotUnderstood:
    """A playlist fetched from `url` (its URIs are resolved against it, section 4.1)."""
    if len(body) > MAX_MANIFEST_BYTES:
        return NotUnderstood(f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")  # section 4.1: UTF-8 (a BOM is tolerated)
    except UnicodeDecodeError:
        return NotUnderstood("not UTF-8 (RFC 8216 section 4.1)")
    lines = [line.strip() for line in text.split("\n")]
    if lines[0] != "#EXTM3U":
        return NotUnderstood("the first line is not #EXTM3U (RFC 8216 section 4.3.1.1)")
    master = any(line.startswith(_MASTER_TAGS) for line in lines)
    media = any(line.startswith(_MEDIA_TAGS) for line in lines)
    if master and media:
        return NotUnderstood("both master and media playlist tags (RFC 8216 section 4.3.4)")
    if not master and not media:
        return NotUnderstood("neither a master nor a media playlist")
    try:
        return _master(lines[1:], url) if master else _media(lines[1:], url)
    except _Bad as e:
        return NotUnderstood(str(e))


def _master(lines: list[str], url: str) -> MasterPlaylist:
    variants: list[Variant] = []
    iframes: list[Variant] = []
    media: list[Media] = []
    pending: dict[str, str] | None = None  # an EXT-X-STREAM-INF's attributes, waiting for its URI line
    for line in lines:
        if not line or (line.startswith("#") and not line.startswith("#EXT")):
            continue  # blank lines and comments (section 4.1)
        tag, _, value = line.partition(":")
        if tag == "#EXT-X-STREAM-INF":
            if pending is not None:
                raise _Bad("#EXT-X-STREAM-INF without a URI line (RFC 8216 section 4.3.4.2)")
            pending = _attributes(value, tag)
        elif tag == "#EXT-X-I-FRAME-STREAM-INF":
            attrs = _attributes(value, tag)
            iframes.append(_variant(attrs, _required(attrs, "URI", tag), url))
        elif tag == "#EXT-X-MEDIA":
            attrs = _attributes(value, tag)
            kind, group = _required(attrs, "TYPE", tag), _required(attrs, "GROUP-ID", tag)
            if "URI" in attrs:
                media.append(Media(resolve(url, attrs["URI"]), kind, group, attrs.get("NAME", "")))
        elif not line.startswith("#"):
            if pending is None:
                raise _Bad("a URI line without #EXT-X-STREAM-INF (RFC 8216 section 4.3.4.2)")
            variants.append(_variant(pending, line, url))
            pending = None
    if pending is not None:
        raise _Bad("#EXT-X-STREAM-INF without a URI line (RFC 8216 section 4.3.4.2)")
    return MasterPlaylist(url, tuple(variants), tuple(iframes), tuple(media))


def _variant(attrs: dict[str, str], uri: str, url: str) -> Variant:
    bandwidth = _required(attrs, "BANDWIDTH", "a variant")
    if not bandwidth.isdigit() or len(bandwidth) > 18:
        raise _Bad(f"BANDWIDTH={bandwidth!r} is not a decimal-integer (RFC 8216 section 4.2)")
    size = _RESOLUTION.fullmatch(attrs.get("RESOLUTION", ""))
    groups = tuple((name, attrs[name]) for name in ("AUDIO", "VIDEO", "SUBTITLES") if name in attrs)
    return Variant(resolve(url, uri), int(bandwidth), (int(size[1]), int(size[2])) if size else None,
                   attrs.get("CODECS"), groups)


def _media(lines: list[str], url: str) -> MediaPlaylist:
    target: int | None = None
    sequence = 0
    ended = False
    playlist_type: str | None = None
    found: list[tuple[Ref, float, Ref | None]] = []
    duration: float | None = None  # an EXTINF's, waiting for its URI line
    byte_range: tuple[int, int | None] | None = None  # an EXT-X-BYTERANGE's (length, offset)
    init: Ref | None = None  # the EXT-X-MAP in force (section 4.3.2.5)
    for line in lines:
        if not line or (line.startswith("#") and not line.startswith("#EXT")):
            continue
        tag, _, value = line.partition(":")
        if tag == "#EXTINF":  # section 4.3.2.1: duration,[title]
            duration = _duration(value.partition(",")[0])
        elif tag == "#EXT-X-BYTERANGE":
            byte_range = _byte_range(value, tag)
        elif tag == "#EXT-X-MAP":
            attrs = _attributes(value, tag)
            init = Ref(resolve(url, _required(attrs, "URI", tag)))
            if "BYTERANGE" in attrs:  # without an offset, from the first byte (nothing precedes a map)
                length, offset = _byte_range(attrs["BYTERANGE"], tag)
                init = Ref(init.url, (offset or 0, (offset or 0) + length - 1))
        elif tag == "#EXT-X-TARGETDURATION":
            target = _integer(value, tag)
        elif tag == "#EXT-X-MEDIA-SEQUENCE":
            sequence = _integer(value, tag)
        elif tag == "#EXT-X-ENDLIST":
            ended = True
        elif tag == "#EXT-X-PLAYLIST-TYPE":
            playlist_type = value.strip()
        elif not line.startswith("#"):
            if duration is None:
                raise _Bad("a URI line without #EXTINF (RFC 8216 section 4.3.2.1)")
            uri = resolve(url, line)
            found.append((Ref(uri, _segment_range(byte_range, uri, found)), duration, init))
            duration, byte_range = None, None
    if target is None:
        raise _Bad("no #EXT-X-TARGETDURATION (RFC 8216 section 4.3.3.1)")
    segments = tuple(Segment(ref, seconds, sequence + i, map_ref) for i, (ref, seconds, map_ref) in enumerate(found))
    return MediaPlaylist(url, target, segments, sequence, ended, playlist_type)


def _segment_range(byte_range: tuple[int, int | None] | None, uri: str,
                   before: list[tuple[Ref, float, Ref | None]]) -> ByteRange | None:
    """A segment's bytes; without an offset they follow the previous segment's, which must be a
    sub-range of the same resource (section 4.3.2.2)."""
    if byte_range is None:
        return None
    length, offset = byte_range
    if offset is None:
        previous = before[-1][0] if before else None
        if previous is None or previous.url != uri or previous.byte_range is None:
            raise _Bad("#EXT-X-BYTERANGE without an offset must follow a sub-range of the same resource "
                       "(RFC 8216 section 4.3.2.2)")
        offset = previous.byte_range[1] + 1
    return offset, offset + length - 1


def _attributes(text: str, tag: str) -> dict[str, str]:
    """An attribute-list (section 4.2); quoted-string values without their quotes; the first of a name wins."""
    attrs: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _ATTRIBUTE.match(text, pos)
        if m is None or m.end() == pos:
            raise _Bad(f"{tag}: not an attribute-list (RFC 8216 section 4.2)")
        value = m[2]
        attrs.setdefault(m[1], value[1:-1] if value.startswith('"') else value)
        pos = m.end()
    return attrs


def _required(attrs: dict[str, str], name: str, tag: str) -> str:
    if name not in attrs:
        raise _Bad(f"{tag} without {name} (RFC 8216 section 4.3)")
    return attrs[name]


def _byte_range(text: str, tag: str) -> tuple[int, int | None]:
    m = _BYTERANGE.fullmatch(text.strip())
    if m is None or int(m[1]) == 0:
        raise _Bad(f"{tag}: {text!r} is not a byte range n[@o] (RFC 8216 section 4.3.2.2)")
    return int(m[1]), int(m[2]) if m[2] is not None else None


def _integer(text: str, tag: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise _Bad(f"{tag}: {text!r} is not a decimal-integer (RFC 8216 section 4.2)")
    return int(text)


def _duration(text: str) -> float:
    if _DECIMAL.fullmatch(text.strip()) is None:
        raise _Bad(f"#EXTINF: {text!r} is not a duration (RFC 8216 section 4.3.2.1)")
    return float(text)
