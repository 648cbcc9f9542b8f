"""`edgecache warm`: GET files through the cache so that later requests are hits.

Each file is read whole, or its first `head` bytes; for an MP4 whose index (`moov`) lies
past those bytes, the index is read too (see mp4.py), so a player's first request and
its read of the index are both hits. An HLS playlist or a DASH MPD (by its name) is read
and walked: a master playlist's variants (those `--renditions` picks, see renditions.py),
then every playlist's segments and initialization sections, by their byte ranges when
they have one. Bodies are counted and dropped.
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
from ..http.manifests import Kind, kind_of, parse_manifest
from ..http.streams import MAX_MANIFEST_BYTES, ByteRange, NotUnderstood, Ref, local_target
from ..request.paths import PATH_SAFE, origin_path, wire
from .fetchers import EdgeFetcher, Fetched, Fetcher, FetchError, app_fetcher
from .mp4 import MoovSearch, index_span, is_mp4_name
from .renditions import ALL, Selection, expand, files_of

_QUERY_SAFE = PATH_SAFE + "%?"  # a query's characters that stay as they are (RFC 3986 section 3.4)
_APP_BASE = "http://localhost"  # where the edge's app in this process is asked (fetchers.AppFetcher's Host)


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
    return origin_path(wire(path)) + ("?" + quote(query, safe=_QUERY_SAFE) if query else "")


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
    manifests: int = 0  # HLS playlists and DASH MPDs walked
    renditions: int = 0  # media playlists and Representations whose segments were warmed
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
        line += f", {_counted(self.indexes, 'MP4 index')} at the end" if self.indexes else ""
        if self.manifests:
            line += f", {_counted(self.manifests, 'manifest')} with {_counted(self.renditions, 'rendition')}"
        return line


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


@dataclass(frozen=True)
class Job:
    """A GET to make: a path and query, a byte range of it or the whole; a manifest is walked."""

    target: str
    byte_range: ByteRange | None = None
    manifest: bool = False
    whole: bool = False  # a manifest's segment: read whole (or its byte range), whatever the head size


class _Run:
    """Jobs in a queue, `concurrency` at a time; a manifest adds the jobs it names (each once)."""

    def __init__(self, fetcher: Fetcher, head: int | None, display: Display, errors: Console, base: str,
                 selection: Selection) -> None:
        self.fetcher, self.head, self.display, self.errors = fetcher, head, display, errors
        self.base, self.selection = base, selection
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.seen: set[tuple[str, ByteRange | None]] = set()

    def add(self, job: Job) -> None:
        if (job.target, job.byte_range) not in self.seen:
            self.seen.add((job.target, job.byte_range))
            self.display.tally.files += 1
            self.queue.put_nowait(job)

    async def worker(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                problem = await (self._manifest(job) if job.manifest else self._file(job))
            except FetchError as e:
                problem = str(e)
            finally:
                self.queue.task_done()
            if problem is not None:
                self.display.tally.errors += 1
                self.errors.print(f"edgecache warm: {job.target}: {problem}", markup=False, highlight=False,
                                  soft_wrap=True)  # one line each, however long
            self.display.file_done()

    async def _file(self, job: Job) -> str | None:
        if job.byte_range is None:
            return await _warm_one(self.fetcher, job.target, None if job.whole else self.head, self.display)
        got = await self.fetcher.get(job.target, job.byte_range, 0, self.display.length, self.display.chunk)
        first, last = job.byte_range
        return _checked(got, self.display.tally, f" for bytes {first}-{last}")

    async def _manifest(self, job: Job) -> str | None:
        """Read a manifest whole and add the jobs it leads to."""
        got = await self.fetcher.get(job.target, None, MAX_MANIFEST_BYTES + 1, self.display.length,
                                     self.display.chunk)
        problem = _checked(got, self.display.tally)
        if problem is not None:
            return problem
        if got.received > MAX_MANIFEST_BYTES:
            return f"larger than {MAX_MANIFEST_BYTES} bytes: not read as a manifest"
        manifest = parse_manifest(got.data, self.base + job.target)
        if isinstance(manifest, NotUnderstood):
            return f"not a manifest edgecache understands: {manifest.reason}"
        expansion = expand(manifest, self.selection)
        self.display.tally.manifests += 1
        self.display.tally.renditions += len(expansion.tracks)
        now = time.time()
        named = [(Ref(url), True) for url in expansion.playlists] + [
            (ref, False) for track in expansion.tracks for ref in files_of(track, now)]
        elsewhere = []
        for ref, is_manifest in named:
            target = local_target(ref.url, self.base)
            if target is None:
                elsewhere.append(ref.url)
            else:
                self.add(Job(target_of(target), ref.byte_range, is_manifest, whole=True))
        if not expansion.matched:
            return "--renditions matches none of its renditions"
        if elsewhere:
            return f"{_counted(len(elsewhere), 'file')} on other servers not warmed ({elsewhere[0]}, ...)"
        return None


async def warm(fetcher: Fetcher, targets: list[str], concurrency: int, head: int | None, display: Display,
               errors: Console, base: str, selection: Selection = ALL) -> Tally:
    """Warm every target, `concurrency` at a time; errors are reported one line each. `base`:
    the scheme and authority the fetcher's requests go to (a manifest's URIs on another
    server are not warmed)."""
    run = _Run(fetcher, head, display, errors, base.rstrip("/"), selection)
    for target in targets:
        run.add(Job(target, manifest=kind_of(target.partition("?")[0], None) in (Kind.HLS, Kind.DASH)))
    with display.progress:
        workers = [asyncio.create_task(run.worker()) for _ in range(concurrency)]
        joined = asyncio.create_task(run.queue.join())
        try:
            done, _ = await asyncio.wait([joined, *workers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [joined, *workers]:
                task.cancel()
            await asyncio.gather(joined, *workers, return_exceptions=True)
    for task in done - {joined}:
        task.result()  # a worker ends only by an unexpected error: raise it
    return display.tally


async def warm_edge(edge: str, targets: list[str], concurrency: int, head: int | None, display: Display,
                    errors: Console, selection: Selection = ALL) -> Tally:
    """Warm through a running edge at `edge` (http://host:port)."""
    fetcher = EdgeFetcher(edge, concurrency)
    try:
        return await warm(fetcher, targets, concurrency, head, display, errors, edge, selection)
    finally:
        await fetcher.aclose()


async def warm_cache(settings: Settings, targets: list[str], concurrency: int, head: int | None, display: Display,
                     errors: Console, selection: Selection = ALL) -> Tally:
    """Warm the cache directory of `settings` from its origin, through the edge's own app in this process."""
    async with app_fetcher(settings) as fetcher:
        return await warm(fetcher, targets, concurrency, head, display, errors, _APP_BASE, selection)


def _checked(got: Fetched, tally: Tally, what: str = "") -> str | None:
    """What is wrong with a response (its status, a body cut short), or None; hits and misses counted."""
    if got.status not in (200, 206):
        return f"status {got.status}{what}"
    if got.length is not None and got.received != got.length:
        return f"body cut short ({got.received} of {got.length} bytes){what}"
    if got.x_cache == "MISS":
        tally.misses += 1
    elif got.x_cache in ("HIT", "STALE"):
        tally.hits += 1
    return None


async def _warm_one(fetcher: Fetcher, target: str, head: int | None, display: Display) -> str | None:
    """Warm one file; what went wrong, or None."""
    tally = display.tally
    first = await fetcher.get(target, (0, head - 1) if head else None, 0, display.length, display.chunk)
    problem = _checked(first, tally)
    if problem is not None or head is None or first.size is None or first.size <= head \
            or not is_mp4_name(target.partition("?")[0]):
        return problem
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
