"""Streaming manifests: what a response is (an HLS playlist, a DASH MPD, a media segment) and,
for a manifest, its parse (hls.py, mpd.py). Pure."""
from __future__ import annotations

import re
from enum import Enum

from .hls import MasterPlaylist, MediaPlaylist, parse_playlist
from .mpd import Mpd, parse_mpd
from .streams import MAX_MANIFEST_BYTES, NotUnderstood, Track

Manifest = MasterPlaylist | MediaPlaylist | Mpd


class Kind(Enum):
    HLS = "hls"  # an HLS playlist, master or media (RFC 8216)
    DASH = "dash"  # a DASH MPD (ISO/IEC 23009-1)
    SEGMENT = "segment"  # a media segment, by its type: MPEG-TS, CMAF / ISO BMFF segments
    OTHER = "other"


# RFC 8216 section 4: a playlist is known by its path's extension or its media type (the
# registered one, and those players and origins use besides).
_HLS_TYPES = frozenset({"application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/mpegurl",
                        "audio/x-mpegurl"})
_HLS_EXTENSIONS = (".m3u8", ".m3u")
_DASH_TYPES = frozenset({"application/dash+xml"})  # ISO/IEC 23009-1 annex C
_DASH_EXTENSIONS = (".mpd",)
_SEGMENT_TYPES = frozenset({"video/mp2t", "video/iso.segment", "audio/iso.segment"})
_SEGMENT_EXTENSIONS = (".ts", ".m4s", ".cmfv", ".cmfa", ".cmft")
_XML_PROLOG = re.compile(rb"(?:\s+|<\?.*?\?>|<!--.*?-->)*", re.DOTALL)
_MPD_ROOT = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?MPD[\s>/]")  # the root element's start tag, any prefix


def kind_of(path: str, content_type: str | None, head: bytes | None = None) -> Kind:
    """What a response is, by its path (without the query), its Content-Type and, when given,
    the first bytes of its body. For manifests the body decides: an HLS playlist starts with
    #EXTM3U (RFC 8216 section 4.3.1.1), an MPD's root element is MPD (ISO/IEC 23009-1
    section 5.3.1), and a body that is neither is no manifest, whatever its name. Without a
    body, the type and the name say what it claims to be. Segments go by type and name."""
    if head is not None:
        sniffed = _sniff(head)
        if sniffed is not None:
            return sniffed
    media = (content_type or "").partition(";")[0].strip().lower()
    name = path.lower()
    claimed = (Kind.HLS if media in _HLS_TYPES else Kind.DASH if media in _DASH_TYPES  # the type first
               else Kind.HLS if name.endswith(_HLS_EXTENSIONS) else Kind.DASH if name.endswith(_DASH_EXTENSIONS)
               else None)
    if claimed is not None:
        return claimed if head is None else Kind.OTHER  # a body that is not what it claims
    if media in _SEGMENT_TYPES or name.endswith(_SEGMENT_EXTENSIONS):
        return Kind.SEGMENT
    return Kind.OTHER


def stored_whole(path: str, content_type: str | None, length: int | None = None) -> bool:
    """Whether the cache stores a response from one whole response, never by byte ranges, so
    that its body is read (and parsed) once, when it is stored: an HLS playlist or a DASH MPD
    by its name or type (see kind_of, without a body), not known to be longer than
    MAX_MANIFEST_BYTES. `path` without the query."""
    return kind_of(path, content_type) in _MANIFESTS and (length is None or length <= MAX_MANIFEST_BYTES)


_MANIFESTS = (Kind.HLS, Kind.DASH)


def _sniff(head: bytes) -> Kind | None:
    body = head.removeprefix(b"\xef\xbb\xbf")
    if body.startswith(b"#EXTM3U") and body[7:8] in (b"", b"\r", b"\n"):
        return Kind.HLS
    prolog = _XML_PROLOG.match(body)
    if _MPD_ROOT.match(body, prolog.end() if prolog else 0):
        return Kind.DASH
    return None


def parse_manifest(body: bytes, url: str) -> Manifest | NotUnderstood:
    """The manifest fetched from `url`, by its content (see kind_of)."""
    sniffed = _sniff(body)
    if sniffed is Kind.HLS:
        return parse_playlist(body, url)
    if sniffed is Kind.DASH:
        return parse_mpd(body, url)
    return NotUnderstood("neither an HLS playlist nor a DASH MPD")


def tracks(manifest: Manifest) -> tuple[Track, ...]:
    """The renditions whose segments a manifest lists: a media playlist's own, an MPD's
    Representations; a master playlist lists none (its variants are playlists of their own)."""
    if isinstance(manifest, MediaPlaylist):
        return (manifest,)
    if isinstance(manifest, Mpd):
        return manifest.representations()
    return ()
