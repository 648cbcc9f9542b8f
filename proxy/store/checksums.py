"""Checksums of stored blocks: XXH3 (64 bits, from the xxhash package), kept in 63 bits so that
SQLite stores them as integers. Measured on the development machine (2 MiB blocks): XXH3 about
40 GB/s, CRC32C (crc32c) 20 GB/s, zlib.crc32 2 GB/s, blake2b 0.5 GB/s: checking a block read
from the page cache costs less than reading it.

A checksum says whether a file holds the bytes that were written; it is no defence against
someone who means to forge them (the cache directory is the edge's own)."""
from __future__ import annotations

import os

import xxhash

MASK = 2**63 - 1  # SQLite integers are signed 64-bit
READ_SIZE = 1024 * 1024  # bytes read at a time when a file is checked


def checksum(data: bytes | bytearray | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data) & MASK


class Running:
    """A checksum computed as the bytes go by (a fill writing its part file)."""

    def __init__(self) -> None:
        self._state = xxhash.xxh3_64()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._state.update(data)

    def value(self) -> int:
        return self._state.intdigest() & MASK


def file_checksum(fd: int, length: int) -> tuple[int, int]:
    """(checksum of the file's first `length` bytes, how many bytes it had of them), read with
    pread (the descriptor's offset is left alone: readers share it)."""
    running = Running()
    buffer = bytearray(min(READ_SIZE, max(length, 1)))
    view = memoryview(buffer)
    pos = 0
    while pos < length:
        n = os.preadv(fd, [view[: min(len(buffer), length - pos)]], pos)
        if n == 0:
            break
        running.update(view[:n])
        pos += n
    return running.value(), pos
