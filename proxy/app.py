"""The composition root: the origin, the store and the service made from the settings, and the
ASGI app wired from them (server/front.py in front; content requests to server/content.py; the
edge's own routes, server/own.py, and the lifespan in Starlette). Nothing here decides anything."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from .config import Settings, settings_for_worker
from .ops import metrics
from .ops.accesslog import LineWriter
from .ops.metered import MeteredOrigin
from .origins.base import Origin
from .origins.local import LocalOrigin
from .origins.s3 import S3Origin
from .origins.upstream import UpstreamOrigin
from .request.client import UNKEYED_FIELDS
from .server.content import ContentRoute, Dispatch
from .server.front import Front
from .server.own import own_routes
from .server.protocol import SHUT_DOWN
from .server.ready import ReadyAnswers
from .service import EdgeService
from .store.disk import Store, StoreErrors
from .writes.guard import WriteGuard
from .writes.peers import PurgePeers
from .writes.purge import PurgeRoute
from .writes.upload_route import UploadRoute

log = logging.getLogger("edgecache")


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
    service = EdgeService(settings, MeteredOrigin(make_origin(settings)), open_store(settings))
    peers = PurgePeers(settings.peers, next(iter(settings.tokens), None), settings.origin_response_timeout) \
        if settings.peers else None
    guard = WriteGuard(settings)
    uploads = UploadRoute(settings, service, guard)
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

    purge = PurgeRoute(settings, service, guard, peers)
    routes = Starlette(routes=own_routes(settings, service, guard, uploads, purge), lifespan=lifespan)
    routes.state.service = service
    reads, store = service.reads, service.store
    answers = None if reads is None or store is None else ReadyAnswers(store.changes_at, reads.hits.count)
    content = ContentRoute(settings, service, guard, uploads)
    front = Front(Dispatch(content, routes, settings.compat_routes), answers=answers, unkeyed=UNKEYED_FIELDS,
                  server=settings.server_name, write=None if access_log is None else access_log.put,
                  log_format=settings.access_log_format, proxies=settings.proxies,
                  forwarded_header=settings.forwarded_header)
    return EdgeApp(front, routes.state)


class EdgeApp:
    """The ASGI app create_app makes; `state` is the Starlette app's (state.service), and
    `answer_at_once` the front's, which the edge's server calls to write a ready answer itself."""

    def __init__(self, app: Front, state: State) -> None:
        self.app = app
        self.state = state
        self.answer_at_once = app.answer_at_once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not scope.get(SHUT_DOWN):
                raise
            # The server answered this request 503 at shutdown and cancelled what was left of it: its
            # clean-up ran; the cancellation ends here, not as an error of the app.


def app_from_env() -> EdgeApp:
    """uvicorn factory for worker processes (`--workers N` needs an import string)."""
    return create_app(settings_for_worker())
