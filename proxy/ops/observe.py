"""ASGI middleware that observes every request once: its metrics and its access log line."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..forwarded import Network, identify
from .accesslog import Entry, as_json, combined
from .metrics import RequestMeter

log = logging.getLogger("edgecache")


def fwd_status(cache_status: bytes) -> int | None:
    """The `fwd-status` of a Cache-Status value's last member, ours (RFC 9211 section 2.4)."""
    member = cache_status.rpartition(b",")[2]
    at = member.find(b"fwd-status=")
    if at < 0:
        return None
    digits = member[at + 11:at + 14]
    return int(digits) if digits.isdigit() else None


_LOGGED = (b"range", b"referer", b"user-agent")


def _logged_fields(headers: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The request fields the log shows, in one pass over the headers."""
    return {n: v.decode("latin-1") for n, v in headers if n in _LOGGED}


class Observe:
    """Counts each request in the metrics and, when `write` is given, logs one line for it.

    A pure ASGI middleware: per request one wrapped `send`, a few header lookups and two
    counter increments; the line is formatted here and written by another thread. A 5xx
    answer is also logged as a warning with the edge's Cache-Status (its `detail` names
    what failed); an exception escaping the app is logged with the request it broke.
    """

    def __init__(self, app: ASGIApp, *, write: Callable[[str], None] | None, log_format: str,
                 proxies: tuple[Network, ...], forwarded_header: str) -> None:
        self.app = app
        self.meter = RequestMeter()
        self.write = write
        self.format = as_json if log_format == "json" else combined
        self.proxies = proxies
        self.forwarded_header = forwarded_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, arrived = time.perf_counter(), time.time()
        status, sent, x_cache, cache_status = 0, 0, b"", b""

        async def observed(message: Message) -> None:
            nonlocal status, sent, x_cache, cache_status
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
                for name, value in message["headers"]:
                    if name == b"x-cache":
                        x_cache = value
                    elif name == b"cache-status":
                        cache_status = value
            elif kind == "http.response.zerocopysend":
                sent += message.get("count") or 0
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception as e:
            log.error("%s %s from %s failed after %d bytes: %r", scope["method"], _target(scope),
                      self._client(scope), sent, e)
            status = status or 500
            raise
        finally:
            self.meter.record(x_cache, status, sent)
            if self.write is not None or status >= 500:
                self._log(scope, arrived, time.perf_counter() - started, status, sent, x_cache, cache_status)

    def _log(self, scope: Scope, arrived: float, duration: float, status: int, sent: int, x_cache: bytes,
             cache_status: bytes) -> None:
        fields = _logged_fields(scope["headers"])
        entry = Entry(arrived, self._client(scope), scope["method"], _target(scope), scope.get("http_version", "1.1"),
                      status, sent, x_cache.decode("latin-1"), fields.get(b"range", ""),
                      fwd_status(cache_status), duration, fields.get(b"referer", ""), fields.get(b"user-agent", ""))
        if self.write is not None:
            self.write(self.format(entry))
        if status >= 500:
            log.warning("%s %s from %s answered %d: cache-status %r, %.3f s", entry.method, entry.target,
                        entry.client, status, cache_status.decode("latin-1"), duration)

    def _client(self, scope: Scope) -> str:
        peer = scope.get("client")
        host = peer[0] if peer else None
        if not self.proxies:
            return host or ""
        client = identify(host, scope.get("scheme", "http"), scope["headers"], self.proxies, self.forwarded_header)
        return client.address or ""


def _target(scope: Scope) -> str:
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    query = scope.get("query_string", b"")
    return (raw + b"?" + query if query else raw).decode("latin-1")
