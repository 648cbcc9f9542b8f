"""Access log lines (pure formatting) and the thread that writes them off the event loop."""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from json.encoder import encode_basestring
from typing import NamedTuple, TextIO

from . import metrics

FORMATS = ("combined", "json")
QUEUE_LINES = 10_000  # lines waiting for the writer at most; beyond that they are dropped and counted
FLUSH_EVERY = 0.05  # seconds between the writer's rounds
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), *range(0x7F, 0xA0))} | {ord('"'): '\\"', ord("\\"): "\\\\"}


class Entry(NamedTuple):
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
    """Quoted, with quotes, backslashes and control characters escaped as Apache does."""
    if not text:
        return '"-"'
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return f'"{text.translate(_ESCAPES)}"'


class _Stamps:
    """A time format, formatted once per second (a line costs a cache look-up, not strftime)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.second = -1
        self.text = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self.second:
            self.second, self.text = second, time.strftime(self.pattern, time.gmtime(second))
        return self.text


_apache_time = _Stamps("%d/%b/%Y:%H:%M:%S +0000")
_iso_time = _Stamps("%Y-%m-%dT%H:%M:%S")


def combined(e: Entry) -> str:
    """Apache's combined format, then the edge's fields as key=value."""
    stamp = _apache_time(e.time)
    request = f"{e.method} {e.target} HTTP/{e.protocol}"
    origin = "-" if e.origin_status is None else str(e.origin_status)
    return (f"{e.client or '-'} - - [{stamp}] {_quoted(request)} {e.status} {e.sent or '-'} "
            f"{_quoted(e.referer)} {_quoted(e.user_agent)} cache={e.cache or '-'} range={_quoted(e.range)} "
            f"origin_status={origin} duration={e.duration:.6f}")


def as_json(e: Entry) -> str:
    """One JSON object; absent values are null (formatted by hand: json.dumps costs 3x more)."""
    stamp = f"{_iso_time(e.time)}.{int(e.time % 1 * 1000):03d}Z"
    origin = "null" if e.origin_status is None else e.origin_status
    return (f'{{"time": "{stamp}", "client": {_js(e.client)}, "method": {_js(e.method)}, '
            f'"path": {_js(e.target)}, "protocol": "HTTP/{e.protocol}", "status": {e.status}, "bytes": {e.sent}, '
            f'"cache": {_js(e.cache)}, "range": {_js(e.range)}, "origin_status": {origin}, '
            f'"duration": {round(e.duration, 6)}, "referer": {_js(e.referer)}, "user_agent": {_js(e.user_agent)}}}')


def _js(text: str) -> str:
    """A JSON string, or null for an empty one."""
    return encode_basestring(text) if text else "null"


class LineWriter:
    """Writes lines in a thread of its own, every FLUSH_EVERY seconds: a slow terminal or pipe
    never stalls the event loop, and a line costs the loop one deque append. When the writer
    falls QUEUE_LINES behind, lines are dropped and counted."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream  # None: sys.stdout as it is when writing
        self.lines: deque[str] = deque()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="edgecache-access-log", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def put(self, line: str) -> None:
        if len(self.lines) < QUEUE_LINES:
            self.lines.append(line)
        else:
            metrics.LOG_DROPPED.inc()

    def close(self) -> None:
        """Write what is queued, then stop (blocking: call from a thread)."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stopping.wait(FLUSH_EVERY):
            self._write()
        self._write()

    def _write(self) -> None:
        lines = []
        while self.lines:
            lines.append(self.lines.popleft())
        if lines:
            stream = self.stream or sys.stdout
            stream.write("\n".join(lines) + "\n")
            stream.flush()
