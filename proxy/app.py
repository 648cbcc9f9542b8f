"""The ASGI app: content requests straight to the edge, its own routes and the lifespan in
Starlette. Thin: request -> facts -> service -> response."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import unquote, urlsplit

import anyio.to_thread
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__
from .config import Settings, settings_for_worker
from .http.cachestatus import chained
from .http.tags import is_tag
from .ops import metrics
from .ops.accesslog import LineWriter
from .ops.metered import MeteredOrigin
from .ops.page import page_routes
from .origins.base import Origin, OriginError, Target
from .origins.local import LocalOrigin
from .origins.s3 import S3Origin
from .origins.upstream import UpstreamOrigin
from .request.client import UNKEYED_FIELDS, Client, base_url, forwarding_headers, identify, is_trusted
from .request.paths import BadPath, HiddenPath, clean_path, key_prefix, origin_path, query_value, typed_key, url_path
from .server.front import Front
from .server.limits import Refusal
from .server.protocol import SHUT_DOWN, TIMED_OUT
from .server.ready import OFFER, ReadyAnswers
from .service import EdgeService, ProxyRequest, Reply
from .store.disk import Store, StoreErrors
from .streaming import send_response, zero_copy
from .writes import signing
from .writes.auth import cross_site_reason, names_this_machine, origin_of, write_denial
from .writes.peers import HOPS, PurgePeers
from .writes.uploads import (
    MultipartFile,
    UploadError,
    check_declared_length,
    file_name,
    limited,
    upload_folder,
    upload_path,
)

log = logging.getLogger("edgecache")
READ_METHODS = ("GET", "HEAD")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # RFC 9110 section 9.2.1: not writes (CORS preflights pass)
DIRECTORY_METHODS = ("GET", "HEAD", "PUT", "POST")
_FORWARDED_FIELDS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto")
_REASONS = {400: "Bad Request", 408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
            415: "Unsupported Media Type", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
            507: "Insufficient Storage"}
_SOFT = {"1": True, "true": True, "0": False, "false": False}  # ?soft= of a purge
# A content request: scope, receive, send, the path decoded, the path as received.
Content = Callable[[Scope, Receive, Send, str, str | None], Awaitable[None]]


class ReplyResponse(Response):
    """Streams a service Reply; whatever it holds open is closed however the send ends."""

    def __init__(self, reply: Reply, head: bool) -> None:
        self.reply = reply
        self.head = head
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            chunks = None if self.head else self.reply.chunks
            await send_response(self.reply.status, self.reply.headers, chunks, receive, send, zero_copy(scope),
                                self.reply.in_hand)
        finally:
            await self.reply.close()


class AnyMethod:
    """An endpoint for every method, known or not (a function Route accepts only GET)."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def _target(path: str, query: str, received: str | None = None) -> Target:
    """A cleaned path and a query as the origin is asked for them (and cached under): the
    path as received when given (see paths.origin_path), else the cleaned path quoted."""
    raw = origin_path(received) if received is not None else url_path(path)
    return Target(path=path, raw=raw + (f"?{query}" if query else ""))


def _received_path(scope: Scope) -> str:
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


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def _gone(request: Request, when: str) -> Response:
    """The answer to a request whose body stopped: 408 when the server timed it out (the
    connection then closes), else 400 (the client went away: nobody reads it)."""
    timed_out = request.scope.get(TIMED_OUT)
    if isinstance(timed_out, Refusal):
        return _text(408, f"Request Timeout: {timed_out.detail}")
    return _text(400, f"Bad Request: the client went away {when}")


def make_origin(settings: Settings) -> Origin:
    if settings.origin_is_s3:
        return S3Origin(
            *settings.s3_location,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            credentials=(settings.s3_access_key_id, settings.s3_secret_access_key, settings.s3_session_token),
            part_size=settings.s3_part_size,
            cache_control=settings.cache_control,
            connect_timeout=settings.origin_connect_timeout,
            read_timeout=settings.origin_read_timeout,
            response_timeout=settings.origin_response_timeout,
        )
    if settings.origin_is_http:
        return UpstreamOrigin(
            settings.origin,
            connect_timeout=settings.origin_connect_timeout,
            read_timeout=settings.origin_read_timeout,
            response_timeout=settings.origin_response_timeout,
        )
    return LocalOrigin(
        settings.origin,
        chunk_size=settings.chunk_size,
        cache_control=settings.cache_control,
        max_ranges=settings.max_ranges,
        allow_dotfiles=settings.serve_dotfiles,
    )


