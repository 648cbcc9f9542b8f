"""ASGI body senders: a response plan streamed from a body source, stopped on disconnect."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
from starlette.types import Receive, Send

from .http.model import ResponsePlan, Span

# Reads bytes [start, end) of the representation.
SpanReader = Callable[[int, int], AsyncIterator[bytes]]


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]


async def send_plan(
    plan: ResponsePlan, reader: SpanReader | None, receive: Receive, send: Send, *, head: bool
) -> None:
    """Send the plan; span bytes come from `reader`. HEAD sends the headers only.

    The client's `http.disconnect` cancels the reads at once (uvicorn would
    otherwise drop our sends silently while we keep reading).
    """
    await send(
        {"type": "http.response.start", "status": plan.status, "headers": encode_headers(plan.headers)}
    )
    if head or not plan.body:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    async with anyio.create_task_group() as tg:

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch_disconnect)
        for segment in plan.body:
            if isinstance(segment, Span):
                assert reader is not None
                async for chunk in reader(segment.start, segment.end):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                await send({"type": "http.response.body", "body": segment, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        tg.cancel_scope.cancel()
