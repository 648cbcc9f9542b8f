"""Turning a request path into a safe relative path below the origin root (pure)."""
from __future__ import annotations

MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255


class BadPath(ValueError):
    """A path that can never name a file below the root; the message says why (400)."""


class HiddenPath(LookupError):
    """A dot-file or dot-folder, not served by default (404)."""


def clean_path(url_path: str, *, allow_dotfiles: bool = False) -> str:
    """The relative path 'a/b.mp4' for the (already percent-decoded) URL path '/a/b.mp4'.

    Rejects NUL and control characters, backslashes, '.' and '..' segments and
    over-long names; merges repeated slashes. An empty result means the root.
    """
    if len(url_path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise BadPath("path too long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url_path):
        raise BadPath("control characters are not allowed in paths")
    if "\\" in url_path:
        raise BadPath("backslashes are not allowed in paths")
    segments = [s for s in url_path.split("/") if s]
    for segment in segments:
        if segment in (".", ".."):
            raise BadPath("'.' and '..' path segments are not allowed")
        if len(segment.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES:
            raise BadPath("path segment too long")
        if segment.startswith(".") and not allow_dotfiles:
            raise HiddenPath(segment)
    return "/".join(segments)
