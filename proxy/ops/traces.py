"""Traces to replay through the cache policies: the shared CSV format and edgecache's own
access log (json and combined), as (object, object size, first byte, end) requests."""
from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from typing import IO

from .accesslog import FORMATS

FORMATS_READ = ("csv", *FORMATS)
Request = tuple[object, int, int, int]  # object, its size, the requested bytes [start, end)


class TraceError(ValueError):
    """A trace that cannot be read, with the line that says why."""


def open_text(path: str) -> IO[str]:
    """A trace file as text, gunzipped when it is gzip'd (by its first bytes, not its name)."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8", errors="replace") if gzipped else \
        open(path, encoding="utf-8", errors="replace")


def detect(first_line: str) -> str:
    """The format of a trace from its first line that is not a comment."""
    text = first_line.strip()
    if text.startswith("{"):
        return "json"
    if _COMBINED.match(text):
        return "combined"
    if len(text.split(",")) == 3:
        return "csv"
    raise TraceError(f"not a trace line (CSV time,object,size_kib or an access log line): {text[:120]!r}")


def read_trace(lines: IO[str], fmt: str = "auto") -> Iterator[Request]:
    """The requests of a trace, in order; `fmt` one of FORMATS_READ, or "auto"."""
    body = (line for line in lines if line.strip() and not line.startswith("#"))
    first = next(body, None)
    if first is None:
        return
    fmt = detect(first) if fmt == "auto" else fmt
    if fmt == "csv":
        yield from _csv(first, body)
    else:
        yield from _log(first, body, fmt)


def _csv(first: str, rest: Iterator[str]) -> Iterator[Request]:
    """`time,object,size_kib`: whole-object requests, the object's size in KiB."""
    for number, line in enumerate(_chain(first, rest), 1):
        try:
            _, obj, kib = line.split(",")
            size = int(kib) * 1024
            yield int(obj), size, 0, size
        except ValueError:
            raise TraceError(f"line {number}: expected time,object,size_kib: {line.strip()[:120]!r}") from None


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


_COMBINED = re.compile(
    r'\S+ \S+ \S+ \[[^\]]*\] "(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"(?:[^"\\]|\\.)*" "(?:[^"\\]|\\.)*" cache=(?P<cache>\S+) range="(?P<range>(?:[^"\\]|\\.)*)"')
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def _log(first: str, rest: Iterator[str], fmt: str) -> Iterator[Request]:
    """An access log's GETs answered with a body (200 or 206), by path. An object's size is the
    largest body a 200 sent for it, else the furthest byte a range reached so far; a 206's bytes
    start where its Range says (a suffix range, at the end of what is known)."""
    sizes: dict[str, int] = {}
    for number, line in enumerate(_chain(first, rest), 1):
        fields = _fields(line, fmt, number)
        if fields is None:
            continue
        path, status, sent, range_ = fields
        if status == 200:
            size = sizes[path] = max(sent, sizes.get(path, 0))
            yield path, size, 0, sent
            continue
        start = _start(range_, sizes.get(path, 0), sent)
        size = sizes[path] = max(start + sent, sizes.get(path, 0))
        yield path, size, start, start + sent


def _fields(line: str, fmt: str, number: int) -> tuple[str, int, int, str] | None:
    """(path, status, bytes sent, Range) of a GET that sent a body, or None for other lines."""
    if fmt == "json":
        try:
            entry = json.loads(line)
            method, path, status, sent = entry["method"], entry["path"], int(entry["status"]), int(entry["bytes"])
            range_ = entry.get("range") or ""
        except (ValueError, KeyError, TypeError):
            raise TraceError(f"line {number}: not an edgecache JSON access log line: {line.strip()[:120]!r}") from None
        cache = entry.get("cache") or ""
    else:
        m = _COMBINED.match(line)
        if m is None:
            raise TraceError(f"line {number}: not an edgecache combined access log line: {line.strip()[:120]!r}")
        method, _, rest = m["request"].partition(" ")
        path = rest.rpartition(" ")[0]
        status, sent = int(m["status"]), 0 if m["bytes"] == "-" else int(m["bytes"])
        range_, cache = m["range"], m["cache"].strip("-")
    if method != "GET" or status not in (200, 206) or sent <= 0 or not cache or path.startswith("/_edge/"):
        return None
    return path, status, sent, range_


def _start(range_: str, known: int, sent: int) -> int:
    m = _RANGE.match(range_.strip())
    if m is None:
        return 0
    first, last = m.groups()
    if first:
        return int(first)
    return max(0, known - sent) if last else 0
