"""`edgecache warm`: GET files through the cache so that later requests are hits.

Each file is read whole, or its first `head` bytes; for an MP4 whose index (`moov`) lies
past those bytes, the index is read too (see mp4.py), so a player's first request and
its read of the index are both hits. Bodies are counted and dropped.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..config import Settings, format_size
from .fetchers import EdgeFetcher, Fetcher, FetchError, app_fetcher
from .mp4 import MoovSearch, index_span, is_mp4_name

_PATH_SAFE = "/%!$&'()*+,;=:@~"  # a path's characters that stay as they are (RFC 3986 section 3.3)
_QUERY_SAFE = _PATH_SAFE + "?"


class BadItem(ValueError):
    """A line that names no path."""


def target_of(item: str) -> str:
    """A path (`/video/a.mp4`, `video/a.mp4`) or URL (`http://edge/video/a.mp4?q`) as the
    percent-encoded path and query to GET; a URL's scheme and host are not used."""
    text = item.strip()
    if text.startswith(("http://", "https://")):
        parts = urlsplit(text)
        path, query = parts.path or "/", parts.query
    elif "://" in text:
        raise BadItem(f"not a path or an http(s) URL: {text!r}")
    else:
        path, _, query = text.partition("?")
    path = quote("/" + path.lstrip("/"), safe=_PATH_SAFE)
    return path + ("?" + quote(query, safe=_QUERY_SAFE) if query else "")


def read_items(lines: Iterable[str]) -> list[str]:
    """The non-blank lines that are not `#` comments."""
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class Tally:
    files: int = 0
    done: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    errors: int = 0
    indexes: int = 0  # MP4 indexes read past the head
    started: float = field(default_factory=time.monotonic)
    lengths: list[int] = field(default_factory=list)  # Content-Length of each file started

    def estimate(self) -> int:
        """Bytes to expect in all: what the files started so far announced, the rest at their mean."""
        if not self.lengths:
            return 0
        known = sum(self.lengths)
        return known + known * (self.files - len(self.lengths)) // len(self.lengths)

    def summary(self) -> str:
        seconds = time.monotonic() - self.started
        rate = format_size(int(self.bytes / seconds)) + "/s" if seconds > 0 else "-"
        counts = ", ".join(_counted(n, word) for n, word in ((self.hits, "hit"), (self.misses, "miss"),
                                                             (self.errors, "error")))
        line = (f"warmed {self.done - self.errors} of {_counted(self.files, 'file')}, {format_size(self.bytes)} in "
                f"{seconds:.1f} s ({rate}): {counts}")
        return line + (f", {_counted(self.indexes, 'MP4 index')} at the end" if self.indexes else "")


def _counted(n: int, word: str) -> str:
    plural = word + ("es" if word.endswith(("s", "x")) else "s")
    return f"{n} {word if n == 1 else plural}"


class Display:
    """A progress bar (files, bytes, rate, time left) on a terminal; nothing elsewhere."""

    def __init__(self, tally: Tally, console: Console) -> None:
        self.tally = tally
        self.progress = Progress(
            TextColumn("warming"), BarColumn(), TextColumn("{task.fields[files]}"),
            DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn(),
            console=console, disable=not console.is_terminal, transient=True,
        )
        self.task: TaskID = self.progress.add_task("warm", total=None, files=self._files())

    def _files(self) -> str:
        return f"{self.tally.done}/{self.tally.files} files"

    def length(self, n: int) -> None:
        self.tally.lengths.append(n)
        self.progress.update(self.task, total=self.tally.estimate())

    def chunk(self, n: int) -> None:
        self.tally.bytes += n
        self.progress.update(self.task, advance=n)

    def file_done(self) -> None:
        self.tally.done += 1
        self.progress.update(self.task, files=self._files())


async def warm(fetcher: Fetcher, targets: list[str], concurrency: int, head: int | None, display: Display,
               errors: Console) -> Tally:
    """Warm every target, `concurrency` at a time; errors are reported one line each."""
    tally = display.tally
    tally.files = len(targets)
    queue = iter(targets)

    async def worker() -> None:
        for target in queue:
            try:
                problem = await _warm_one(fetcher, target, head, display)
            except FetchError as e:
                problem = str(e)
            if problem is not None:
                tally.errors += 1
                errors.print(f"edgecache warm: {target}: {problem}", markup=False, highlight=False)
            display.file_done()

    with display.progress:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(targets)))))
    return tally


async def warm_edge(edge: str, targets: list[str], concurrency: int, head: int | None, display: Display,
                    errors: Console) -> Tally:
    """Warm through a running edge at `edge` (http://host:port)."""
    fetcher = EdgeFetcher(edge, concurrency)
    try:
        return await warm(fetcher, targets, concurrency, head, display, errors)
    finally:
        await fetcher.aclose()


async def warm_cache(settings: Settings, targets: list[str], concurrency: int, head: int | None, display: Display,
                     errors: Console) -> Tally:
    """Warm the cache directory of `settings` from its origin, through the edge's own app in this process."""
    async with app_fetcher(settings) as fetcher:
        return await warm(fetcher, targets, concurrency, head, display, errors)


async def _warm_one(fetcher: Fetcher, target: str, head: int | None, display: Display) -> str | None:
    """Warm one file; what went wrong, or None."""
    tally = display.tally
    first = await fetcher.get(target, (0, head - 1) if head else None, 0, display.length, display.chunk)
    if first.status not in (200, 206):
        return f"status {first.status}"
    if first.length is not None and first.received != first.length:
        return f"body cut short ({first.received} of {first.length} bytes)"
    if first.x_cache == "MISS":
        tally.misses += 1
    elif first.x_cache in ("HIT", "STALE"):
        tally.hits += 1
    if head is None or first.size is None or first.size <= head or not is_mp4_name(target.partition("?")[0]):
        return None
    search = MoovSearch(first.size)
    while (wanted := search.wanted) is not None:
        offset, length = wanted
        got = await fetcher.get(target, (offset, offset + length - 1), length, _ignore, display.chunk)
        if got.status != 206:
            return f"status {got.status} for bytes {offset}-{offset + length - 1}"
        search.feed(got.data)
    span = index_span(search.moov, head)
    if span is None:
        return None
    got = await fetcher.get(target, span, 0, _ignore, display.chunk)
    if got.status != 206 or got.received != span[1] - span[0] + 1:
        return f"status {got.status} for the MP4 index, bytes {span[0]}-{span[1]}"
    tally.indexes += 1
    return None


def _ignore(n: int) -> None:
    return None
