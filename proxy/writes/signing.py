"""Signed URLs (pure): `?expires=<unix time>&signature=<hex>`, an HMAC-SHA256 over the
path and the expiry time, checked in constant time.

The signed path is the path in the form of the edge's cache keys (`paths.origin_path`:
RFC 3986 section 6.2.2 normalisation), so every spelling of one file has one signature.
The two parameters are removed from the query before the request goes on: they are not
part of the cache key and never reach the origin.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

EXPIRES = "expires"
SIGNATURE = "signature"
_EXPIRES = re.compile(r"[0-9]{1,12}")
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def signature(key: str, path: str, expires: int) -> str:
    """The hex HMAC-SHA256 of `path` (a cache-key path, no query) and `expires`; a newline,
    which a normalised path never holds, keeps the two apart."""
    message = f"{path}\n{expires}".encode("utf-8", "surrogateescape")
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signed_query(key: str, path: str, expires: int) -> str:
    """The query that makes `path` readable until `expires`."""
    return f"{EXPIRES}={expires}&{SIGNATURE}={signature(key, path, expires)}"


def needs_signature(path: str, prefixes: tuple[str, ...]) -> bool:
    """Does reading the decoded `path` need a signature? Every path when no prefix is set."""
    return not prefixes or path.startswith(prefixes)


@dataclass(frozen=True)
class Granted:
    """Read on, asking for `raw` (the target without the signature's parameters)."""

    raw: str


@dataclass(frozen=True)
class Refused:
    """403: `reason` says what is wrong with the URL."""

    reason: str


def strip(raw: str) -> tuple[str, list[str], list[str]]:
    """`raw` (path?query) without its `expires` and `signature` parameters, and their values."""
    path, mark, query = raw.partition("?")
    kept: list[str] = []
    found: dict[str, list[str]] = {EXPIRES: [], SIGNATURE: []}
    for pair in query.split("&") if mark else []:
        name, _, value = pair.partition("=")
        if name in found:
            found[name].append(value)
        else:
            kept.append(pair)
    rest = "&".join(kept)
    return path + ("?" + rest if rest else ""), found[EXPIRES], found[SIGNATURE]


def check(key: str, raw: str, required: bool, now: float) -> Granted | Refused:
    """The verdict on a read of `raw` (a target: key path and query); `required`: whether
    this path needs a signature (see needs_signature)."""
    bare, expires, signatures = strip(raw)
    if not required:
        return Granted(bare)
    if not expires or not signatures:
        return Refused("this URL needs a signature (?expires=<unix time>&signature=<hex>)")
    if len(expires) > 1 or len(signatures) > 1:
        return Refused("the signature's parameters are given more than once")
    if not _EXPIRES.fullmatch(expires[0]) or not _HEX.fullmatch(signatures[0]):
        return Refused("malformed signature: expires is a unix time, signature 64 hex digits")
    expected = signature(key, bare.partition("?")[0], int(expires[0]))
    if not hmac.compare_digest(expected, signatures[0].lower()):
        return Refused("wrong signature for this path")
    if int(expires[0]) < now:
        return Refused("the signed URL has expired")
    return Granted(bare)
