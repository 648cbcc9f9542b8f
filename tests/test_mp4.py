"""The MP4 top-level atom walk (proxy/ops/mp4.py): tables and hypothesis, no I/O."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.ops.mp4 import HEADER_BYTES, MAX_ATOMS, Atom, MoovSearch, Mp4Error, index_span, parse_header


def atom(kind: str, payload: int, wide: bool = False) -> bytes:
    """An atom of `payload` bytes after its header, with a 64-bit size when `wide`."""
    if wide:
        return struct.pack(">I4sQ", 1, kind.encode(), 16 + payload) + b"\0" * payload
    return struct.pack(">I4s", 8 + payload, kind.encode()) + b"\0" * payload


def search(data: bytes) -> MoovSearch:
    """Run a search over `data`, reading exactly what it asks for."""
    found = MoovSearch(len(data))
    while (wanted := found.wanted) is not None:
        offset, length = wanted
        assert 0 <= offset and offset + length <= len(data) and length <= HEADER_BYTES
        found.feed(data[offset:offset + length])
    return found


def test_a_file_that_is_not_faststart_has_its_index_at_the_end() -> None:
    data = atom("ftyp", 24) + atom("free", 0) + atom("mdat", 150_000) + atom("moov", 1000)
    found = search(data)
    assert [a.kind for a in found.atoms] == ["ftyp", "free", "mdat", "moov"]
    assert found.moov == Atom("moov", 32 + 8 + 150_008, 1008)
    assert index_span(found.moov, 65536) == (150_048, 151_055)
    assert index_span(found.moov, len(data)) is None  # all read already


def test_a_faststart_file_has_nothing_more_to_read() -> None:
    data = atom("ftyp", 24) + atom("moov", 1000) + atom("mdat", 150_000)
    found = search(data)
    assert found.moov == Atom("moov", 32, 1008)
    assert [a.kind for a in found.atoms] == ["ftyp", "moov"]  # the walk stops at the index
    assert index_span(found.moov, 65536) is None


def test_sixty_four_bit_sizes_and_an_atom_running_to_the_end() -> None:
    data = atom("ftyp", 8) + atom("mdat", 5000, wide=True) + struct.pack(">I4s", 0, b"moov") + b"\1" * 300
    found = search(data)
    assert found.atoms[1] == Atom("mdat", 16, 5016)
    assert found.moov == Atom("moov", 16 + 5016, 308)


@pytest.mark.parametrize(("data", "message"), [
    (struct.pack(">I4s", 4, b"ftyp") + b"\0" * 100, "smaller than its header"),
    (struct.pack(">I4sQ", 1, b"mdat", 8) + b"\0" * 100, "smaller than its header"),
    (struct.pack(">I4s", 5000, b"mdat") + b"\0" * 100, "runs past the end"),
    (struct.pack(">I4s", 1, b"mdat") + b"\0" * 4, "64-bit atom size at 0 cut short"),
])
def test_broken_headers_end_the_search_with_the_reason(data: bytes, message: str) -> None:
    found = search(data)
    assert found.moov is None and found.error is not None and message in found.error
    with pytest.raises(Mp4Error):
        parse_header(data[:16], 0, len(data))


def test_the_walk_gives_up_after_max_atoms() -> None:
    data = b"".join(atom("moof", 10) for _ in range(MAX_ATOMS + 5)) + atom("moov", 10)
    found = search(data)
    assert found.moov is None and len(found.atoms) == MAX_ATOMS


kinds = st.sampled_from(["ftyp", "free", "mdat", "moov", "wide", "uuid", "skip"])
atoms = st.lists(st.tuples(kinds, st.integers(0, 3000), st.booleans()), max_size=20)


@given(atoms)
def test_the_first_moov_is_found_where_it_was_written(spec: list[tuple[str, int, bool]]) -> None:
    data = b"".join(atom(kind, payload, wide) for kind, payload, wide in spec)
    found = search(data)
    offsets = []
    offset = 0
    for kind, payload, wide in spec:
        offsets.append((kind, offset, payload + (16 if wide else 8)))
        offset += payload + (16 if wide else 8)
    expected = next((Atom(k, o, s) for k, o, s in offsets if k == "moov"), None)
    assert found.moov == expected
    assert found.error is None


@given(st.binary(max_size=400))
def test_any_bytes_end_the_search_without_an_exception(data: bytes) -> None:
    found = search(data)
    if found.moov is not None:
        assert found.moov.end <= len(data)
    assert len(found.atoms) <= MAX_ATOMS
