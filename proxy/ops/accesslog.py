"""Access log lines (pure formatting) and the thread that writes them off the event loop."""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from . import metrics

FORMATS = ("combined", "json")
QUEUE_LINES = 10_000  # lines waiting for the writer at most; beyond that they are dropped and counted
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


@dataclass(frozen=True, slots=True)
class Entry:
    """What one request did."""

    time: float  # when it arrived, seconds since the epoch
    client: str
    method: str
    target: str  # path and query as received
    protocol: str  # "1.1"
    status: int
    sent: int  # body bytes sent
    cache: str  # X-Cache: HIT, MISS, STALE, BYPASS; "" for the edge's own answers
    range: str  # the request's Range field, "" without one
    origin_status: int | None  # the origin's status (Cache-Status fwd-status), None when not asked
    duration: float  # seconds, from the request to the last byte sent
    referer: str
    user_agent: str


def _quoted(text: str) -> str:
    return '"' + text.translate(_ESCAPES) + '"' if text else '"-"'


def combined(e: Entry) -> str:
    """Apache's combined format, then the edge's fields as key=value."""
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(e.time))
    request = f"{e.method} {e.target} HTTP/{e.protocol}"
    origin = "-" if e.origin_status is None else str(e.origin_status)
    return (f"{e.client or '-'} - - [{stamp}] {_quoted(request)} {e.status} {e.sent or '-'} "
            f"{_quoted(e.referer)} {_quoted(e.user_agent)} cache={e.cache or '-'} range={_quoted(e.range)} "
            f"origin_status={origin} duration={e.duration:.6f}")


def as_json(e: Entry) -> str:
    """One JSON object; absent values are null."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e.time)) + f".{int(e.time % 1 * 1000):03d}Z"
    return json.dumps({
        "time": stamp, "client": e.client or None, "method": e.method, "path": e.target,
        "protocol": f"HTTP/{e.protocol}", "status": e.status, "bytes": e.sent, "cache": e.cache or None,
        "range": e.range or None, "origin_status": e.origin_status, "duration": round(e.duration, 6),
        "referer": e.referer or None, "user_agent": e.user_agent or None,
    }, ensure_ascii=False)


class LineWriter:
    """Writes lines from a bounded queue in a thread of its own: a slow terminal or pipe never
    stalls the event loop; when it falls QUEUE_LINES behind, lines are dropped and counted."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream  # None: sys.stdout as it is when writing
        self.lines: queue.Queue[str | None] = queue.Queue(QUEUE_LINES)
        self.thread = threading.Thread(target=self._run, name="edgecache-access-log", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def put(self, line: str) -> None:
        try:
            self.lines.put_nowait(line)
        except queue.Full:
            metrics.LOG_DROPPED.inc()

    def close(self) -> None:
        """Write what is queued, then stop (blocking: call from a thread)."""
        if self.thread.is_alive():
            self.lines.put(None)
            self.thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            batch = [self.lines.get()]
            while batch[-1] is not None and len(batch) < 256:
                try:
                    batch.append(self.lines.get_nowait())
                except queue.Empty:
                    break
            lines = [line for line in batch if line is not None]
            if lines:
                stream = self.stream or sys.stdout
                stream.write("\n".join(lines) + "\n")
                stream.flush()
            if batch[-1] is None:
                return
