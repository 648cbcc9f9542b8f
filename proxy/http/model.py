"""Plain data shared by the pure HTTP rules: representations and decisions."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Representation:
    """What the edge knows about one selected representation (RFC 9110 section 3.2)."""

    size: int
    etag: str | None  # the full entity-tag as sent, e.g. '"5f3a-10"' or 'W/"x"'
    last_modified: int | None  # seconds since the epoch, UTC
    content_type: str
    extra_headers: tuple[tuple[str, str], ...] = ()  # stored origin headers to replay


# --- range decisions (RFC 9110 section 14) ---------------------------------


@dataclass(frozen=True)
class Ignore:
    """Send the whole representation (200): no, invalid, or ignored Range."""


@dataclass(frozen=True)
class Satisfiable:
    """Send these byte spans (206); each span is (first, last), inclusive, ascending."""

    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Unsatisfiable:
    """No requested range overlaps the representation (416)."""


RangeDecision = Ignore | Satisfiable | Unsatisfiable


# --- precondition decisions (RFC 9110 section 13.2.2) ----------------------


@dataclass(frozen=True)
class Proceed:
    """Preconditions hold (or none were sent): go on to range handling."""

    range_allowed: bool = True  # False when If-Range failed: ignore Range


@dataclass(frozen=True)
class NotModified:
    """Answer 304 (If-None-Match / If-Modified-Since on GET or HEAD)."""


@dataclass(frozen=True)
class PreconditionFailed:
    """Answer 412."""


PreconditionDecision = Proceed | NotModified | PreconditionFailed


# --- what to send -----------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """Bytes [start, end) of the representation, to be read from a body source."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


Segment = bytes | Span


@dataclass(frozen=True)
class ResponsePlan:
    """A complete answer: status, headers and the body as literal bytes and spans."""

    status: int
    headers: list[tuple[str, str]]
    body: list[Segment] = field(default_factory=list)

    @property
    def content_length(self) -> int:
        return sum(len(s) for s in self.body)