def open_store(settings: Settings) -> Store | None:
    """The disk cache, or None when it is off (directory origin only) or cannot be opened."""
    if not settings.cache_enabled and not settings.origin_is_http:
        return None
    try:
        store = Store(settings.cache_dir, settings.cache_size_limit, on_evict=metrics.EVICTIONS.inc,
                      block_size=settings.block_size, policy_memory=settings.policy_memory,
                      max_variants=settings.max_variants, scrub_rate=settings.scrub_rate)
        store.sweep_parts(older_than=120)
        return store
    except StoreErrors as e:
        log.error("cache directory %s unusable, serving from the origin only: %s", settings.cache_dir, e)
        return None


def create_app(settings: Settings) -> EdgeApp:
    origin = MeteredOrigin(make_origin(settings))
    service = EdgeService(settings, origin, open_store(settings))
    peers = PurgePeers(settings.peers, next(iter(settings.tokens), None), settings.origin_response_timeout) \
        if settings.peers else None
    public_url = urlsplit(settings.public_base_url)
    public_host, public_hostname = public_url.netloc or None, public_url.hostname

    def who(request: Request) -> Client:
        """Who sent this request (forwarded.identify: behind trusted proxies, the client they name)."""
        peer = request.client.host if request.client else None
        return identify(peer, request.scope.get("scheme", "http"), request.scope["headers"], settings.proxies,
                        settings.forwarded_header)

    def public_base(request: Request, configured: str) -> str:
        """The base URL of this request: `configured`, else the scheme and host its client used."""
        return base_url(configured, who(request))

    def own_origins(request: Request) -> set[str]:
        """The origins a same-origin browser request to this edge names in `Origin`."""
        bases = {public_base(request, settings.public_base_url)}
        if request.headers.get("host"):
            bases.add(public_base(request, ""))
        return {o for o in map(origin_of, bases) if o is not None}

    def write_refusal(request: Request) -> Response | None:
        """401/403 unless this request may write (uploads, purges, other methods)."""
        peer = request.client.host if request.client else None
        client = who(request).address
        proxied = any(name in request.headers for name in _FORWARDED_FIELDS)
        via_untrusted_proxy = proxied and not is_trusted(peer, settings.proxies)
        cross_site = cross_site_reason(request.headers.get("sec-fetch-site"), request.headers.getlist("origin"),
                                       own_origins(request))
        host = request.headers.get("host")
        browser = "sec-fetch-site" in request.headers or "origin" in request.headers
        elsewhere = host if browser and not names_this_machine(host, public_hostname) else None
        denial = write_denial(settings.tokens, client, request.headers.get("authorization"),
                              forwarded=via_untrusted_proxy, cross_site=cross_site, browser_elsewhere=elsewhere)
        if denial is None:
            return None
        headers = {"WWW-Authenticate": 'Bearer realm="edgecache"'} if denial[0] == 401 else None
        return _text(denial[0], f"{'Unauthorized' if denial[0] == 401 else 'Forbidden'}: {denial[1]}", headers)

    def target_for(path: str, request: Request, wire_path: str | None = None) -> Target:
        """The origin target of a cleaned path; an HTTP origin gets the path as received."""
        query = request.scope.get("query_string", b"").decode("latin-1")
        return _target(path, query, wire_path if settings.origin_is_http else None)

    async def serve(request: Request, decoded: str, wire_path: str | None) -> Response:
        """`decoded`: the path decoded (checked, and the directory origin's path), `wire_path` as it came
        (the HTTP origin's path and cache key; None: the cleaned path quoted)."""
        method = request.method
        # The edge takes uploads for a directory origin, and turns a browser's multipart form into a PUT
        # for an HTTP origin; any other write to an HTTP origin is proxied as it is.
        if (method == "PUT" and not settings.origin_is_http) or (method == "POST" and _is_multipart(request)):
            return await upload(request, decoded)
        if method == "POST" and not settings.origin_is_http:
            return _text(415, "Unsupported Media Type: uploads are multipart/form-data with a field 'file'")
        if method not in READ_METHODS and not settings.origin_is_http:
            return _text(405, "Method Not Allowed", {"Allow": ", ".join(DIRECTORY_METHODS)})
        try:
            path = clean_path(decoded, allow_dotfiles=settings.serve_dotfiles)
        except BadPath as e:
            return _text(400, f"Bad Request: {e}")
        except HiddenPath:
            return _text(404, "Not Found")
        if method not in SAFE_METHODS:
            refusal = write_refusal(request)
            if refusal is not None:
                return refusal
        # A request body goes along as it arrives, whatever the method (RFC 9112 section 6.3).
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        body = request.stream() if has_body else None
        target = target_for(path, request, wire_path)
        # Every read needs the signature: OPTIONS too (it reaches an HTTP origin); writes have their own rule.
        if settings.signing_key and method in SAFE_METHODS:
            required = signing.needs_signature("/" + path, settings.signed_paths)
            verdict = signing.check(settings.signing_key, target.raw, required, time.time())
            if isinstance(verdict, signing.Refused):
                return _text(403, f"Forbidden: {verdict.reason}", {"Cache-Control": "no-store"})
            target = dataclasses.replace(target, raw=verdict.raw)
        received = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
        peer = request.client.host if request.client else None
        headers = forwarding_headers(received, peer, request.scope.get("scheme", "http"), public_host, settings.proxies)
        offer = request.scope.get(OFFER)
        if offer is not None:
            headers.reads = offer.read  # the fields the rules read: what the answer depends on
        try:
            reply = await service.handle(ProxyRequest(method, target, headers, body))
        except ClientDisconnect:
            return _gone(request, "while sending the request body")
        reply.headers = chained(reply.headers, settings.cache_name)
        # Kept for requests that ask the same: not a signed one (its verdict depends on the time), nor one with a body.
        if offer is not None and reply.steady is not None and reply.whole is not None and body is None \
                and not settings.signing_key:
            offer.steady, offer.body = reply.steady, b"" if method == "HEAD" else reply.whole
        return ReplyResponse(reply, head=method == "HEAD")

    async def upload(request: Request, decoded: str) -> Response:
        """PUT /<path> with the raw body, or POST /<folder> multipart with the field `file`."""
        refusal = write_refusal(request)
        if refusal is not None:
            return refusal
        limit = settings.max_upload_size
        try:
            check_declared_length(request.headers.get("content-length"), limit)
            # The whole request body is bounded in size (and in time, by the server: client_body_timeout):
            # a multipart body's preamble and other fields too, not only the file.
            received = limited(request.stream(), limit)
            if request.method == "POST":
                upload_folder(decoded)  # refused before the body is read
                form = MultipartFile(received, request.headers["content-type"])
                name = file_name(await form.open())
                path = upload_path(decoded.rstrip("/") + "/" + name, settings.extensions)
                body, length = form.chunks(), None
            else:
                path = upload_path(decoded, settings.extensions)
                declared = request.headers.get("content-length", "")
                body, length = received, int(declared) if declared.isdigit() else None
            uploaded = await service.upload(target_for(path, request), body, length)
        except UploadError as e:
            return _text(e.status, f"{_REASONS.get(e.status, 'Bad Request')}: {e}")
        except ClientDisconnect:
            return _gone(request, "during the upload")
        except OriginError as e:
            return _text(e.status, f"{_REASONS[e.status]}: the origin failed during the upload ({e.kind})")
        if not 200 <= uploaded.status < 300:
            return _text(uploaded.status, f"The origin refused the upload ({uploaded.status}): {uploaded.detail}")
        base = public_base(request, settings.public_base_url)
        url = base + url_path(path)
        answer = {"url": url, "path": "/" + path, "size": uploaded.size, "etag": uploaded.etag,
                  "content_type": uploaded.content_type}
        folder, _, name = path.rpartition("/")
        if settings.compat_routes and folder == "video":
            answer = {"video_url": f"{base}/get_video_by_name{url_path(name)}", **answer}
        return JSONResponse(answer, status_code=uploaded.status, headers={"Location": url})

    async def purge(request: Request) -> Response:
        refusal = write_refusal(request)
        if refusal is not None:
            return refusal
        query = request.scope.get("query_string", b"").decode("latin-1")
        forwarded_query = query
        path, prefix, tag = (query_value(query, name) for name in ("path", "prefix", "tag"))
        soft = _SOFT.get(query_value(query, "soft") or "0")
        if [path, prefix, tag].count(None) != 2:
            return _text(400, "Bad Request: give exactly one of ?path=/some/file, ?prefix=/some/folder/ or ?tag=name")
        if soft is None:
            return _text(400, "Bad Request: soft is 1 (mark stale, the next request revalidates) or 0")
        if tag is not None and not is_tag(tag):
            return _text(400, "Bad Request: a tag is 1 to 1024 visible ASCII characters, without commas")
        key = None
        if path is not None:
            # A directory origin's keys are decoded paths; an HTTP origin's are paths as
            # requested, so ?path= names one as it was requested ('/x%FF.mp4'; other
            # characters stand for their UTF-8 bytes, so '/a b' is '/a%20b').
            try:
                key = typed_key(path, settings.origin_is_http)
            except (BadPath, HiddenPath) as e:
                return _text(400, f"Bad Request: {e}")
        # The next tier first (purge_peers): this edge could otherwise fill again from its old copy.
        failed = await peers.purge(forwarded_query, request.headers.get(HOPS)) if peers is not None else []
        try:
            purged = await service.purge(key, None if prefix is None else key_prefix(prefix, settings.origin_is_http),
                                         tag, soft)
        except StoreErrors as e:
            return _text(503, f"Service Unavailable: the cache could not be purged ({e})")
        answer = {"purged": purged, "count": len(purged), **({"peers_failed": failed} if failed else {})}
        return JSONResponse(answer, status_code=502 if failed else 200, headers={"Cache-Control": "no-store"})

    async def content(scope: Scope, receive: Receive, send: Send, decoded: str, wire_path: str | None) -> None:
        request = Request(scope, receive)
        response = await serve(request, decoded, wire_path)
        await response(scope, receive, send)

    async def welcome(request: Request) -> Response:
        return JSONResponse(
            {
                "message": "Welcome to edgecache, a caching edge for video and large files.",
                "version": __version__,
                "health": "/_edge/health",
                "page": "/_edge/",
                "metrics": "/_edge/metrics",
            }
        )

    async def health(request: Request) -> Response:
        ok = await origin.healthy()
        return JSONResponse(
            {"status": "ok" if ok else "origin unavailable", "version": __version__,
             "origin": origin.kind, "cache": service.store is not None},
            status_code=200 if ok else 503,
            headers={"Cache-Control": "no-store"},
        )

    async def edge_reserved(request: Request) -> Response:
        """/_edge/ is the edge's own: an upload there is refused with the reason, the rest is 404."""
        if request.method == "PUT" or (request.method == "POST" and _is_multipart(request)):
            return await upload(request, "/_edge/" + request.path_params["rest"])
        return _text(404, "Not Found")

    routes = [
        Route("/_edge/health", health, methods=list(READ_METHODS)),
        Route("/_edge/purge", purge, methods=["POST"]),
        *page_routes(service, write_refusal),
        Route("/_edge/{rest:path}", AnyMethod(edge_reserved)),
    ]
    if settings.compat_routes:
        routes.append(Route("/", welcome, methods=list(READ_METHODS)))
    access_log = LineWriter() if settings.access_log else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        if access_log is not None:
            access_log.start()
        yield
        await service.aclose()
        if peers is not None:
            await peers.aclose()
        metrics.worker_exit()
        if access_log is not None:
            await anyio.to_thread.run_sync(access_log.close)

    routes_app = Starlette(routes=routes, lifespan=lifespan)
    routes_app.state.service = service
    reads, store = service.reads, service.store
    answers = None if reads is None or store is None else ReadyAnswers(store.changes_at, reads.hits.count)
    front = Front(Dispatch(content, routes_app, settings.compat_routes), answers=answers, unkeyed=UNKEYED_FIELDS,
                  server=settings.server_name, write=None if access_log is None else access_log.put,
                  log_format=settings.access_log_format, proxies=settings.proxies,
                  forwarded_header=settings.forwarded_header)
    return EdgeApp(front, routes_app.state)


