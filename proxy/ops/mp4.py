"""Where an MP4/QuickTime file keeps its index (`moov`): top-level atom headers, parsed without I/O.

ISO/IEC 14496-12 section 4.2: an atom (box) starts with a 32-bit big-endian size and a
four-character type; size 1 means a 64-bit size follows the type, size 0 means the atom
runs to the end of the file. `MoovSearch` walks the top-level atoms from the start of the
file and says which few bytes it wants next, so the caller reads them however it can
(ranged GETs) and the parsing stays pure.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER_BYTES = 16  # the longest atom header: size, type, 64-bit size
MAX_ATOMS = 64  # top-level atoms looked at before giving up (a fragmented file has many)
EXTENSIONS = (".mp4", ".m4v", ".mov")


class Mp4Error(ValueError):
    """Not an atom header where one should be."""


@dataclass(frozen=True)
class Atom:
    kind: str
    offset: int
    size: int  # header included

    @property
    def end(self) -> int:
        return self.offset + self.size


def is_mp4_name(path: str) -> bool:
    return path.lower().endswith(EXTENSIONS)


def parse_header(data: bytes, offset: int, file_size: int) -> Atom:
    """The atom whose header starts `data`, found at `offset` of a file of `file_size` bytes."""
    if len(data) < 8:
        raise Mp4Error(f"atom header at {offset} cut short")
    size, kind = struct.unpack(">I4s", data[:8])
    header = 8
    if size == 1:
        if len(data) < 16:
            raise Mp4Error(f"64-bit atom size at {offset} cut short")
        (size,) = struct.unpack(">Q", data[8:16])
        header = 16
    elif size == 0:
        size = file_size - offset
    if size < header:
        raise Mp4Error(f"atom at {offset} is smaller than its header ({size} bytes)")
    if offset + size > file_size:
        raise Mp4Error(f"atom at {offset} ({size} bytes) runs past the end of the file ({file_size})")
    return Atom(kind.decode("latin-1"), offset, size)


class MoovSearch:
    """Finds the top-level `moov` atom: read `wanted`, `feed` the bytes, until `wanted` is None."""

    def __init__(self, file_size: int) -> None:
        self.file_size = file_size
        self.offset = 0
        self.atoms: list[Atom] = []
        self.moov: Atom | None = None
        self.error: str | None = None

    @property
    def wanted(self) -> tuple[int, int] | None:
        """(offset, length) of the next header to read; None when the search is over."""
        if self.moov is not None or self.error is not None or len(self.atoms) >= MAX_ATOMS:
            return None
        left = self.file_size - self.offset
        return None if left < 8 else (self.offset, min(HEADER_BYTES, left))

    def feed(self, data: bytes) -> None:
        try:
            atom = parse_header(data, self.offset, self.file_size)
        except Mp4Error as e:
            self.error = str(e)
            return
        self.atoms.append(atom)
        if atom.kind == "moov":
            self.moov = atom
        self.offset = atom.end


def index_span(moov: Atom | None, head: int) -> tuple[int, int] | None:
    """The bytes [first, last] of the index a player fetches after the first `head` bytes,
    when it lies past them (a file that is not "faststart"); None when there is nothing more."""
    if moov is None or moov.end <= head:
        return None
    return max(moov.offset, head), moov.end - 1
