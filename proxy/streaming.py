"""ASGI body sending: chunks streamed to the client, stopped at once when it disconnects."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.types import Receive, Send

from .http.model import ResponsePlan, Span
from .origins.base import BodyAborted, OriginError

log = logging.getLogger("edgecache")

# Reads bytes [start, end) of the representation.
SpanReader = Callable[[int, int], AsyncIterator[bytes]]


async def plan_chunks(plan: ResponsePlan, reader: SpanReader) -> AsyncIterator[bytes]:
    """The body of a plan: literal segments as they are, spans from the reader."""
    for segment in plan.body:
        if isinstance(segment, Span):
            async for chunk in reader(segment.start, segment.end):
                yield chunk
        else:
            yield segment


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]


async def send_response(
    status: int,
    headers: list[tuple[str, str]],
    chunks: AsyncIterator[bytes] | None,
    receive: Receive,
    send: Send,
) -> None:
    """Send status, headers and the chunks; None or HEAD sends the headers only.

    The client's `http.disconnect` cancels the reads at once (uvicorn would
    otherwise drop our sends silently while we keep reading). A body that fails
    midway is not completed, so the client sees a truncated response, never a
    wrong one.
    """
    await send({"type": "http.response.start", "status": status, "headers": encode_headers(headers)})
    if chunks is None:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    async with anyio.create_task_group() as tg:

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch_disconnect)
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (BodyAborted, OriginError, OSError) as e:
            # Leave the response incomplete: uvicorn closes the connection.
            log.warning("response body aborted: %s", e)
            tg.cancel_scope.cancel()
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        tg.cancel_scope.cancel()
