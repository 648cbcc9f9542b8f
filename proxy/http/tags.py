"""Cache tags (surrogate keys): names an origin gives its responses so that a publisher can purge
every response of one name at once (pure).

Two fields carry them, as the CDNs that defined them read them: `Surrogate-Key` (Fastly, and
the W3C Edge Architecture's Surrogate-Capability model) is a space-separated list, `Cache-Tag`
(Cloudflare, Akamai's Edge-Cache-Tag) a comma-separated one. A tag is compared exactly (case
included). They are for the cache: clients do not get them unless the operator says so
(a shield whose edges purge by tag too).
"""
from __future__ import annotations

import re

from .directives import Headers

TAG_FIELDS = frozenset({"surrogate-key", "cache-tag"})
MAX_TAG_LENGTH = 1024  # characters in one tag (Fastly's limit for a key); longer ones are ignored
_TAG = re.compile(rf"[\x21-\x7e]{{1,{MAX_TAG_LENGTH}}}")  # visible ASCII: no spaces, commas are separators
_SEPARATORS = {"surrogate-key": re.compile(r"[ \t]+"), "cache-tag": re.compile(r"[ \t]*,[ \t]*")}


def is_tag(text: str) -> bool:
    """Whether `text` can be a tag (as a purge names one)."""
    return _TAG.fullmatch(text) is not None and "," not in text


def response_tags(headers: Headers, limit: int) -> tuple[str, ...]:
    """The tags of a response, in the order its fields give them, each once, at most `limit`
    (the first ones); what is not a tag (too long, control or non-ASCII characters) is skipped."""
    tags: dict[str, None] = {}
    for name, value in headers:
        separator = _SEPARATORS.get(name.lower())
        if separator is None:
            continue
        for item in separator.split(value.strip()):
            if len(tags) >= limit:
                return tuple(tags)
            if is_tag(item):
                tags[item] = None
    return tuple(tags)


def without_tags(headers: Headers) -> Headers:
    """The fields without the tag fields (for a client): `headers` itself when it has none (every
    response is looked at: only names of a tag field's length are lower-cased)."""
    for name, _ in headers:
        if len(name) in _TAG_FIELD_LENGTHS and name.lower() in TAG_FIELDS:
            return [(n, v) for n, v in headers if n.lower() not in TAG_FIELDS]
    return headers


_TAG_FIELD_LENGTHS = frozenset(map(len, TAG_FIELDS))
