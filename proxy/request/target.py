"""What a request asks for: its path as decoded and as received, and the target the origin is
asked for (and cached under). Pure."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from ..origins.base import Target
from .paths import origin_path, url_path


def target_of(path: str, query: str, received: str | None = None) -> Target:
    """A cleaned path and a query as the origin is asked for them (and cached under): the
    path as received when given (see paths.origin_path), else the cleaned path quoted."""
    raw = origin_path(received) if received is not None else url_path(path)
    return Target(path=path, raw=raw + (f"?{query}" if query else ""))


def received_path(scope: Mapping[str, Any]) -> str:
    """The request's path as it came on the wire (its bytes as latin-1 text, no query,
    no root_path); the decoded path quoted again if the server gave no raw_path."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        return url_path(scope["path"].lstrip("/"))
    text = raw.decode("latin-1").partition("?")[0]
    root = scope.get("root_path", "")
    return text[len(root):] if root and text.startswith(root) else text


def _after_prefix(received: str, prefix: str) -> str | None:
    """The received path after its first segment, when that segment is `prefix`
    ('/assets/x%2Fy.mp4' -> '/x%2Fy.mp4'); None when the route matched only once decoded."""
    first, slash, rest = received.removeprefix("/").partition("/")
    return "/" + rest if slash and unquote(first) == prefix else None


def content_path(scope: Mapping[str, Any], compat: bool) -> tuple[str, str | None] | None:
    """(path as decoded, path as received) of a content request, or None for the edge's own
    routes: /_edge/..., and with the compat routes / (the JSON welcome).

    /get_video_by_name/<name> is the file video/<name>, /assets/<path> the file <path>.
    The received path is None when a route matched only once decoded (then the decoded path,
    quoted again, is what the origin is asked for).
    """
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    if path.startswith("/_edge/"):
        return None
    received = received_path(scope)
    if compat:
        if path == "/":
            return None
        if path.startswith("/get_video_by_name/"):
            rest = _after_prefix(received, "get_video_by_name")
            return "video/" + path[len("/get_video_by_name/"):], None if rest is None else "/video" + rest
        if path.startswith("/assets/"):
            return path[len("/assets/"):], _after_prefix(received, "assets")
    return path[1:], received
