"""Small bodies kept whole: a response whose body is small and comes whole in one answer of the
origin is read into memory (bounded), stored with its metadata in one store transaction, and
answered from memory: no part file, no block lease, no fill in the background, no reader tailing
a file. A HLS segment, a thumbnail, an error page: most objects of a catalogue are small.
"""
from __future__ import annotations

from ..http import cache as hc
from ..http.directives import Headers, get
from ..http.manifests import stored_whole
from ..origins.base import OriginError, OriginResponse


def whole_size(outcome: hc.StoreBlocks | hc.StoreBody, status: int, headers: Headers, path: str,
               limit: int) -> int | None:
    """The size of the body when it is to be read whole, else None: an object stored in blocks whose
    one answer holds all of it (from byte 0, at most `limit` bytes, `limit` within a block), or a
    response stored as it is (any status) whose Content-Length is at most `limit`, unless it is a
    manifest (read from its part file as it is stored) or a status without a body."""
    if isinstance(outcome, hc.StoreBlocks):
        return outcome.size if outcome.first_block == 0 and outcome.size <= limit else None
    size = hc.content_length(headers)
    if size is None or size > limit or status in (204, 304):
        return None
    return None if status == 200 and stored_whole(path, get(headers, "content-type"), size) else size


async def read_whole(response: OriginResponse, size: int) -> bytes:
    """The body of `response`, exactly `size` bytes; OriginError (nothing to store) when the origin
    sends fewer or more. The caller closes the response."""
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.body:
        received += len(chunk)
        if received > size:
            raise OriginError("invalid", f"the body is longer than its {size} bytes")
        chunks.append(chunk)
    if received < size:
        raise OriginError("invalid", f"the body ended at byte {received} of {size}")
    return b"".join(chunks)
