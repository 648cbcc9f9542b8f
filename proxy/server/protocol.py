"""The edge's HTTP/1.1 protocol: uvicorn's httptools protocol with zero-copy sends
(server/zerocopy.py), and the limits that let it face the internet alone (server/limits.py).

- A request head is counted as its bytes arrive and cut at `max_header_bytes` (414 while the
  request line is still coming, 431 after), its fields at `max_header_count` (431): memory
  stays flat whatever a client sends.
- A sweep, once a second or so, closes what has had its time: a connection idle for
  `keepalive_timeout` after an answer the server wrote at once (uvicorn arms a timer after
  the others), a head not complete after
  `client_header_timeout` (408, or closed without a word if nothing came), a body with no
  bytes for `client_body_timeout` or slower than `client_body_min_rate` (the app answers
  408: its upload sees the client gone, with the reason in the scope under TIMED_OUT), a
  client that took no response bytes for `send_timeout` (aborted: every descriptor and fill
  lease of its response is released as for a client gone).
- At most `max_connections` per worker and `max_connections_per_client` per address (not for
  `trusted_proxies`), and `max_pipelined_requests` requests read ahead of their answers: a
  deeper pipeline is read no further, and the connection closes after the answers queued
  (RFC 9112 section 9.3.2: the client sends the rest again).
- At shutdown, after the grace period, a request not yet answered gets a 503 (`stop_now`).
- A ready answer the server writes itself is written at the end of the loop's turn, with those
  of every other connection read in that turn (`Connections.write_soon`), not as its request
  is parsed: a client woken once per turn, not once per answer, costs the server less (it
  doubled the rate of 304s under wrk). Anything else written on that connection first writes it.

Each refusal is counted in the metrics (edgecache_client_refusals) and logged once.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from .. import pagecache
from ..cache.replies import InHand
from ..config import Settings
from ..ops import metrics
from ..request.client import Network, is_trusted
from ..streaming import FileSpan, Given, send_in_hand
from .limits import (
    BODY_TIMEOUT,
    HEAD_TIMEOUT,
    SEND_TIMEOUT,
    TOO_DEEP_PIPELINE,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_FIELDS,
    TOO_MANY_FROM_CLIENT,
    BodyClock,
    HeadMeter,
    Limits,
    Refusal,
    refusal_bytes,
)
from .ready import FileAnswer
from .zerocopy import GONE, ON_LOOP, ZeroCopyCycle, ZeroCopyProtocol, send_more

log = logging.getLogger("edgecache.server")
TIMED_OUT = "edgecache.timed_out"  # scope key: the Refusal of a request whose body stopped coming
SHUT_DOWN = "edgecache.shut_down"  # scope key: the server stopped this request at shutdown (503, or cut)
LINGER = 0.25  # seconds a refused connection is read (and dropped) before it closes
DEFERRED = 64 * 1024  # bytes of answers at once a connection holds for the end of the turn, at most
_SHUTDOWN = Refusal(503, "shutdown", "the server is shutting down; try again")


class _Stop(Exception):
    """Raised in a parser callback to stop parsing: the parser keeps nothing more."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