class Dispatch:
    """Content requests (the files the edge serves, any method) go straight to the edge; the
    edge's own routes (/_edge/..., the welcome at /) and the lifespan to Starlette."""

    def __init__(self, content: Content, routes: ASGIApp, compat: bool) -> None:
        self.content = content
        self.routes = routes
        self.compat = compat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "*":
            await _asterisk(scope["method"])(scope, receive, send)
            return
        if scope["type"] == "http":
            found = content_path(scope, self.compat)
            if found is not None:
                await self.content(scope, receive, send, *found)
                return
        await self.routes(scope, receive, send)


def _asterisk(method: str) -> Response:
    """The answer to a request for `*` (RFC 9112 section 3.2.4): the edge's own, never the origin's.
    `OPTIONS *` asks what the server supports; any other method may not ask for `*`."""
    if method != "OPTIONS":
        return _text(400, "Bad Request: the request target '*' is for OPTIONS only (RFC 9112 section 3.2.4)")
    return Response(status_code=200, headers={"Allow": ", ".join(("OPTIONS", *DIRECTORY_METHODS))})


class EdgeApp:
    """The ASGI app create_app makes; `state` is the Starlette app's (state.service)."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not scope.get(SHUT_DOWN):
                raise
            # The server answered this request 503 at shutdown and cancelled what was left of it: its
            # clean-up ran; the cancellation ends here, not as an error of the app.


def content_path(scope: Scope, compat: bool) -> tuple[str, str | None] | None:
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
    received = _received_path(scope)
    if compat:
        if path == "/":
            return None
        if path.startswith("/get_video_by_name/"):
            rest = _after_prefix(received, "get_video_by_name")
            return "video/" + path[len("/get_video_by_name/"):], None if rest is None else "/video" + rest
        if path.startswith("/assets/"):
            return path[len("/assets/"):], _after_prefix(received, "assets")
    return path[1:], received


def app_from_env() -> EdgeApp:
    """uvicorn factory for worker processes (`--workers N` needs an import string)."""
    return create_app(settings_for_worker())
