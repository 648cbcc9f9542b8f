"""What a stored block's check means, and the counts of what the checks found, shared by every
process of one cache directory (and kept across restarts, as the policy's figures are).

A block is checked against the length and checksum written with it when it was published:
when a process first opens it (a start, a restart, or after it fell out of the process's
memory of checked blocks), whenever it is read into memory, and by the scrub (scrub.py).
A block that fails is dropped: the next request fills it again from the origin."""
from __future__ import annotations

import enum

from .epochs import Epochs


class Verdict(enum.Enum):
    SOUND = "sound"
    LENGTH = "length"  # truncated, grown, or another block's file of another size
    CHECKSUM = "checksum"  # flipped bytes, or another block's file of the same size
    MISSING = "missing"  # the store names a file that is not there
    UNRECORDED = "unrecorded"  # stored before blocks carried checksums: sound as far as anyone knows

    @property
    def damaged(self) -> bool:
        return self in (Verdict.LENGTH, Verdict.CHECKSUM, Verdict.MISSING)


def verdict(length: int, actual_length: int | None, recorded: int | None, computed: int | None) -> Verdict:
    """The check of a block `length` bytes long: `actual_length` of its file (None: no file),
    the checksum `recorded` when it was published (None: none was) and the one `computed` now
    (None: not computed, the length being wrong)."""
    if actual_length is None:
        return Verdict.MISSING
    if actual_length != length:
        return Verdict.LENGTH
    if recorded is None:
        return Verdict.UNRECORDED
    return Verdict.SOUND if computed == recorded else Verdict.CHECKSUM


DATABASES = ("objects", "index", "leases", "listings", "journal")


class Count(enum.IntEnum):
    """Counter slots (the database counters follow, DATABASES in order)."""

    DAMAGED_LENGTH = 0
    DAMAGED_CHECKSUM = 1
    DAMAGED_MISSING = 2
    SCRUBBED_BLOCKS = 3
    SCRUBBED_BYTES = 4
    SCRUB_PASSES = 5


_DAMAGED = {Verdict.LENGTH: Count.DAMAGED_LENGTH, Verdict.CHECKSUM: Count.DAMAGED_CHECKSUM,
            Verdict.MISSING: Count.DAMAGED_MISSING}
_PER_DATABASE = 8  # slots from here on: for each database, its heal generation, rebuilds and fresh starts
_GENERATION, _REBUILT, _EMPTIED = 0, 1, 2


class Tallies:
    """Counters in a small shared file (`integrity` in the cache directory)."""

    def __init__(self, path: str) -> None:
        self._counters = Epochs(path, _PER_DATABASE + 3 * len(DATABASES))

    def close(self) -> None:
        self._counters.close()

    def damaged(self, found: Verdict) -> None:
        self._counters.bump(_DAMAGED[found])

    def scrubbed(self, blocks: int, size: int) -> None:
        self._counters.bump(Count.SCRUBBED_BLOCKS, blocks)
        self._counters.bump(Count.SCRUBBED_BYTES, size)

    def scrub_pass(self) -> None:
        self._counters.bump(Count.SCRUB_PASSES)

    def _slot(self, database: str, which: int) -> int:
        return _PER_DATABASE + 3 * DATABASES.index(database) + which

    def generation(self, database: str) -> int:
        """How many times the database was moved aside: connections opened before are to the old file."""
        return self._counters.read(self._slot(database, _GENERATION))

    def replaced(self, database: str) -> None:
        """A damaged database was moved aside, a new one is in its place: connections must open it."""
        self._counters.bump(self._slot(database, _GENERATION))

    def healed(self, database: str, rebuilt: bool) -> None:
        """The new database is ready: `rebuilt` from what could be read of the old one, or empty."""
        self._counters.bump(self._slot(database, _REBUILT if rebuilt else _EMPTIED))

    def figures(self) -> dict[str, float]:
        read = self._counters.read
        figures = {f"damaged_{v.value}": float(read(slot)) for v, slot in _DAMAGED.items()}
        figures.update(scrubbed_blocks=float(read(Count.SCRUBBED_BLOCKS)),
                       scrubbed_bytes=float(read(Count.SCRUBBED_BYTES)), scrub_passes=float(read(Count.SCRUB_PASSES)))
        for database in DATABASES:
            figures[f"rebuilt_{database}"] = float(read(self._slot(database, _REBUILT)))
            figures[f"emptied_{database}"] = float(read(self._slot(database, _EMPTIED)))
        return figures
