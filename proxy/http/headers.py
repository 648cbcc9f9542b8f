"""Header value formatting and parsing: HTTP-dates, entity-tags, media types."""
from __future__ import annotations

import calendar
import functools
import mimetypes
import re
import time

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUM = {m: i + 1 for i, m in enumerate(_MONTHS)}

# RFC 9110 section 5.6.7: a recipient MUST accept all three HTTP-date formats.
_IMF_FIXDATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{2}) ([A-Z][a-z]{2}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT"
)
_RFC850 = re.compile(
    r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
    r"(\d{2})-([A-Z][a-z]{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT"
)
_ASCTIME = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})"
)


def format_http_date(epoch_seconds: float) -> str:
    """IMF-fixdate in GMT (RFC 9110 section 5.6.7), e.g. 'Sun, 06 Nov 1994 08:49:37 GMT'."""
    return _format_http_date(int(epoch_seconds))


@functools.lru_cache(maxsize=1024)  # this second's Date, and stored objects' Last-Modified
def _format_http_date(epoch_seconds: int) -> str:
    t = time.gmtime(epoch_seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def parse_http_date(value: str | None, now: float | None = None) -> int | None:
    """Epoch seconds of an HTTP-date in any of the three formats, or None if invalid.

    `now` resolves RFC 850's two-digit year (section 5.6.7: a year that appears to
    be more than 50 years in the future is in the past century).
    """
    if value is None:
        return None
    return _parse_http_date(value.strip(), time.gmtime(now).tm_year if now is not None else 2000)


@functools.lru_cache(maxsize=4096)
def _parse_http_date(value: str, this_year: int) -> int | None:
    m = _IMF_FIXDATE.fullmatch(value)
    if m:
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _RFC850.fullmatch(value):
        day, mon, yy, hh, mm, ss = m.groups()
        year = str(_expand_two_digit_year(int(yy), this_year))
    elif m := _ASCTIME.fullmatch(value):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return None
    month = _MONTH_NUM.get(mon)
    fields = int(year), int(day), int(hh), int(mm), int(ss)
    if month is None or not _valid_clock(month, *fields):
        return None
    y, d, h, mi, s = fields
    return calendar.timegm((y, month, d, h, mi, s, 0, 0, 0))


def _expand_two_digit_year(yy: int, this_year: int) -> int:
    year = this_year - this_year % 100 + yy
    return year - 100 if year > this_year + 50 else year


def _valid_clock(month: int, year: int, day: int, hour: int, minute: int, second: int) -> bool:
    if not 1 <= year <= 9999 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return False
    return hour <= 23 and minute <= 59 and second <= 60


def make_etag(mtime_ns: int, size: int) -> str:
    """A strong entity-tag from a file's mtime and size: stable across restarts and workers."""
    return f'"{mtime_ns:x}-{size:x}"'


def split_list(value: str) -> list[str]:
    """Members of a comma-separated list field (RFC 9110 section 5.6.1).

    Empty members are dropped; commas inside quoted strings do not split.
    """
    members: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            members.append("".join(current).strip(" \t"))
            current = []
            continue
        current.append(ch)
    members.append("".join(current).strip(" \t"))
    return [m for m in members if m]


_VIDEO_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".m4s": "video/iso.segment",
    ".m4a": "audio/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".mov": "video/quicktime",
    ".ts": "video/mp2t",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".vtt": "text/vtt",
    ".json": "application/json",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
}
# Built-in table only: the same answer on every machine, no system files read.
_STDLIB_TYPES = mimetypes.MimeTypes(filenames=())
_TEXT_CHARSET = {"text/html", "text/plain", "text/css", "text/javascript", "text/vtt", "text/csv"}


def content_type_for(name: str) -> str:
    """Media type for a file name; application/octet-stream when unknown."""
    dot = name.rfind(".")
    ext = name[dot:].lower() if dot > name.rfind("/") else ""
    media = _VIDEO_TYPES.get(ext) or _STDLIB_TYPES.guess_type("x" + ext, strict=False)[0]
    if media is None:
        return "application/octet-stream"
    return f"{media}; charset=utf-8" if media in _TEXT_CHARSET else media


# RFC 9110 section 7.6.1: connection-specific fields, never forwarded or stored.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
     "proxy-authenticate", "proxy-authorization"}
)


def end_to_end(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers without hop-by-hop fields, including those named in Connection."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


# RFC 9112 section 3.2 / RFC 3986 section 3.2.2: uri-host [ ":" port ], possibly empty.
_HOST_VALUE = re.compile(
    rb"(\[[0-9A-Za-z:.%~_!$&'()*+,;=-]+\]|[0-9A-Za-z._~%!$&'()*+,;=-]*)(:[0-9]*)?"
)
_SECTION = "(RFC 9112 section 3.2)"


def host_problem(http_version: str, headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why the request's Host field is unacceptable (RFC 9112 section 3.2), or None.

    An HTTP/1.1 request needs exactly one Host field; no request may carry two; the
    value must be a host[:port] (empty is allowed).
    """
    hosts = [value for name, value in headers if name.lower() == b"host"]
    if len(hosts) > 1:
        return f"more than one Host header field {_SECTION}"
    if not hosts:
        return None if http_version in ("1.0", "0.9") else f"an HTTP/1.1 request needs a Host header field {_SECTION}"
    if not _HOST_VALUE.fullmatch(hosts[0].strip()):
        return f"the Host header field is not a valid host[:port] {_SECTION}"
    return None
