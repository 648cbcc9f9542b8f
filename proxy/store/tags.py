"""Which stored responses carry a cache tag (http/tags.py), for purging by tag, in the store's
never-evicted index: a row per (tag, meta key), and per meta key the tags it was stored with.

The rows follow the metadata: storing a response replaces its key's tags (in the transaction
that stores it), and every removal of metadata (a purge, a forgotten version, an eviction)
forgets them. So a tag finds exactly the responses stored with it, and the index holds no
more than the stored metadata's tags (at most max_cache_tags each).
"""
from __future__ import annotations

from collections.abc import Iterable

import diskcache

_ROW = "t|"  # t|<tag>\n<meta key>: the response stored under the meta key has the tag
_TAGS = "T|"  # T|<meta key> -> the tags it was stored with (a tuple)


def _row(tag: str, key: str) -> str:
    return f"{_ROW}{tag}\n{key}"  # a tag has no line break (visible ASCII only)


class TagIndex:
    def __init__(self, index: diskcache.Cache) -> None:
        self.index = index

    def replace(self, key: str, tags: tuple[str, ...]) -> None:
        """The response stored under `key` now has `tags` (call it inside the index's transaction
        that stores it)."""
        old = self.tags_of(key)
        if old == tags:
            return
        with self.index.transact():
            for tag in set(old) - set(tags):
                self.index.delete(_row(tag, key))
            for tag in set(tags) - set(old):
                self.index.set(_row(tag, key), 1)
            if tags:
                self.index.set(_TAGS + key, tags)
            else:
                self.index.delete(_TAGS + key)

    def forget(self, keys: Iterable[str]) -> None:
        """The metadata stored under `keys` is gone: so are its tags."""
        with self.index.transact():
            for key in keys:
                for tag in self.tags_of(key):
                    self.index.delete(_row(tag, key))
                self.index.delete(_TAGS + key)

    def tags_of(self, key: str) -> tuple[str, ...]:
        value = self.index.get(_TAGS + key, ())
        return value if isinstance(value, tuple) else ()

    def keys_with(self, tag: str) -> list[str]:
        """The meta keys of the responses stored with `tag`, in key order (an indexed range query:
        diskcache stores str keys with raw = 1; a tag's rows sort between its line break and \\x0b)."""
        rows = self.index._sql("SELECT key FROM Cache WHERE key > ? AND key < ? AND raw = 1 ORDER BY key",
                               (f"{_ROW}{tag}\n", f"{_ROW}{tag}\x0b")).fetchall()
        return [row.partition("\n")[2] for (row,) in rows]