class Connections:
    """The connections of one server (one worker's event loop): the set the sweep visits, and
    the count per client address."""

    def __init__(self, limits: Limits, trusted: tuple[Network, ...]) -> None:
        self.limits = limits
        self.trusted = trusted
        self.open: set[EdgeProtocol] = set()
        self.per_client: Counter[str] = Counter()
        self.sweeping: asyncio.TimerHandle | None = None
        self.due: list[EdgeProtocol] = []  # connections with answers to write at the end of the turn
        self.interval = min(1.0, limits.head_timeout / 4, limits.body_timeout / 4, limits.send_timeout / 4)

    def write_soon(self, connection: EdgeProtocol, loop: asyncio.AbstractEventLoop) -> None:
        """Write `connection`'s answers at the end of this turn of the loop (see the module's docstring)."""
        due = self.due
        due.append(connection)
        if len(due) == 1:
            loop.call_soon(self._write_due)

    def _write_due(self) -> None:
        due, self.due = self.due, []
        for connection in due:
            try:
                connection.write_answers()
            except Exception as e:  # noqa: BLE001 - one connection's failure is not the others'
                log.error("an answer could not be written: %s", e)
                connection.transport.abort()

    def add(self, connection: EdgeProtocol, loop: asyncio.AbstractEventLoop) -> None:
        self.open.add(connection)
        if self.sweeping is None:
            self.sweeping = loop.call_later(self.interval, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for connection in list(self.open):
            connection.check(now)
        self.sweeping = loop.call_later(self.interval, self._sweep, loop) if self.open else None


class EdgeCycle(ZeroCopyCycle):
    """A request/response cycle whose body can time out: `receive` then says the client is
    gone, and the app answers (408) on a connection that closes after it."""

    timed_out = False

    async def receive(self) -> Any:
        if not self.timed_out:
            message = await super().receive()
            if not self.timed_out:
                return message
        return {"type": "http.disconnect"}


class EdgeProtocol(ZeroCopyProtocol):
    """ZeroCopyProtocol with the edge's limits (see the module's docstring)."""

    cycle_class = EdgeCycle

    def __init__(self, *args: Any, connections: Connections, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.book = connections
        self.limits = connections.limits
        self.meter = HeadMeter(self.limits.head_bytes)
        self.fields = 0  # header fields of the head being parsed
        self.head_since: float | None = None  # when the head being received began (loop time)
        self.body: BodyClock | None = None  # the body being received, and its time
        self.stall: tuple[tuple[int, int], float] | None = None  # (progress, since) of a response not taken
        self.done = False  # read no more: refused, timed out, or the pipeline is full
        self.address: str | None = None  # the peer, counted against max_connections_per_client
        # The app's ready answers, written here at once (server/front.py); None for another app.
        self.at_once: Callable[[Any], bytes | None] | None = getattr(self.app, "answer_at_once", None)
        self.answered = False  # the request being parsed was answered at once
        self.parsing = False  # a request's head is being parsed (its scope and fields are being made)
        self.sending: RequestResponseCycle | None = None  # a response going out with a request queued behind it
        self.idle_since: float | None = None  # when an answer at once left the connection waiting (loop time)
        self.answers: list[bytes] = []  # answers at once not written yet (Connections.write_soon)
        self.deferred = 0  # their bytes

    # Connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        book = self.book
        book.add(self, self.loop)
        self.head_since = self.loop.time()  # a connection that never sends is closed on time too
        metrics.CONNECTIONS.inc()
        if len(book.open) > self.limits.connections:
            self.refuse(Refusal(503, TOO_MANY_CONNECTIONS,
                                f"the edge has {self.limits.connections} connections open (max_connections)"),
                        linger=True)
            return
        peer = self.client[0] if self.client else None
        if self.limits.per_client and peer is not None and not is_trusted(peer, book.trusted):
            self.address = peer
            book.per_client[peer] += 1
            if book.per_client[peer] > self.limits.per_client:
                self.refuse(Refusal(503, TOO_MANY_FROM_CLIENT, f"{peer} has {self.limits.per_client} connections "
                                    "open (max_connections_per_client)"), linger=True)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        sending = self.sending
        if sending is not None and not sending.response_complete:  # (uvicorn tells only the queued cycle)
            sending.disconnected = True
            sending.message_event.set()
            if isinstance(sending, ZeroCopyCycle):
                sending.lost()
        book = self.book
        if self in book.open:
            book.open.discard(self)
            metrics.CONNECTIONS.dec()
        if self.address is not None:
            book.per_client[self.address] -= 1
            if not book.per_client[self.address]:
                del book.per_client[self.address]
            self.address = None

    # Receiving

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.idle_since = None
        self._unset_keepalive_if_required()
        meter = self.meter
        if meter.active:
            refusal = meter.feed(data)
            if refusal is not None:  # the client is still sending its head: read and drop it a moment
                self.refuse(refusal, linger=True)
                return
            if self.head_since is None and (self.cycle is None or self.cycle.response_complete):
                self.head_since = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, _Stop):
                self.refuse(e.__context__.refusal, linger=True)
                return
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # the edge speaks HTTP/1.1 only (no WebSocket)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.fields = 0
        self.parsing = True

    def on_header(self, name: bytes, value: bytes) -> None:
        """A field line, counted; then as uvicorn takes it, in this one call (it runs for every line
        of every request): the name lower-case, the value without the trailing whitespace llhttp
        keeps (RFC 9110 section 5.5), and `Expect: 100-continue` noted."""
        self.fields += 1
        if self.fields > self.limits.head_fields:
            raise _Stop(Refusal(431, TOO_MANY_FIELDS,
                                f"the request has over {self.limits.head_fields} header fields (max_header_count)"))
        name, value = name.lower(), value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.parsing = False
        self.meter.end()
        self.head_since = None
        self.idle_since = None  # (a head begun but never ended still waits only keepalive_timeout)
        if len(self.pipeline) >= self.limits.pipelined:
            raise _Stop(Refusal(0, TOO_DEEP_PIPELINE, f"over {self.limits.pipelined} requests sent ahead of their "
                                "answers (max_pipelined_requests): the rest is not read"))
        if self.at_once is not None and self._answer_at_once(self.at_once):
            return
        before = self.cycle
        super().on_headers_complete()
        if before is not None and self.cycle is not before and not before.response_complete:
            self.sending = before  # uvicorn queued the new cycle: this one's response is still going out
        now = self.loop.time()
        self.body = BodyClock(self.limits.body_timeout, self.limits.body_min_rate, now, now)

    def on_body(self, body: bytes) -> None:
        if self.body is not None:
            self.body.arrived(self.loop.time(), len(body))
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.body = None
        self.meter.begin()
        if self.answered:  # no cycle: the connection waits for the next request, as after any answer
            self.answered = False
            self.server_state.total_requests += 1
            # keepalive_timeout, kept by the sweep (a timer per answer costs more than the answer)
            self.idle_since = self.loop.time()
            return
        super().on_message_complete()

    def _answer_at_once(self, at_once: Callable[[Any], bytes | None]) -> bool:
        """Write the ready answer of the request whose head just came, with no ASGI cycle, when
        nothing is before it on the connection (no answer under way or queued, the transport
        taking bytes) and it keeps the connection alive (HTTP/1.1, no `Connection: close`: uvicorn
        would add its own field). A request with a body never has a ready answer."""
        cycle, parser = self.cycle, self.parser
        if (cycle is not None and not cycle.response_complete) or self.pipeline or self.done or \
                self.flow.write_paused or self.transport.is_closing() or parser.get_http_version() != "1.1" or \
                not parser.should_keep_alive() or parser.should_upgrade():
            return False
        scope = self.scope
        try:
            url = httptools.parse_url(self.url)
            raw_path = url.path
            path = raw_path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            return False  # uvicorn's own path refuses it
        scope["method"] = parser.get_method().decode("ascii")
        scope["path"] = self.root_path + (unquote(path) if "%" in path else path)
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = url.query or b""
        data = at_once(scope)
        if data is None:
            return False
        if isinstance(data, bytes):
            if not self.answers:
                self.book.write_soon(self, self.loop)
            self.answers.append(data)
            self.deferred += len(data)
            if self.deferred > DEFERRED:  # many pipelined in one read: written now (the transport's
                self.write_answers()  # flow control then sends the next ones through the app)
            self.answered = True
        else:
            self.answered = self._send_at_once(data)
        return True

    def _send_at_once(self, answer: FileAnswer) -> bool:
        """Write a file answer: its head, then its chunks, each span with sendfile here, on the
        loop, while its pages are in memory and the socket takes them (as ZeroCopyCycle does, at
        most ON_LOOP bytes); what is left goes out through a cycle of its own, as any response
        (True: all of it went now; the descriptors are closed once the body is sent)."""
        self.write_answers()
        transport, body = self.transport, answer.body
        sock = transport.get_extra_info("socket").fileno()
        chunks = body.chunks
        head = answer.head
        if chunks and isinstance(chunks[0], FileSpan) and not transport.get_write_buffer_size():
            # Held by the kernel to go out with the first bytes sendfile sends (one segment and one
            # wake-up of the client, not two); what the socket does not take, the transport writes.
            head = head[send_more(sock, head):]
        if head:
            transport.write(head)
        budget, at = ON_LOOP, 0
        try:
            while at < len(chunks):
                chunk = chunks[at]
                if isinstance(chunk, bytes):
                    transport.write(chunk)
                elif budget < chunk.count or transport.get_write_buffer_size() or not (
                        chunk.pages.resident(chunk.offset, chunk.count) if chunk.pages is not None else
                        pagecache.resident(chunk.fd, chunk.offset, chunk.count)):
                    break
                else:
                    sent = os.sendfile(sock, chunk.fd, chunk.offset, chunk.count)
                    if sent < chunk.count:  # the socket took part of it (0 for a file cut short, too)
                        chunks = [FileSpan(chunk.fd, chunk.offset + sent, chunk.count - sent), *chunks[at + 1:]]
                        at = 0
                        break
                    budget -= sent
                at += 1
        except BlockingIOError:
            pass
        except OSError as e:
            body.close()
            if e.errno not in GONE:
                log.error("a ready answer's body failed: %s", e)
            transport.abort()  # the response cannot be whole: the client sees it cut
            return True
        rest = chunks[at:]
        if not rest:
            body.close()
            return True
        try:
            later = body.kept(rest)  # (the loop runs before they are sent)
        except OSError as e:  # no descriptor to spare, say: part of the answer is out, it cannot be whole
            log.error("a ready answer's body could not go on: %s", e)
            transport.abort()
            return True
        self.cycle = cycle = self.cycle_class(
            scope=self.scope, transport=transport, flow=self.flow, logger=self.logger,
            access_logger=self.access_logger, access_log=self.access_log,
            default_headers=self.server_state.default_headers, message_event=asyncio.Event(),
            expect_100_continue=False, keep_alive=True, on_response=self.on_response_complete)
        cycle.response_started, cycle.chunked_encoding = True, False
        cycle.expected_content_length = later.length
        task = self.loop.create_task(_send_rest(cycle, later))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        return False

    def write_answers(self) -> None:
        """Write the answers at once not written yet (before anything else is written after them)."""
        answers = self.answers
        if answers:
            self.answers, self.deferred = [], 0
            if not self.transport.is_closing():
                self.transport.write(b"".join(answers))

    def send_400_response(self, msg: str) -> None:
        self.write_answers()
        super().send_400_response(msg)

    def shutdown(self) -> None:
        self.write_answers()
        super().shutdown()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not cycle.more_body and not self.pipeline and \
                not self.parsing:
            # An idle keep-alive connection holds nothing of the request it answered (its scope,
            # fields, body, cycle): thousands of them cost a few KiB each (uvicorn starts a new
            # cycle with the next request's head, and handles a connection without one). Not
            # while the request's body is still coming: an answer given before reading it (a
            # refusal) leaves the rest of it to be read, and dropped, through the cycle; nor while
            # the next request's head is coming (its scope and fields are the ones being made).
            self.cycle = self.scope = self.headers = None  # type: ignore[assignment]

    # Limits

    def check(self, now: float) -> None:
        """The sweep's visit: close what has had its time."""
        if not self.transport.is_closing():
            self.check_receiving(now)
        self.check_sending(now)
        idle, cycle = self.idle_since, self.cycle
        if idle is not None and now - idle > self.timeout_keep_alive and not self.transport.is_closing() and \
                (cycle is None or cycle.response_complete):
            self.transport.close()  # waited keepalive_timeout for a request after an answer at once

    def check_receiving(self, now: float) -> None:
        """A head or a body that has had its time."""
        limits = self.limits
        if self.head_since is not None and now - self.head_since > limits.head_timeout and not self.done:
            if self.meter.count:  # (the client may still be sending it: its bytes are dropped, then the close)
                self.refuse(Refusal(408, HEAD_TIMEOUT, f"the request head did not come within "
                                    f"{limits.head_timeout:g} seconds (client_header_timeout)"), linger=True)
            else:  # nothing came: an idle connection, closed without a word (nor a line in the log)
                self.done = True
                self.transport.close()
        body = self.body
        if body is not None and not self.done:
            if self.flow.read_paused:
                body.held(now)
            elif body.expired(now):
                self.timed_out(Refusal(408, BODY_TIMEOUT, f"the request body stopped coming (client_body_timeout "
                                       f"{limits.body_timeout:g} s, client_body_min_rate {limits.body_min_rate} B/s)"))

    def under_way(self) -> RequestResponseCycle | None:
        """The cycle whose response is going out: the one before a queued pipelined request's, else
        the connection's."""
        sending = self.sending
        if sending is not None and not sending.response_complete:
            return sending
        self.sending = None
        return self.cycle

    def check_sending(self, now: float) -> None:
        """A response the client takes no bytes of, for send_timeout seconds: the connection is
        aborted (what the transport holds is dropped, as the client is not taking it)."""
        cycle = self.under_way()
        waiting = isinstance(cycle, ZeroCopyCycle) and cycle.waiting
        held = self.transport.get_write_buffer_size()
        if not held and not waiting:
            self.stall = None
            return
        progress = (held, cycle.rooms if isinstance(cycle, ZeroCopyCycle) else 0)
        if self.stall is None or self.stall[0] != progress:
            self.stall = (progress, now)
        elif now - self.stall[1] > self.limits.send_timeout:
            self.count(Refusal(0, SEND_TIMEOUT, f"the client took no response bytes for "
                               f"{self.limits.send_timeout:g} seconds (send_timeout)"))
            self.done = True
            self.transport.abort()

    def refuse(self, refusal: Refusal, linger: bool = False) -> None:
        """Answer a refusal in place of the request being received, and close; behind an answer
        still being written (a pipelined request), close after that answer instead. With `linger`,
        what the client sends meanwhile is read and dropped for a moment before the close (closing
        on unread bytes resets the connection, and the client may then never see the answer)."""
        self.count(refusal)
        self.done = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self.flow.pause_reading()
            cycle.keep_alive = False
            return
        self.write_answers()
        if refusal.status:
            self.transport.write(refusal_bytes(refusal, self.limits.server))
        if linger:
            self.loop.call_later(LINGER, self.transport.close)
        else:
            self.flow.pause_reading()
            self.transport.close()

    def timed_out(self, refusal: Refusal) -> None:
        """The body stopped coming: the app's `receive` says the client is gone, and its answer
        (408, with the reason from the scope) closes the connection."""
        self.count(refusal)
        self.done = True
        self.body = None
        self.write_answers()
        self.flow.pause_reading()
        cycle = self.cycle
        if isinstance(cycle, EdgeCycle) and not cycle.response_complete:
            cycle.scope[TIMED_OUT] = refusal  # type: ignore[literal-required]
            cycle.timed_out = True
            cycle.keep_alive = False
            cycle.message_event.set()
        else:
            self.transport.close()

    def stop_now(self) -> None:
        """Shutdown, after the grace period: a request not answered yet gets a 503, a response
        under way is cut, an idle connection closed."""
        self.done = True
        self.write_answers()
        cycle = self.under_way()
        if cycle is None or cycle.response_complete:
            self.transport.close()
            return
        cycle.scope[SHUT_DOWN] = True  # type: ignore[literal-required]
        cycle.disconnected = True
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.abort()
        else:
            self.transport.write(refusal_bytes(_SHUTDOWN, self.limits.server))
            self.transport.close()

    def count(self, refusal: Refusal) -> None:
        metrics.CLIENT_REFUSALS.labels(refusal.reason).inc()
        peer = self.client[0] if self.client else "unknown"
        answer = f"answered {refusal.status}" if refusal.status else "closed"
        log.info("%s from %s: %s, %s", refusal.reason.replace("_", " "), peer, refusal.detail, answer)


async def _send_rest(cycle: EdgeCycle, body: InHand) -> None:
    """The rest of a file answer, through its cycle (which waits for room, and sees the client
    go); then its descriptors are closed. A body that fails is left cut, and the connection with it."""
    try:
        await send_in_hand(Given(*body.chunks), cycle.send, zerocopy=True)
    except Exception as e:  # noqa: BLE001 - nothing more can be sent
        log.error("a ready answer's body failed: %s", e)
    finally:
        body.close()
        if not cycle.response_complete:
            cycle.transport.abort()


def protocol_for(settings: Settings) -> Any:
    """The protocol class a server of these settings runs (uvicorn's `http=`): one book of
    connections per server."""
    return functools.partial(EdgeProtocol, connections=Connections(Limits.of(settings), settings.proxies))

