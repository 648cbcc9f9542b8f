"""Turning a request path into a safe relative path below the origin root, or into the path
an HTTP origin is asked for (pure)."""
from __future__ import annotations

import functools
import re
import string
from urllib.parse import quote, unquote

MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255


class BadPath(ValueError):
    """A path that can never name a file below the root; the message says why (400)."""


class HiddenPath(LookupError):
    """A dot-file or dot-folder, not served by default (404)."""


@functools.lru_cache(maxsize=1024)  # hot paths repeat; failures (exceptions) are not kept
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


_SLASHES = re.compile(r"/{2,}")


@functools.lru_cache(maxsize=1024)
def origin_path(raw_path: str) -> str:
    """The path of a request as an HTTP origin gets it (and as its cache key), from the
    path as received: percent-encoding kept (`%2F` stays `%2F`, `%FF` is not `%FE`), a
    trailing slash kept; runs of '/' merged, as for the cleaned path; normalised as RFC 3986
    section 6.2.2 says (upper-case hex, unreserved characters decoded) and every character
    that is not allowed in a path percent-encoded, so that one resource has one key however
    a client spells it, and the same key as `quote()` of its decoded path (uploads).

    `raw_path` is the received bytes as latin-1 text, without the query. The safety
    checks are clean_path's, on the decoded path.
    """
    merged = _SLASHES.sub("/", "/" + raw_path)
    out: list[str] = []
    i = 0
    while i < len(merged):
        c = merged[i]
        if c == "%" and _HEX.fullmatch(merged[i + 1: i + 3]):
            # RFC 3986 section 6.2.2: upper-case hex, unreserved characters decoded.
            decoded = chr(int(merged[i + 1: i + 3], 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + merged[i + 1: i + 3].upper())
            i += 3
            continue
        out.append(c if c in _PCHAR else _percent(c))
        i += 1
    return "".join(out)


_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_PCHAR = _UNRESERVED | frozenset("!$&'()*+,;=:@/")  # RFC 3986 section 3.3, and '/'
_HEX = re.compile(r"[0-9A-Fa-f]{2}")


def _percent(char: str) -> str:
    data = char.encode("latin-1") if ord(char) < 0x100 else char.encode("utf-8")
    return "".join(f"%{b:02X}" for b in data)


PATH_SAFE = "/!$&'()*+,;=:@~"  # RFC 3986 section 3.3: characters a path keeps as they are


def url_path(path: str) -> str:
    """The URL path of a decoded relative path ('films/é.mp4' -> '/films/%C3%A9.mp4'): every
    character a path may not hold percent-encoded, as UTF-8."""
    return "/" + quote(path, safe=PATH_SAFE)


def wire(text: str) -> str:
    """A path typed as text (an operator's ?path=, a command's argument) as the edge receives it
    from a client: each character as its UTF-8 bytes (latin-1 text, as origin_path takes it),
    percent-escapes kept as they are."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def typed_key(text: str, http_origin: bool) -> str:
    """The cache key an operator names with a path typed as text (purge, sign). An HTTP
    origin's keys are paths as requested, normalised (origin_path), with their query; a
    directory's or a bucket's are decoded file paths, where a '?' is part of the name. BadPath
    (or HiddenPath) for a path that cannot name a file."""
    if not http_origin:
        return "/" + clean_path(text, allow_dotfiles=True)
    path, mark, query = text.partition("?")
    clean_path(unquote(path), allow_dotfiles=True)  # its checks; the key keeps the path's spelling
    return origin_path(wire(path)) + mark + query


def key_prefix(prefix: str, http_origin: bool) -> str:
    """A purge prefix in the form of the keys it is compared with (see typed_key)."""
    if not http_origin:
        return prefix
    path, mark, query = prefix.partition("?")
    return origin_path(wire(path)) + mark + query


def query_value(query: str, name: str) -> str | None:
    """A parameter of a query string, percent-decoded as a URI (a '+' stays a '+'), or None."""
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if unquote(key) == name:
            return unquote(value)
    return None
