"""Caching directives: Cache-Control (RFC 9111 section 5.2) and CDN-Cache-Control (RFC 9213)."""
from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from .headers import split_list

Headers = list[tuple[str, str]]
Directives = Mapping[str, str | None]  # read-only: parsed values are shared (cached by field value)
_PARSED = 4096  # distinct field values whose parse is kept...
KEPT_CHARS = 1024  # ... when this short: others (a client or an origin chooses them) are parsed each time
MAX_DELTA = 2**31  # RFC 9111 section 1.2.2: delta-seconds overflow to 2^31
T = TypeVar("T")


def cached_if(small: bool, cached: functools._lru_cache_wrapper[T]) -> Callable[..., T]:
    """`cached` when its key is small enough to keep, else the function it wraps (uncached): a
    cache whose keys a client or an origin chooses stays bounded in bytes, not only in entries."""
    return cached if small else cached.__wrapped__


class Fields(list[tuple[str, str]]):
    """Header fields that also know each field's joined value by lower-case name, found in one
    pass when made: `get` on a request's fields is then a dict lookup, however often the rules
    ask. The index follows every change to the list. With `reads` set, `get` records each name
    asked for: which fields a decision depended on (server/ready.py)."""

    reads: set[str] | None = None

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(pairs)
        self._reindex()

    def _reindex(self) -> None:
        joined: dict[str, str] = {}
        for name, value in self:  # (most names have one line: no list, no join)
            low = name.lower()
            before = joined.get(low)
            joined[low] = value if before is None else f"{before}, {value}"
        self.joined = joined

    def _changes(method: Any) -> Any:  # noqa: N805 (applied in the class body below)
        def changed(self: Fields, *args: Any, **kwargs: Any) -> Any:
            result = method(self, *args, **kwargs)
            self._reindex()
            return result
        return changed

    append = _changes(list.append)
    extend = _changes(list.extend)
    insert = _changes(list.insert)
    remove = _changes(list.remove)
    pop = _changes(list.pop)
    clear = _changes(list.clear)
    __setitem__ = _changes(list.__setitem__)
    __delitem__ = _changes(list.__delitem__)
    __iadd__ = _changes(list.__iadd__)
    __imul__ = _changes(list.__imul__)
    sort = _changes(list.sort)
    reverse = _changes(list.reverse)
    del _changes


def get(headers: Headers, name: str) -> str | None:
    """All lines of a field joined as one list value, or None (`name` lower-case)."""
    if type(headers) is Fields:
        reads = headers.reads
        if reads is not None:
            reads.add(name)
        return headers.joined.get(name)
    size = len(name)  # most names differ in length: no lower() for them
    values = [v for n, v in headers if len(n) == size and n.lower() == name]
    return ", ".join(values) if values else None


def cache_control(value: str | None) -> Directives:
    """Directives of a Cache-Control field, lower-cased; the first occurrence wins (section 4.2.1)."""
    value = value or ""
    return cached_if(len(value) <= KEPT_CHARS, _cache_control)(value)


@functools.lru_cache(maxsize=_PARSED)
def _cache_control(value: str) -> Directives:
    directives: dict[str, str | None] = {}
    for member in split_list(value):
        name, eq, arg = member.partition("=")
        name = name.strip().lower()
        if not name or name in directives:
            continue
        arg = arg.strip()
        if eq and len(arg) >= 2 and arg[0] == arg[-1] == '"':
            arg = arg[1:-1].replace('\\"', '"')
        directives[name] = arg if eq else None
    return MappingProxyType(directives)


def delta_seconds(value: str | None) -> int | None:
    """A delta-seconds argument; None when missing or invalid (section 1.2.2)."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return min(int(value), MAX_DELTA)


# RFC 8941 section 3.2: a Dictionary of keys with bare items (and parameters, which we skip).
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_ITEM = re.compile(
    r'-?\d{1,15}(?:\.\d{1,3})?'  # integer or decimal
    r'|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'  # string
    r'|[A-Za-z*][\x21\x23-\x27\x2a\x2b\x2d-\x3a\x3c-\x5b\x5d\x5e-\x7e]*'  # token (tchar, ':' and '/')
    r'|:[A-Za-z0-9+/=]*:'  # byte sequence
    r'|\?[01]'  # boolean
)
_SF_PARAM = re.compile(r";\s*([a-z*][a-z0-9_\-.*]*)(?:=(" + _SF_ITEM.pattern + r"))?")


def sf_dictionary(value: str) -> Mapping[str, str | bool] | None:
    """A Structured Field Dictionary as {key: item text, or True for a bare key}; None if invalid."""
    return cached_if(len(value) <= KEPT_CHARS, _sf_dictionary)(value)


@functools.lru_cache(maxsize=_PARSED)
def _sf_dictionary(value: str) -> Mapping[str, str | bool] | None:
    """sf_dictionary, kept by value.

    Only what cache directives use: bare items and booleans; an inner list is invalid here.
    """
    result: dict[str, str | bool] = {}
    pos, text = 0, value.strip(" ")
    while pos < len(text):
        key = _SF_KEY.match(text, pos)
        if key is None:
            return None
        pos = key.end()
        item: str | bool = True
        if pos < len(text) and text[pos] == "=":
            m = _SF_ITEM.match(text, pos + 1)
            if m is None:
                return None
            item, pos = m.group(), m.end()
            if item in ("?0", "?1"):
                item = item == "?1"
        while (param := _SF_PARAM.match(text, pos)) is not None:
            pos = param.end()
        result[key.group()] = item
        rest = text[pos:].lstrip(" \t")
        if not rest:
            break
        if rest[0] != ",":
            return None
        text, pos = rest[1:].lstrip(" \t"), 0
        if not text:
            return None  # a trailing comma
    return MappingProxyType(result)


def cdn_directives(headers: Headers, fields: tuple[str, ...]) -> Directives | None:
    """The directives of the first targeted field that is present, valid and non-empty (RFC 9213 section 2.1).

    Integers keep their text; a string item's quotes are removed; a false boolean drops the key.
    A field whose delta-seconds directives are not non-negative Integers is invalid.
    """
    for name in fields:
        value = get(headers, name) or ""
        parsed = sf_dictionary(value) if value else None
        if not parsed or any(k in _DELTAS and not (isinstance(v, str) and v.isdigit()) for k, v in parsed.items()):
            continue
        return cached_if(len(value) <= KEPT_CHARS, _targeted)(value)
    return None


@functools.lru_cache(maxsize=_PARSED)
def _targeted(value: str) -> Directives:
    directives: dict[str, str | None] = {}
    for key, item in (sf_dictionary(value) or {}).items():
        if item is True:
            directives[key] = None
        elif isinstance(item, str):
            directives[key] = item[1:-1] if item.startswith('"') else item
    return MappingProxyType(directives)


_DELTAS = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})
