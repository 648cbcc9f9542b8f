"""What the cache keeps about one stored response, and the keys it is kept under (no I/O)."""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from ..http.cache import Stored
from ..http.directives import get
from ..http.headers import content_type_for, parse_http_date
from ..http.model import Representation

# Stored header fields the edge generates itself when it serves a stored 200.
GENERATED = frozenset({"etag", "last-modified", "content-type", "content-length", "accept-ranges", "age"})


@dataclass(frozen=True)
class CachedObject(Stored):
    """Metadata of a stored response; its body lives in blocks of `block_size` bytes.

    `validator` names this version in every block key: the origin's strong
    validator when `sliceable` (missing blocks may then be fetched by range), else a
    token unique to the one response all blocks were filled from.
    """

    key: str  # the meta key (primary key + Vary selection)
    size: int
    block_size: int
    validator: str
    sliceable: bool

    @property
    def block_count(self) -> int:
        return -(-self.size // self.block_size)

    def block_span(self, index: int) -> tuple[int, int]:
        """Bytes [start, end) of block `index`."""
        start = index * self.block_size
        return start, min(start + self.block_size, self.size)

    def block_key(self, index: int) -> str:
        return f"{self._block_prefix}{index}"

    def representation(self, path: str) -> Representation:
        """A stored 200 as the response rules see it (`path`'s media type when the origin named
        none); worked out once per path."""
        known = self._representations.get(path)
        if known is None:
            fields = self.fields
            known = self._representations[path] = Representation(
                size=self.size,
                etag=get(fields, "etag"),
                last_modified=parse_http_date(get(fields, "last-modified"), now=self.response_time),
                content_type=get(fields, "content-type") or content_type_for(path),
                extra_headers=tuple((n, v) for n, v in self.headers if n.lower() not in GENERATED),
            )
        return known

    @functools.cached_property
    def _representations(self) -> dict[str, Representation]:
        return {}

    @functools.cached_property
    def _block_prefix(self) -> str:
        """'b|<digest of key, version and block size>|' (computed once per object)."""
        digest = hashlib.sha256(f"{self.key}\n{self.validator}\n{self.block_size}".encode()).hexdigest()[:32]
        return f"b|{digest}|"


@dataclass(frozen=True)
class VaryIndex:
    """For a primary key whose responses vary: the request fields, and the selections stored,
    oldest first (an index written before they were ordered holds a set: read as it iterates)."""

    fields: tuple[str, ...]
    selections: tuple[str, ...] = ()


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
