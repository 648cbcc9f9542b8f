"""What the cache keeps about one stored response, and the keys it is kept under (no I/O)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..http.freshness import Headers


@dataclass(frozen=True)
class CachedObject:
    """Metadata of a stored response.

    A 200 representation is sliced into blocks of `block_size` bytes stored apart
    (`body` is None); any other storable response keeps its small body inline.
    """

    key: str  # the meta key (primary key + Vary selection)
    status: int
    headers: Headers  # end-to-end headers as the origin sent them, minus framing fields
    size: int
    etag: str | None  # the ETag served to clients (the origin's, or one made from Last-Modified)
    origin_etag: str | None
    last_modified: int | None
    request_time: float
    response_time: float
    block_size: int
    body: bytes | None = None
    # Not cached, only remembered: "too large" (over the maximum object size) or
    # "uncacheable" (the origin forbade storing); such requests go straight through.
    passthrough: str | None = None

    @property
    def validator(self) -> str:
        """Identifies this version at the origin; part of every block key."""
        return self.origin_etag or f"lm:{self.last_modified}:{self.size}"

    @property
    def block_count(self) -> int:
        return -(-self.size // self.block_size)

    def block_span(self, index: int) -> tuple[int, int]:
        """Bytes [start, end) of block `index`."""
        start = index * self.block_size
        return start, min(start + self.block_size, self.size)

    def block_key(self, index: int) -> str:
        digest = hashlib.sha256(f"{self.key}\n{self.validator}\n{self.block_size}".encode()).hexdigest()[:32]
        return f"b|{digest}|{index}"


@dataclass(frozen=True)
class VaryIndex:
    """For a primary key whose responses vary: the request fields, and the selections stored."""

    fields: tuple[str, ...]
    selections: frozenset[str] = frozenset()


def meta_key(primary: str, selection: str) -> str:
    """m|<hash of the Vary selection, or ->|<primary key>."""
    digest = hashlib.sha256(selection.encode()).hexdigest()[:32] if selection else "-"
    return f"m|{digest}|{primary}"


def vary_index_key(primary: str) -> str:
    return f"v|{primary}"


def primary_of(key: str) -> str | None:
    """The primary key inside a meta or vary-index key, else None."""
    kind, _, rest = key.partition("|")
    if kind == "v":
        return rest
    if kind == "m":
        return rest.partition("|")[2]
    return None
