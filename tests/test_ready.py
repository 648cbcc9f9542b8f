"""Ready answers: a hit replayed for identical requests must be, byte for byte, the answer the
full read path gives at that moment, and never outlive what it depends on."""
from __future__ import annotations

import dataclasses
import errno
import math
import os
import random
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE

import proxy.app
import proxy.cache.reads
import proxy.cache.replies
import proxy.http.directives
import proxy.ops.metrics
import proxy.server.content
import proxy.server.front
import proxy.server.protocol
import proxy.server.ready
from proxy.app import create_app
from proxy.cache.replies import Steady
from proxy.config import Settings
from proxy.http import cache as hc
from proxy.http.freshness import Policy
from proxy.http.headers import format_http_date
from proxy.server.ready import Asked, ReadyAnswers
from proxy.server.zerocopy import EncodedHead, encoded_head
from proxy.store.disk import Store
from proxy.writes.signing import signed_query
from tests.conftest import RunningServer
from tests.upstream import Obj

pytestmark = pytest.mark.anyio
POLICY = Policy()


# --- the rule: until when a hit stays the same hit -----------------------------------


@st.composite
def hits(draw: st.DrawFn) -> tuple[int, int, float, int | None, int | None]:
    """(max-age, Age received, seconds since, a request's max-age, its min-fresh): mostly fresh."""
    max_age = draw(st.integers(1, 10**6))
    received = draw(st.integers(0, max_age))
    elapsed = draw(st.floats(0, max_age - received + 1) | st.integers(0, max_age - received).map(float))
    near = st.integers(max(0, int(received + elapsed) - 2), int(received + elapsed) + 2)
    request_max_age = draw(st.none() | near | st.integers(0, 2 * 10**6))
    min_fresh = draw(st.none() | st.integers(0, max(0, max_age - received - int(elapsed))))
    return max_age, received, elapsed, request_max_age, min_fresh


@given(now=st.floats(1.6e9, 2.0e9), hit=hits(), fraction=st.floats(0, 1, exclude_max=True))
@example(now=1.7e9 + 0.5, hit=(10, 0, 3.0, 3, None), fraction=0.5)
@example(now=1.7e9 + 0.25, hit=(10, 0, 2.75, None, 7), fraction=0.9)
def test_a_fresh_hit_is_the_same_hit_until_it_steps(
    now: float, hit: tuple[int, int, float, int | None, int | None], fraction: float
) -> None:
    max_age, received_age, elapsed, request_max_age, min_fresh = hit
    response_time = now - elapsed
    stored = hc.Stored(200, [("Cache-Control", f"max-age={max_age}"), ("Age", str(received_age))],
                       response_time, response_time)
    directives = [d for d in (request_max_age is not None and f"max-age={request_max_age}",
                              min_fresh is not None and f"min-fresh={min_fresh}") if d]
    request = hc.Request("GET", [("Cache-Control", ", ".join(directives))] if directives else [], "/x")
    served = hc.decide(request, stored, hc.Fwd.URI_MISS, now, POLICY)
    assume(isinstance(served, hc.Serve))
    assert isinstance(served, hc.Serve)
    until = hc.steady_until(served, now)
    assert now <= until <= math.floor(now) + 1
    later = now + fraction * (until - now)
    if until - later <= 1e-6:  # not steady, or nearer a step than the two clocks' own rounding decides
        return
    again = hc.decide(request, stored, hc.Fwd.URI_MISS, later, POLICY)
    assert isinstance(again, hc.Serve) and not again.stale and not again.refresh
    assert (int(again.age), int(again.ttl)) == (int(served.age), int(served.ttl))
    assert format_http_date(later) == format_http_date(now)


@pytest.mark.parametrize("served", [
    hc.Serve(age=3.0, ttl=7.5),  # an age of whole seconds: a request's max-age=3 turns at once
    hc.Serve(age=2.5, ttl=7.0),  # a ttl of whole seconds: its Cache-Status ttl turns at once
    hc.Serve(age=2.5, ttl=0.0),
    hc.Serve(age=-0.5, ttl=7.5),  # a clock that went back
    hc.Serve(age=2.5, ttl=-1.5, stale=True),
    hc.Serve(age=2.5, ttl=7.5, refresh=True),
])
def test_hits_that_may_change_at_once_are_not_steady(served: hc.Serve) -> None:
    assert hc.steady_until(served, 1.7e9 + 0.25) == 1.7e9 + 0.25


def test_a_steady_hit_ends_at_the_first_step() -> None:
    now = 1_700_000_000.25
    assert hc.steady_until(hc.Serve(age=2.5, ttl=7.9), now) == now + 0.5  # Age steps first
    assert hc.steady_until(hc.Serve(age=2.1, ttl=7.75), now) == now + 0.75  # the Date
    assert hc.steady_until(hc.Serve(age=2.1, ttl=7.2), now) == pytest.approx(now + 0.2)  # the ttl


# --- the answers kept ----------------------------------------------------------------


class Counters:
    def __init__(self) -> None:
        self.counts = {7: 1}
        self.hits: list[str] = []


def answers(counters: Counters, max_bytes: int = 8 * 1024**2) -> ReadyAnswers:
    return ReadyAnswers(counters.counts.__getitem__, counters.hits.append, max_bytes)


def steady(since: float = 100.0, until: float = 100.5, varies_on: tuple[str, ...] = ()) -> Steady:
    return Steady(since, until, 7, 1, "/x", varies_on)


HEADERS = [(b"content-length", b"5")]


REQUEST = ((b"host", b"edge.test"), (b"user-agent", b"curl"))


def offer_twice(ready: ReadyAnswers, asked: Asked, *args: Any, request: Any = REQUEST, read: Any = (),
                **kwargs: Any) -> None:
    """An answer is kept when its request is offered a second time."""
    ready.keep(asked, request, read, *args, **kwargs)
    ready.keep(asked, request, read, *args, **kwargs)


def find(ready: ReadyAnswers, asked: Asked, now: float, request: Any = REQUEST) -> Any:
    key = ready.key(asked, request)
    return None if key is None else ready.find(key, now)


def key(name: str) -> Asked:
    return ("GET", "http", "1.1", "", "/" + name, name.encode(), b"", (b"edge.test",))


def test_an_answer_is_kept_when_its_request_is_offered_again() -> None:
    ready = answers(Counters())
    ready.keep(key("k"), REQUEST, (), 200, HEADERS, steady(), (), body=b"hello")
    assert find(ready, key("k"), 100.25) is None  # asked once: most requests with a client's own fields
    ready.keep(key("k"), REQUEST, (), 200, HEADERS, steady(), (), body=b"hello")
    assert find(ready, key("k"), 100.25) is not None


def test_an_answer_is_found_while_it_holds_and_tallied_as_a_hit() -> None:
    c = Counters()
    ready = answers(c)
    offer_twice(ready, key("k"), 200, HEADERS, steady(), (), body=b"hello")
    found = find(ready, key("k"), 100.25)
    assert found is not None and (found.status, found.headers, found.body) == (200, HEADERS, b"hello")
    assert c.hits == ["/x"]
    assert find(ready, key("other"), 100.25) is None


@pytest.mark.parametrize("now", [99.9, 100.5, 101.0])
def test_an_answer_outside_its_time_is_gone(now: float) -> None:
    c = Counters()
    ready = answers(c)
    offer_twice(ready, key("k"), 200, HEADERS, steady(), (), body=b"hello")
    assert find(ready, key("k"), now) is None
    assert find(ready, key("k"), 100.25) is None  # dropped, not kept for later
    assert c.hits == []


def test_an_answer_is_gone_once_its_key_changed_in_any_process() -> None:
    c = Counters()
    ready = answers(c)
    offer_twice(ready, key("k"), 200, HEADERS, steady(), (), body=b"hello")
    c.counts[7] = 2
    assert find(ready, key("k"), 100.25) is None


def test_an_answer_selected_or_read_by_a_field_the_edge_sets_is_not_kept() -> None:
    c = Counters()
    ready = answers(c)
    by_address = steady(varies_on=("accept", "x-forwarded-for"))
    offer_twice(ready, key("k"), 200, HEADERS, by_address, {"x-forwarded-for"}, body=b"hello")
    assert find(ready, key("k"), 100.25) is None
    offer_twice(ready, key("k"), 200, HEADERS, steady(), {"x-forwarded-for"}, body=b"hello", read={"x-forwarded-for"})
    assert find(ready, key("k"), 100.25) is None
    offer_twice(ready, key("k"), 200, HEADERS, steady(varies_on=("accept",)), {"x-forwarded-for"}, body=b"hello")
    assert find(ready, key("k"), 100.25) is not None


def test_requests_asking_the_same_share_an_answer() -> None:
    """Keyed by the fields the rules read: a client's own User-Agent or cookie is not one of them."""
    ready = answers(Counters())
    mine = ((b"host", b"edge.test"), (b"range", b"bytes=0-9"), (b"user-agent", b"a"), (b"cookie", b"x=1"))
    offer_twice(ready, key("k"), 206, HEADERS, steady(), (), body=b"0123456789", request=mine,
                read={"range", "if-range"})
    theirs = ((b"user-agent", b"b"), (b"host", b"edge.test"), (b"range", b"bytes=0-9"), (b"cookie", b"y=2"))
    assert find(ready, key("k"), 100.25, theirs) is not None
    for other in ((b"range", b"bytes=0-8"), (b"if-range", b'"v1"'), (b"range", b"bytes=0-9")):
        asks = (*theirs, other) if other[0] != b"range" else ((b"host", b"edge.test"), other, other)
        assert find(ready, key("k"), 100.25, asks) is None, other  # another value of a field read: another answer
    # More fields read for the path (a Vary, say): the answers kept under fewer names go.
    offer_twice(ready, key("k"), 206, HEADERS, steady(varies_on=("accept",)), (), body=b"0123456789", request=mine,
                read={"range"})
    assert find(ready, key("k"), 100.25, theirs) is not None  # neither sent an Accept: the same
    assert find(ready, key("k"), 100.25, (*theirs, (b"accept", b"text/html"))) is None


def test_a_ranged_answer_is_found_for_any_range_and_the_same_other_fields() -> None:
    """Kept from one request, a ranged answer is found for requests that differ in their Range (or
    have none) and in fields no rule read, never for another value of another field read; an exact
    answer kept for the same request stays its own."""
    ready = answers(Counters())
    mine = ((b"host", b"edge.test"), (b"range", b"bytes=0-9"), (b"if-range", b'"v1"'), (b"user-agent", b"a"))
    again = lambda scope: None  # noqa: E731 - never asked here
    offer_twice(ready, key("k"), 206, HEADERS, steady(), (), request=mine, read={"range", "if-range"}, again=again)
    for theirs in (mine, ((b"range", b"bytes=7-"), (b"if-range", b'"v1"'), (b"host", b"edge.test")),
                   ((b"if-range", b'"v1"'), (b"host", b"edge.test"), (b"cookie", b"c"))):
        k = ready.key(key("k"), theirs)
        assert k is not None and ready.current(k, 100.25) is None  # no exact answer was kept
        found = ready.ranged(k, 100.25)
        assert found is not None and found.again is again, theirs
    other = ready.key(key("k"), ((b"host", b"edge.test"), (b"range", b"bytes=0-9"), (b"if-range", b'"v2"')))
    assert other is not None and ready.ranged(other, 100.25) is None
    assert ready.ranged(ready.key(key("k"), mine), 101.0) is None  # type: ignore[arg-type]  # its time is over
    offer_twice(ready, key("k"), 206, HEADERS, steady(), (), body=b"0123456789", request=mine, read={"range"},
                again=again)
    k = ready.key(key("k"), mine)
    assert k is not None and ready.current(k, 100.25) is not None and ready.ranged(k, 100.25) is not None


HIT = [(b"date", b"Tue, 14 Nov 2023 22:13:20 GMT"), (b"content-length", b"5"), (b"age", b"3"),
       (b"cache-status", b"origin; fwd=uri-miss, edgecache; hit; ttl=7"), (b"x-cache", b"HIT")]


def renewing(read: list[Any], answer: Any = "fresh", dated: bool = False) -> Steady:
    """A steady hit renewed as the read path's rules would: `answer` "fresh" (a fresh hit one step
    later, its rules reading the fields in `read[0]`), or None (no longer a fresh hit)."""
    def renew(fields: Any, now: float) -> Any:
        read.append(dict(fields.joined))
        for name in read[0]:
            proxy.http.directives.get(fields, name)
        if answer is None:
            return None
        return proxy.cache.replies.Retimed(Steady(now, now + 0.5, 7, 1, "/x", (), renew),
                                           "Tue, 14 Nov 2023 22:13:21 GMT" if dated else None, "4", 6)
    return Steady(100.0, 100.5, 7, 1, "/x", (), renew)


def test_a_steady_answer_past_its_time_is_renewed_with_its_time_fields_only() -> None:
    """Past its steady time, with its stored response unchanged, an answer is the read path's
    rules' again (asked on the key's own fields), with only its Age, Date and ttl changed."""
    c = Counters()
    ready = answers(c)
    asks = (*REQUEST, (b"cache-control", b"max-age=9"))
    for dated in (False, True):
        read: list[Any] = [{"cache-control", "authorization"}]
        offer_twice(ready, key("k"), 200, HIT, renewing(read, dated=dated), (), body=b"hello", request=asks,
                    read={"cache-control", "authorization"})
        found = find(ready, key("k"), 100.75, asks)
        assert found is not None and found.body == b"hello" and found.steady.since == 100.75
        assert read[1:] == [{"cache-control": "max-age=9"}]  # the key's lines, not the client's own fields
        assert found.headers == [(b"date", b"Tue, 14 Nov 2023 22:13:21 GMT" if dated else HIT[0][1]),
                                 (b"content-length", b"5"), (b"age", b"4"),
                                 (b"cache-status", b"origin; fwd=uri-miss, edgecache; hit; ttl=6"),
                                 (b"x-cache", b"HIT")]
        assert find(ready, key("k"), 101.0, asks) is found  # within its new steady time: as it is
        assert len(read) == 2
    assert c.hits == ["/x"] * 4


def test_an_answer_is_not_renewed_when_it_is_no_longer_the_same_hit() -> None:
    """Not renewed, but gone: its stored response changed; the rules no longer serve it fresh; they
    read a field not in its key; or, for a ranged answer, its Range (not in a ranged key)."""
    c = Counters()
    ready = answers(c)
    read: list[Any] = [set()]
    offer_twice(ready, key("k"), 200, HIT, renewing(read), (), body=b"hello")
    c.counts[7] = 2
    assert find(ready, key("k"), 100.75) is None and read[1:] == []
    c.counts[7] = 1
    offer_twice(ready, key("k"), 200, HIT, renewing(read, answer=None), (), body=b"hello")
    assert find(ready, key("k"), 100.75) is None and find(ready, key("k"), 100.25) is None
    offer_twice(ready, key("k"), 200, HIT, renewing([{"pragma"}]), (), body=b"hello", read={"cache-control"})
    assert find(ready, key("k"), 100.75) is None
    mine = ((b"host", b"edge.test"), (b"range", b"bytes=0-9"))
    again = lambda scope, borrow: None  # noqa: E731 - never asked here
    for fields_read in ({"if-range"}, {"range"}):
        offer_twice(ready, key("r"), 206, HIT, renewing([fields_read]), (), request=mine, read={"range", "if-range"},
                    again=again)
        k = ready.key(key("r"), mine)
        assert k is not None
        renewed = ready.ranged(k, 100.75)
        assert (renewed is None) == ("range" in fields_read), fields_read
        assert renewed is None or renewed.again is again and renewed.field(b"age") == b"4"
    offer_twice(ready, key("k"), 200, [(b"content-length", b"5")], renewing([set()]), (), body=b"hello")
    assert find(ready, key("k"), 100.75) is None  # no Age nor Cache-Status: not a hit's fields


@given(st.lists(st.sampled_from([b"age", b"Age", b"date", b"cache-status", b"etag", b"x-cache"]), max_size=6),
       st.integers(0, 10**9), st.integers(-5, 10**9), st.booleans())
def test_retimed_fields_change_only_the_time_fields(names: list[bytes], age: int, ttl: int, dated: bool) -> None:
    headers = [(name, b"edge; hit; ttl=1, edgecache; hit; ttl=12" if name.lower() == b"cache-status" else b"v")
               for name in names]
    retimed = proxy.cache.replies.Retimed(steady(), "D" if dated else None, str(age), ttl)
    out = proxy.server.ready.retimed_fields(headers, retimed)
    lows = [name.lower() for name in names]
    complete = b"age" in lows and b"cache-status" in lows and (b"date" in lows or not dated)
    if not complete:
        assert out is None
        return
    assert out is not None and [name for name, _ in out] == names
    for (name, value), (_, before) in zip(out, headers, strict=True):
        low = name.lower()
        assert value == (str(age).encode() if low == b"age" else
                         b"edge; hit; ttl=1, edgecache; hit; ttl=%d" % ttl if low == b"cache-status" else
                         b"D" if low == b"date" and dated else before)


def test_answers_are_bounded_in_bytes() -> None:
    c = Counters()
    ready = answers(c, max_bytes=64 * 1024)
    for i in range(1000):
        offer_twice(ready, key(f"k{i}"), 200, HEADERS, steady(), (), body=bytes(400))
    assert ready._bytes <= 64 * 1024
    assert find(ready, key("k999"), 100.25) is not None and find(ready, key("k0"), 100.25) is None
    assert len(ready._read) == len(ready._kept) == len(ready._answers)  # what was read, for kept answers only
    offer_twice(ready, key("big"), 200, HEADERS, steady(), (), body=bytes(2048))  # over 1/64 of the bound
    assert find(ready, key("big"), 100.25) is None


# --- through the app: a replay equals the full path's answer -------------------------


class Clock:
    """time.time() as the test sets it; the rest of the time module as it is."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(math.floor(time.time()) - 10 + 0.125)  # before the origin's Date: no apparent age
    monkeypatch.setattr(proxy.cache.reads, "time", c)
    monkeypatch.setattr(proxy.server.content, "time", c)
    monkeypatch.setattr(proxy.server.front, "time", c)
    return c


@pytest.fixture
def decisions(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The times the read path decided at (a replayed answer decides nothing)."""
    made: list[float] = []
    decide = hc.decide

    def counted(req: hc.Request, entry: hc.Entry | None, miss: hc.Fwd, now: float, policy: Policy) -> hc.Action:
        made.append(now)
        return decide(req, entry, miss, now, policy)

    monkeypatch.setattr(hc, "decide", counted)
    return made


def in_process(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)), base_url="http://edge.test")


def answer(r: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return r.status_code, r.headers.raw, r.content


# Requests that ask the same in different ways: plainly, a Range, a condition, a max-age, a min-fresh.
ASKED = [{}, {"range": "bytes=10-99"}, {"if-none-match": "*"}, {"cache-control": "max-age=3"},
         {"cache-control": "min-fresh=3"}]


@pytest.mark.parametrize("asked", ASKED)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_replayed_answer_is_the_answer_of_the_full_path(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float], asked: dict[str, str], method: str,
) -> None:
    origin, _ = upstream
    body = bytes(range(256)) * 4
    origin.objects["/x"] = Obj(body, {"cache-control": "max-age=5"})
    async with in_process(http_settings) as c:
        await c.get("/x")  # stored now: its age is the time since, its Age steps at start + 1, + 2, ...
        start = clock.now
        replayed = 0
        pairs = [(0.1, 0.6), (0.7, 0.874), (0.8, 0.9), (0.9, 1.1), (1.2, 1.7), (2.95, 3.05), (3.2, 3.6),
                 (4.8, 4.99), (4.9, 5.01), (5.4, 5.5)]
        for kept, later in pairs:
            clock.now = start + kept
            await c.request(method, "/x", headers=asked)  # kept ready, if it may be
            clock.now = start + later
            made = len(decisions)
            again = await c.request(method, "/x", headers=asked)
            if len(decisions) > made:
                continue  # not a replay (the answer may have changed, or it revalidated)
            replayed += 1
            # The same request with a field the rules read (If-Match: * changes nothing here) is never a
            # replay: the full path's answer.
            full = await c.request(method, "/x", headers={**asked, "if-match": "*"})
            assert answer(again) == answer(full), (kept, later)
            assert len(full.content) == (0 if method == "HEAD" or full.status_code == 304 else
                                         90 if "range" in asked else len(body))
    assert replayed >= 3  # the test saw replays, not only the full path


LATER = (0.6, 1.05, 1.7, 2.2, 2.95, 3.05, 3.6, 4.2, 4.95, 5.05, 5.5, 6.5)  # seconds after the start


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The requests the read path answered (a replayed answer, renewed or not, takes none)."""
    made: list[int] = []
    read = proxy.cache.reads.ReadPath.read

    async def counted(self: Any, req: Any) -> Any:
        made.append(1)
        return await read(self, req)

    monkeypatch.setattr(proxy.cache.reads.ReadPath, "read", counted)
    return made


async def replayed_then_decided(
    settings: Settings, clock: Clock, reads: list[int], method: str, kept: dict[str, str],
    asked: Callable[[int], dict[str, str]],
) -> tuple[list[float], list[float]]:
    """/x kept for a request with the fields `kept` (asked twice, 0.1 s after it was stored), then asked
    at each of LATER with the fields `asked(i)`: the moments replayed, each answer compared with a
    second edge's on the same cache that keeps no answers ready, asked at the same moment (the
    read path answers nothing of a replay); and the moments the read path answered (then the
    answer may rightly differ: the edge asked first revalidates, and the other would find another
    stored response: they are not compared)."""
    full_path = create_app(settings)
    full_path.app.answers = None  # EdgeApp -> Front, answering nothing ready
    replayed, decided = [], []
    async with in_process(settings) as c, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=full_path), base_url="http://edge.test") as reference:
        for _ in range(2):  # stored, and its blocks read and held (a ranged answer answers from them)
            await c.get("/x", headers={name: value for name, value in kept.items() if name != "range"})
        start = clock.now
        clock.now = start + 0.1
        for _ in range(2):
            await c.request(method, "/x", headers=kept)  # offered twice: kept
        for i, later in enumerate(LATER):
            clock.now = start + later
            made = len(reads)
            again = await c.request(method, "/x", headers=asked(i))
            if len(reads) > made:
                decided.append(later)
                continue
            replayed.append(later)
            full = await reference.request(method, "/x", headers=asked(i))
            assert answer(again) == answer(full), later
    return replayed, decided


def fresh_until(limit: float) -> list[float]:
    """The moments of LATER before `limit`, and the one at which the read path must answer."""
    return [t for t in LATER if t < limit] + [min(t for t in LATER if t >= limit)]


@pytest.mark.parametrize("asked", ASKED)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("origin_dated", [False, True])
async def test_a_renewed_answer_is_the_answer_of_the_full_path(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, reads: list[int], asked: dict[str, str], method: str,
    origin_dated: bool,
) -> None:
    """Kept once, an answer goes on past its steady time without the read path (renewed) while the
    rules still serve it fresh: each time, it is the full path's answer at that moment, Date and
    Age included, whether the edge dates it or the origin did; once they would not (a request's
    max-age or min-fresh, the stored response's own age), the read path answers."""
    origin, _ = upstream
    fields = {"cache-control": "max-age=5"}
    if origin_dated:
        fields["date"] = format_http_date(clock.now - 1)  # its Age counts from then
    origin.objects["/x"] = Obj(bytes(range(256)) * 4, fields)
    replayed, decided = await replayed_then_decided(http_settings, clock, reads, method, asked, lambda i: asked)
    # Replayed (renewed, after the first second) while fresh to the rules: its age (from the origin's
    # Date, 1.125 s before the start, when it has one) below the object's max-age of 5, the request's
    # max-age of 3, or 5 - its min-fresh of 3; then revalidated by the read path (and kept anew).
    limit = {"max-age=3": 3, "min-fresh=3": 2}.get(asked.get("cache-control", ""), 5) - (1.125 if origin_dated else 0)
    assert [t for t in replayed if t < decided[0]] + decided[:1] == fresh_until(limit)


@pytest.mark.parametrize("origin_dated", [False, True])
async def test_a_renewed_ranged_answer_is_the_full_paths_for_any_range(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, reads: list[int], origin_dated: bool,
) -> None:
    """A ranged answer renewed answers each later request, with a Range of its own, as the full path
    does, for a response that varies (on Accept-Language) and came with the next hop's
    Cache-Status and X-Cache, until it is stale."""
    origin, _ = upstream
    fields = {"cache-control": "max-age=5", "vary": "accept-language", "cache-status": "origin; hit; ttl=100",
              "x-cache": "MISS from origin"}
    if origin_dated:
        fields["date"] = format_http_date(clock.now - 1)
    origin.objects["/x"] = Obj(random.Random(5).randbytes(600_000), fields)  # three 256 KiB blocks
    french = {"accept-language": "fr", "user-agent": "a player"}

    def another_range(i: int) -> dict[str, str]:
        first = 37_001 * i * i % 550_000
        return {**french, "range": f"bytes={first}-{first + 20_000 + 999 * i}", "user-agent": f"player {i}"}

    replayed, decided = await replayed_then_decided(http_settings, clock, reads, "GET",
                                                    {**french, "range": "bytes=10-99"}, another_range)
    assert [t for t in replayed if t < decided[0]] + decided[:1] == fresh_until(5 - (1.125 if origin_dated else 0))


@pytest.mark.parametrize("body, kind, renewed", [
    (b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXTINF:1,\ns0.ts\n#EXT-X-ENDLIST\n",
     "application/vnd.apple.mpegurl", False),
    (b"segment 0", "video/mp2t", True),
])
async def test_a_manifest_the_segment_planner_follows_is_not_renewed(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, reads: list[int], body: bytes, kind: str, renewed: bool,
) -> None:
    """With the segment prefetch on, a playlist's kept answer ends at its steady time as before:
    the read path answers it again, and plans what its players ask for next, at least once a
    second while clients ask. A segment's is renewed."""
    origin, _ = upstream
    origin.objects["/x"] = Obj(body, {"cache-control": "max-age=5", "content-type": kind})
    origin.objects["/s0.ts"] = Obj(b"segment 0", {"content-type": "video/mp2t"})
    settings = dataclasses.replace(http_settings, prefetch_segments=3)
    replayed, decided = await replayed_then_decided(settings, clock, reads, "GET", {}, lambda i: {})
    if renewed:
        assert [t for t in replayed if t < decided[0]] + decided[:1] == fresh_until(5)
    else:  # the first answer after each step is the read path's (within the step, kept ones)
        assert decided[:2] == [1.05, 2.2] and 1.7 in replayed


# --- differential: a request answered ready gets what the full path gives it -------------

_ETAG = '"v1"'
_FIELDS = {  # request fields and values that change answers, and some that never do
    "range": st.sampled_from(["bytes=0-9", "bytes=5-", "bytes=-3", "bytes=0-1,4-5", "bytes=x", "bytes=900-"]),
    "if-none-match": st.sampled_from([_ETAG, '"other"', "*", f'W/{_ETAG}']),
    "if-match": st.sampled_from([_ETAG, '"other"', "*"]),
    "if-modified-since": st.sampled_from(["Mon, 01 Jan 2001 00:00:00 GMT", "Fri, 01 Jan 2100 00:00:00 GMT"]),
    "if-unmodified-since": st.sampled_from(["Mon, 01 Jan 2001 00:00:00 GMT", "Fri, 01 Jan 2100 00:00:00 GMT"]),
    "if-range": st.sampled_from([_ETAG, '"other"', "Fri, 01 Jan 2100 00:00:00 GMT"]),
    "cache-control": st.sampled_from(["max-age=0", "no-cache", "min-fresh=100000", "max-stale", "only-if-cached",
                                      "max-age=100000"]),
    "pragma": st.just("no-cache"),
    "authorization": st.just("Bearer secret"),
    "accept-language": st.sampled_from(["en", "fr"]),
    "user-agent": st.text("abcXYZ/1.0", min_size=1, max_size=20),
    "cookie": st.text("abc=;123", min_size=1, max_size=20),
    "x-client-hint": st.text("xyz", min_size=1, max_size=5),
}


@st.composite
def asked(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]]]:
    method = draw(st.sampled_from(["GET", "GET", "HEAD"]))
    path = draw(st.sampled_from(["/a", "/v"]))
    names = draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=4, unique=True))
    return method, path, [(name, draw(_FIELDS[name])) for name in names]


def _comparable(r: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An answer without what may differ between two servers at one moment: Date, Age, a multipart boundary."""
    kept = [(n.lower(), v) for n, v in r.headers.raw if n.lower() not in (b"date", b"age")]
    body = r.content
    boundary = re.search(rb"boundary=([0-9a-f]+)", b"".join(v for n, v in kept if n == b"content-type"))
    if boundary:
        kept = [(n, v.replace(boundary.group(1), b"B")) for n, v in kept]
        body = body.replace(boundary.group(1), b"B")
    return r.status_code, kept, body


def test_an_answer_given_ready_is_the_full_paths_answer(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random requests, each asked twice (so that its answer may be kept), then a twin that differs
    only in fields no rule reads: the twin's answer (ready, when it was kept) must be the answer of
    the read path itself, from another edge on the same cache with no ready answers at all."""
    origin, _ = upstream
    body = bytes(range(256)) * 4
    origin.objects["/a"] = Obj(body, {"cache-control": "max-age=600"}, etag=_ETAG)
    origin.objects["/v"] = Obj(body[::-1], {"cache-control": "max-age=600", "vary": "accept-language"}, etag=_ETAG)
    replayed: list[int] = []
    tally = ReadyAnswers.tally

    def counted(self: ReadyAnswers, ready: Any) -> None:  # every answer given ready is tallied
        replayed.append(1)
        tally(self, ready)

    monkeypatch.setattr(ReadyAnswers, "tally", counted)
    full_path = create_app(http_settings)
    full_path.app.answers = None  # EdgeApp -> Front, answering nothing ready
    with RunningServer(http_settings) as edge, RunningServer(http_settings, app=full_path) as reference, \
            httpx.Client(base_url=edge.url) as c, httpx.Client(base_url=reference.url) as r:
        for path in ("/a", "/v"):  # stored, and their blocks read and held
            for language in ("en", "fr"):
                for _ in range(3):
                    c.get(path, headers={"accept-language": language})
                    time.sleep(0.01)

        @settings(max_examples=80, deadline=None)
        @given(requests=st.lists(asked(), min_size=1, max_size=6))
        def check(requests: list[tuple[str, str, list[tuple[str, str]]]]) -> None:
            clock.now += 0.125  # both edges answer at one moment; steady answers step each second
            for method, path, headers in requests:
                for _ in range(2):  # the second offer keeps it, if it may be kept
                    c.request(method, path, headers=headers)
            for method, path, headers in requests:  # after all were kept: one must never get another's
                twin = [(n, v + "-twin") if n in ("user-agent", "cookie", "x-client-hint") else (n, v)
                        for n, v in headers] + [("x-someone-else", "yes")]
                got, full = c.request(method, path, headers=twin), r.request(method, path, headers=twin)
                assert _comparable(got) == _comparable(full), (method, path, twin)

        check()
    assert len(replayed) >= 20  # the twins were answered ready, not only by the read path


ASKS = 200  # at most, 20 ms apart


async def ready_in_process(c: httpx.AsyncClient, path: str, decisions: list[float]) -> httpx.Response:
    """GET `path` until it is answered ready (the read path decides nothing); that answer. Its
    block must be stored, read and held, then the answer offered twice: a few asks, spaced for
    a fill still being stored (the test's clock stands still meanwhile)."""
    for _ in range(ASKS):
        made = len(decisions)
        answer = await c.get(path)
        if len(decisions) == made:
            return answer
        await anyio.sleep(0.02)
    raise AssertionError("never answered ready")


async def test_a_purge_by_another_process_ends_the_replay(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float]
) -> None:
    origin, _ = upstream
    origin.objects["/x"] = Obj(b"first", {"cache-control": "max-age=600"})
    async with in_process(http_settings) as c:
        assert (await c.get("/x")).content == b"first"
        clock.now += 0.25  # an age of whole seconds may change at once: this one may be replayed
        assert (await c.get("/x")).content == (await ready_in_process(c, "/x", decisions)).content == b"first"
        origin.objects["/x"] = Obj(b"second", {"cache-control": "max-age=600"})
        other = Store(http_settings.cache_dir, http_settings.cache_size_limit)  # as another worker would
        try:
            assert other.purge("/x") == 1
        finally:
            other.close()
        r = await c.get("/x")
        assert (r.content, r.headers["x-cache"]) == (b"second", "MISS")


async def test_an_upload_ends_the_replay(settings: Settings, clock: Clock, decisions: list[float]) -> None:
    locked = dataclasses.replace(settings, write_tokens="t0ken")
    async with in_process(locked) as c:
        assert (await c.get("/small.txt")).content == b"hello, edge\n"
        clock.now += 0.25
        ready = await ready_in_process(c, "/small.txt", decisions)
        assert (await c.get("/small.txt")).content == ready.content == b"hello, edge\n"
        put = await c.put("/small.txt", content=b"replaced\n", headers={"authorization": "Bearer t0ken"})
        assert put.status_code in (200, 201)
        assert (await c.get("/small.txt")).content == b"replaced\n"


async def test_a_response_that_varies_on_the_client_address_is_not_replayed(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock
) -> None:
    origin, _ = upstream
    origin.objects["/x"] = Obj(b"by address", {"cache-control": "max-age=600", "vary": "x-forwarded-for"})
    app = create_app(http_settings)
    # The first address asks often enough that its answer would be kept, were it keepable.
    for i, peer in enumerate(["192.0.2.1"] * 6 + ["192.0.2.2"]):
        clock.now += 0.25 if i == 1 else 0.0
        transport = httpx.ASGITransport(app=app, client=(peer, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as c:
            r = await c.get("/x")
            assert r.content == b"by address"
        await anyio.sleep(0.02)  # a fill still being stored has time to end
    # One fetch per address: the second address was not given the first's answer.
    assert len(origin.gets("/x")) == 2


async def test_signed_requests_are_never_replayed(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float]
) -> None:
    origin, _ = upstream
    origin.objects["/x"] = Obj(b"signed", {"cache-control": "max-age=600"})
    async with in_process(dataclasses.replace(http_settings, signing_key="k" * 32)) as c:
        url = "/x?" + signed_query("k" * 32, "/x", int(clock.now) + 60)
        assert (await c.get(url)).content == b"signed"
        clock.now += 0.25
        made = len(decisions)
        for _ in range(8):  # enough for an answer to be kept and replayed, were it keepable
            assert (await c.get(url)).content == b"signed"
            await anyio.sleep(0.02)  # a fill still being stored has time to end
    assert len(decisions) == made + 8



# --- at the wire: the encoded head is what uvicorn writes ----------------------------

_TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~",
                 min_size=1, max_size=12).map(str.encode)
_NAMES = _TOKEN | st.sampled_from([b"content-length", b"Content-Length", b"connection", b"transfer-encoding",
                                   b"bad name", b"x\x00y", b"caf\xc3\xa9", b"a:b"])
_VALUES = st.binary(max_size=20) | st.text("ab 9\t", max_size=20).map(str.encode) | st.sampled_from([b"12", b"x"])


_RFC_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2
_UVICORNS_OWN = (b"connection", b"transfer-encoding")


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=8))
def test_an_encoded_head_is_the_block_uvicorn_writes(headers: list[tuple[bytes, bytes]]) -> None:
    head = encoded_head(headers)
    assert encoded_head(headers) == head  # the same again, its lines now from those the protocol remembers
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    if head is None:  # a field that is not an RFC 9110 token and value, or one uvicorn must see, or an odd length
        assert any(not _RFC_TOKEN.fullmatch(n) or HEADER_VALUE_RE.search(v) or n.lower() in _UVICORNS_OWN
                   for n, v in headers) or len(lengths) > 1 or not all(v.isdigit() for v in lengths)
        return
    for name, value in headers:  # uvicorn would have taken every field as it is
        assert not HEADER_RE.search(name) and not HEADER_VALUE_RE.search(value)
        assert name.lower() not in _UVICORNS_OWN
    assert head.block == b"".join(name.lower() + b": " + value + b"\r\n" for name, value in headers)
    assert [head.length] == ([int(v) for v in lengths] or [None])


def test_fields_uvicorn_must_see_are_not_encoded() -> None:
    assert encoded_head([(b"content-length", b"5"), (b"Connection", b"close")]) is None
    assert encoded_head([(b"transfer-encoding", b"chunked")]) is None
    assert encoded_head([(b"content-length", b"5"), (b"content-length", b"5")]) is None
    assert encoded_head([(b"x", b"a\r\nInjected: 1")]) is None
    assert encoded_head([(b"X-Fine", b"a\tb")]) == EncodedHead(b"x-fine: a\tb\r\n", None)


def _exchange(port: int, request: bytes) -> bytes:
    """One request on a new connection: the whole response as it came on the wire."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            assert more, data
            data += more
        head = data.partition(b"\r\n\r\n")[0]
        found = re.search(rb"\r\ncontent-length: (\d+)", head)
        bodiless = request.startswith(b"HEAD") or head.startswith(b"HTTP/1.1 304") or found is None
        end = len(head) + 4 + (0 if bodiless or found is None else int(found.group(1)))
        while len(data) < end:
            more = sock.recv(65536)
            assert more, data
            data += more
        assert len(data) == end, "bytes after the response"
        return data


def _until_ready(port: int, request: bytes, decisions: list[float]) -> bytes:
    """The request asked until it is answered ready, as ready_in_process asks."""
    for _ in range(ASKS):
        made = len(decisions)
        answer = _exchange(port, request)
        if len(decisions) == made:
            return answer
        time.sleep(0.02)
    raise AssertionError("never answered ready")


@pytest.fixture
def front_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Requests that entered the edge's ASGI app (one answered at once by the server does not)."""
    calls: list[int] = []
    call = proxy.server.front.Front.__call__

    async def counted(self: Any, scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        await call(self, scope, receive, send)

    monkeypatch.setattr(proxy.server.front.Front, "__call__", counted)
    return calls


@pytest.mark.parametrize("request_line, fields, at_once", [
    (b"GET /x HTTP/1.1", b"", True),
    (b"HEAD /x HTTP/1.1", b"", True),
    (b"GET /x HTTP/1.1", b"Range: bytes=5-9\r\n", True),
    (b"GET /x HTTP/1.1", b"If-None-Match: *\r\n", True),
    (b"GET /x HTTP/1.1", b"Connection: close\r\n", False),  # uvicorn adds its Connection: close
    (b"GET /x HTTP/1.0", b"", False),
])
def test_a_replay_on_the_wire_is_the_full_paths_response_byte_for_byte(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float], front_calls: list[int],
    request_line: bytes, fields: bytes, at_once: bool
) -> None:
    """A ready answer, whether the server writes it at once (a keep-alive request) or the app sends
    it (the ordinary way), is byte for byte what the read path answers at that moment."""
    origin, _ = upstream
    origin.objects["/x"] = Obj(bytes(range(100)) * 3, {"cache-control": "max-age=600"})
    request = request_line + b"\r\nHost: edge\r\n" + fields + b"\r\n"
    probe = request_line + b"\r\nHost: edge\r\nIf-Match: *\r\n" + fields + b"\r\n"
    with RunningServer(http_settings) as edge:
        _exchange(edge.port, b"GET /x HTTP/1.1\r\nHost: edge\r\n\r\n")  # stored
        clock.now += 0.25
        _until_ready(edge.port, request, decisions)
        called, made = len(front_calls), len(decisions)
        replayed = _exchange(edge.port, request)
        assert len(decisions) == made and len(front_calls) == called + (0 if at_once else 1)
        full = _exchange(edge.port, probe)
        assert len(decisions) > made  # answered by the read path
    assert replayed == full
    assert replayed.startswith(b"HTTP/1.")


def test_answers_written_at_once_are_counted_logged_and_keep_the_connection(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float], front_calls: list[int],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer the server writes at once is a hit in the metrics and a line in the access log;
    the connection then waits keepalive_timeout for the next request, and a request that follows
    on the same bytes, answered by the read path (a miss, slower than that timeout), is not cut
    by the wait armed after the first."""
    logged: list[str] = []
    monkeypatch.setattr(proxy.app.LineWriter, "put", lambda self, line: logged.append(line))
    origin, _ = upstream
    body = bytes(range(256)) * 8
    origin.objects["/x"] = Obj(body, {"cache-control": "max-age=600"})
    origin.objects["/slow"] = Obj(b"slow" * 100, {"cache-control": "max-age=600"})
    settings = dataclasses.replace(http_settings, access_log=True, keepalive_timeout=1)
    get = b"GET /x HTTP/1.1\r\nHost: edge\r\n\r\n"
    hits = proxy.ops.metrics.REQUESTS.labels("hit", "200")
    with RunningServer(settings) as edge:
        _exchange(edge.port, get)  # stored
        clock.now += 0.25
        _until_ready(edge.port, get, decisions)
        proxy.ops.metrics.write_counted()  # (counts are written at the loop's next turn, or now)
        called, counted, lines = len(front_calls), hits._value.get(), len(logged)
        with socket.create_connection(("127.0.0.1", edge.port)) as sock:
            for _ in range(3):
                sock.sendall(get)
                assert _response(sock).endswith(b"\r\n\r\n" + body)
            assert len(front_calls) == called  # all three written at once
            proxy.ops.metrics.write_counted()
            assert hits._value.get() == counted + 3
            assert logged[lines:] and all('"GET /x HTTP/1.1" 200 2048' in line for line in logged[lines:])
            origin.delay = 1.5  # over keepalive_timeout
            sock.sendall(get + b"GET /slow HTTP/1.1\r\nHost: edge\r\n\r\n")
            assert _response(sock).endswith(body)
            assert _response(sock).endswith(b"slow" * 100)  # not cut by the first answer's keep-alive wait
            sock.settimeout(30)
            assert sock.recv(1) == b""  # idle: closed after keepalive_timeout


@pytest.mark.parametrize(("after", "status"), [
    (b"GET /x HTTP/1.1\r\nHost: edge\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n", b"431"),  # over max_header_count
    (b"GET /x HTTP/1.1\r\nHost edge\r\n\r\n", b"400"),  # not HTTP: uvicorn's own answer
    (b"GET /x HTTP/1.1\r\nHost: edge\r\n\r\n", b"200"),  # answered at once too
    (b"GET /x HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n", b"200"),  # answered by the app
])
def test_answers_written_at_the_end_of_the_turn_come_before_what_follows_them(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float], front_calls: list[int], after: bytes,
    status: bytes
) -> None:
    """Answers at once are written at the end of the loop's turn: an answer, a refusal or an
    error written for a request that came after them in the same bytes goes out after them."""
    origin, _ = upstream
    body = bytes(range(256)) * 8
    origin.objects["/x"] = Obj(body, {"cache-control": "max-age=600"})
    get = b"GET /x HTTP/1.1\r\nHost: edge\r\n\r\n"
    with RunningServer(dataclasses.replace(http_settings, max_header_count=100)) as edge:
        _exchange(edge.port, get)  # stored
        clock.now += 0.25
        _until_ready(edge.port, get, decisions)
        called = len(front_calls)
        with socket.create_connection(("127.0.0.1", edge.port)) as sock:
            sock.sendall(get * 3 + after)
            for _ in range(3):
                assert _response(sock).endswith(b"\r\n\r\n" + body)
            sock.settimeout(10)
            last = _response(sock)
    assert last.startswith(b"HTTP/1.1 " + status + b" "), last
    assert len(front_calls) == called + (b"close" in after)  # the first three written at once


def test_a_head_begun_after_an_answer_at_once_waits_no_longer_than_keepalive_timeout(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float]
) -> None:
    """The first bytes of the next request, in the same segment as one answered at once, and
    then nothing: the connection is closed after keepalive_timeout, as after any answer."""
    origin, _ = upstream
    body = bytes(range(256)) * 8
    origin.objects["/x"] = Obj(body, {"cache-control": "max-age=600"})
    get = b"GET /x HTTP/1.1\r\nHost: edge\r\n\r\n"
    with RunningServer(dataclasses.replace(http_settings, keepalive_timeout=1, client_header_timeout=600)) as edge:
        _exchange(edge.port, get)  # stored
        clock.now += 0.25
        _until_ready(edge.port, get, decisions)
        with socket.create_connection(("127.0.0.1", edge.port)) as sock:
            sock.sendall(get + b"GE")
            assert _response(sock).endswith(b"\r\n\r\n" + body)
            sock.settimeout(30)  # a bound on waiting, not a speed check
            assert sock.recv(1) == b""  # closed


DEFERRED_ANSWERS = proxy.server.protocol.DEFERRED // 8192


def test_answers_at_once_pipelined_by_the_thousand_are_held_a_bounded_while(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float]
) -> None:
    """Thousands of requests with a ready answer, pipelined in a few reads by a client that reads
    nothing: what the server holds for the connection stays bounded (answers kept for the end
    of the turn are written once they pass DEFERRED, and the transport's flow control then sends
    the rest through the app, whose pipeline is bounded: past it the connection closes after
    the answers it owes, RFC 9112 section 9.3.2); read at last, they are whole and exact."""
    origin, _ = upstream
    body = random.Random(3).randbytes(8 * 1024)
    origin.objects["/x"] = Obj(body, {"cache-control": "max-age=600"})
    get = b"GET /x HTTP/1.1\r\nHost: edge\r\n\r\n"
    count = 2000  # 16 MB of answers
    with RunningServer(http_settings) as edge:
        _exchange(edge.port, get)  # stored
        clock.now += 0.25
        _until_ready(edge.port, get, decisions)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.connect(("127.0.0.1", edge.port))
            sock.setblocking(False)
            sent, data = 0, get * count
            deadline = time.monotonic() + 30
            while sent < len(data) and time.monotonic() < deadline:
                try:
                    sent += sock.send(data[sent:])
                except BlockingIOError:
                    break  # the server reads no more: its pipeline is full
            time.sleep(1.0)
            held = [(len(b"".join(c.answers)), c.transport.get_write_buffer_size())
                    for c in edge.server.server_state.connections]
            assert held and all(deferred <= proxy.server.protocol.DEFERRED and buffered <= 4 * 1024 * 1024
                                for deferred, buffered in held), held
            sock.setblocking(True)
            sock.settimeout(30)
            received = b""
            while more := sock.recv(1 << 20):  # the server closes after what it read (a deep pipeline)
                received += more
    answers = 0
    while received:  # whole answers, each exact, one after the other
        head, _, rest = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ncontent-length: 8192" in head, head
        assert rest[:len(body)] == body
        received, answers = rest[len(body):], answers + 1
    assert answers > DEFERRED_ANSWERS


def _response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, read from a connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(1)
        assert more, data
        data += more
    length = int(re.search(rb"\r\ncontent-length: (\d+)", data).group(1))  # type: ignore[union-attr]
    while len(data) < data.index(b"\r\n\r\n") + 4 + length:
        more = sock.recv(length)
        assert more, data
        data += more
    return data


def test_a_replay_keeps_the_connection_alive(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float]
) -> None:
    origin, _ = upstream
    body = bytes(range(256)) * 8
    origin.objects["/x"] = Obj(body, {"cache-control": "max-age=600"})
    get, head = b"GET /x HTTP/1.1\r\nHost: edge\r\n\r\n", b"HEAD /x HTTP/1.1\r\nHost: edge\r\n\r\n"
    ranged = b"GET /x HTTP/1.1\r\nHost: edge\r\nRange: bytes=0-9\r\n\r\n"
    with RunningServer(http_settings) as edge, socket.create_connection(("127.0.0.1", edge.port)) as sock:
        _exchange(edge.port, get)  # stored
        clock.now += 0.25
        _until_ready(edge.port, get, decisions)
        made = len(decisions)
        # Pipelined on one connection: ready answers and the read path's, in order, nothing between.
        sock.sendall(get + head + get + ranged + get)
        data = b""
        deadline = time.monotonic() + 10
        while data.count(b"HTTP/1.1 ") < 5 or not data.endswith(body):
            assert time.monotonic() < deadline, data
            data += sock.recv(65536)
    assert len(decisions) == made + 2  # the HEAD and the range; the three GETs were ready
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200", b"200", b"206", b"200"]
    assert [a.endswith(b"\r\n\r\n" + body) for a in answers] == [True, False, True, False, True]
    assert answers[1].endswith(b"\r\n\r\n") and answers[3].endswith(b"\r\n\r\n" + body[:10])


async def _asgi(app: Any, headers: Any, path: str = "/small.txt", scheme: str | None = "http") -> int:
    """One GET straight through the ASGI app with a scope as given (its status)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("edge", 80), **({"scheme": scheme} if scheme else {})}
    sent: list[dict[str, Any]] = []
    asked: list[int] = []

    async def receive() -> dict[str, Any]:
        if not asked:
            asked.append(1)
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def test_scopes_a_key_cannot_be_made_of_are_answered_by_the_read_path(settings: Settings) -> None:
    """ASGI lets header pairs be lists (not hashable) and leaves out the scheme (http)."""
    app = create_app(settings)
    for _ in range(3):
        assert await _asgi(app, [[b"host", b"edge"]]) == 200
        assert await _asgi(app, [(b"host", b"edge")], scheme=None) == 200
        assert await _asgi(app, [(b"host", b"edge")], path="/_edge/health", scheme=None) == 200


async def test_a_stored_answer_of_another_status_is_dated_when_decided(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock
) -> None:
    """A stored 404 has no Date of its own to keep: its answer's is the time it was decided at,
    so a replay within that second has it right."""
    origin, _ = upstream
    origin.objects["/gone"] = Obj(b"", {"cache-control": "max-age=600"}, status=404)
    async with in_process(http_settings) as c:
        await c.get("/gone")
        clock.now += 0.25
        answers = [await c.get("/gone") for _ in range(2)]
    assert [a.status_code for a in answers] == [404, 404]
    assert [a.headers["date"] for a in answers] == [format_http_date(clock.now)] * 2


# --- ranged answers: a hit of one span answers the same request with any other Range -------

_BIG = random.Random(7).randbytes(1_000_003)  # four 256 KiB blocks, and a bit


def _range(size: int) -> st.SearchStrategy[str | None]:
    """Range values a player sends, and some no player should: any span, an open end, a suffix,
    past the end, several spans, nonsense; or none."""
    point = st.integers(0, size + 10)
    span = st.tuples(point, st.integers(0, 300_000)).map(lambda p: f"bytes={p[0]}-{p[0] + p[1]}")  # a player's
    return st.one_of(
        span, span, span,
        st.tuples(point, point).map(lambda p: f"bytes={min(p)}-{max(p)}"),
        st.integers(size - 300_000, size).map(lambda p: f"bytes={p}-"),
        st.integers(0, size + 10).map(lambda n: f"bytes=-{n}"),
        st.tuples(point, point, point).map(lambda p: f"bytes={p[0]}-{p[0] + 9},{p[1]}-{p[2]}"),
        st.sampled_from(["bytes=x", "items=0-9", "bytes=5-1"]),
        st.none(),
    )


@pytest.fixture
def ranged_replays(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Answers a Ranged answer gave (at once by the server, or through the app)."""
    given: list[int] = []
    at_once, send = proxy.server.ready.Ranged.at_once, proxy.server.ready.Ranged.send

    def counted_at_once(self: Any, scope: Any) -> Any:
        answer = at_once(self, scope)
        given.extend([1] if answer is not None else [])
        return answer

    async def counted_send(self: Any, scope: Any, out: Any) -> bool:
        sent = await send(self, scope, out)
        given.extend([1] if sent else [])
        return sent

    monkeypatch.setattr(proxy.server.ready.Ranged, "at_once", counted_at_once)
    monkeypatch.setattr(proxy.server.ready.Ranged, "send", counted_send)
    return given


def test_a_ranged_answer_is_the_full_paths_answer_for_any_range(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, ranged_replays: list[int]
) -> None:
    """Random requests, each asked twice with one Range (so that its answer may be kept, ranged),
    then a twin with another Range and fields of its own no rule reads: each answer (the twin's
    from the ranged answer, when it holds; the first two from one kept earlier, when it does)
    must be the answer of the read path itself, from another edge on the same cache with no
    ready answers, byte for byte. Over HTTP/1.1 keep-alive (the server writes it at once) and
    HTTP/1.0 (through the app)."""
    origin, _ = upstream
    origin.objects["/big"] = Obj(_BIG, {"cache-control": "max-age=600"}, etag=_ETAG)
    origin.objects["/weak"] = Obj(_BIG[::-1], {"cache-control": "max-age=600"}, etag='W/"w1"')
    origin.objects["/one"] = Obj(_BIG[:100_000], {"cache-control": "max-age=600"}, etag=_ETAG)  # one block
    origin.objects["/vary"] = Obj(_BIG[:300_000], {"cache-control": "max-age=600", "vary": "range"}, etag=_ETAG)
    full_path = create_app(http_settings)
    full_path.app.answers = None
    with RunningServer(http_settings) as edge, RunningServer(http_settings, app=full_path) as reference, \
            httpx.Client(base_url=edge.url) as c:
        for path in ("/big", "/weak", "/one", "/vary"):  # stored, and every block read and held
            c.get(path)
            for first in range(0, len(origin.objects[path].body), 200_000):
                c.get(path, headers={"range": f"bytes={first}-{first + 10}"})
            time.sleep(0.05)
        conditions = {name: _FIELDS[name] for name in ("if-range", "if-none-match", "if-match", "cache-control")}

        @settings(max_examples=60, deadline=None)
        # A 200 asked after the warming's 206 was kept as a ranged answer: another status, so not its answer.
        @example(path="/one", kept=None, other="bytes=5-14", fields={}, version="HTTP/1.1", agent="a")
        # A 206 for another span: its own Content-Range and Content-Length.
        @example(path="/big", kept="bytes=5-14", other="bytes=300000-310000", fields={}, version="HTTP/1.1", agent="a")
        @example(path="/big", kept="bytes=5-14", other="bytes=300000-310000", fields={}, version="HTTP/1.0", agent="a")
        # Several spans asked: a multipart answer, only the read path's.
        @example(path="/big", kept="bytes=5-14", other="bytes=0-9,300000-310000", fields={}, version="HTTP/1.1",
                 agent="a")
        @given(path=st.sampled_from(["/big", "/weak", "/one", "/vary"]), kept=_range(len(_BIG)),
               other=_range(len(_BIG)),
               fields=st.dictionaries(st.sampled_from(sorted(conditions)), st.sampled_from(['"v1"', "*"]),
                                      max_size=1),
               version=st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
               agent=st.text("abcXYZ/1.0", min_size=1, max_size=20))
        def check(path: str, kept: str | None, other: str | None, fields: dict[str, str], version: str,
                  agent: str) -> None:
            clock.now += 0.125  # both edges answer at one moment; ranged answers step each second
            asked = {**fields, **({"range": kept} if kept else {})}
            twin = {**fields, **({"range": other} if other else {}), "user-agent": agent, "x-someone": "else"}
            # Asked twice (kept the second time), then the twin.
            for request_fields, version_asked in ((asked, "HTTP/1.1"), (asked, "HTTP/1.1"), (twin, version)):
                request = f"GET {path} {version_asked}\r\nHost: edge\r\n".encode() + \
                    b"".join(f"{n}: {v}\r\n".encode() for n, v in request_fields.items()) + b"\r\n"
                # Asked of the reference first, so that both edges find the cache as this request leaves
                # it (a variant of /vary, say, dropped for the many other Ranges asked of it, is stored again).
                _exchange(reference.port, request)
                got, full = _exchange(edge.port, request), _exchange(reference.port, request)
                assert _wire_comparable(got) == _wire_comparable(full), (path, kept, other, fields, version)

        check()
    assert len(ranged_replays) >= 5  # some twins were answered by ranged answers, not only by the read path


def _wire_comparable(response: bytes) -> bytes:
    """A response off the wire without its Date and Age lines (two servers, one moment) and with
    any multipart boundary as B."""
    response = re.sub(rb"\r\n(date|age): [^\r]*", b"", response)
    boundary = re.search(rb"boundary=([0-9a-f]+)", response)
    return response.replace(boundary.group(1), b"B") if boundary else response


def test_a_ranged_answer_larger_than_a_turn_goes_on_through_its_own_cycle(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float], ranged_replays: list[int]
) -> None:
    """A ranged answer the server writes at once sends on the loop at most ON_LOOP bytes, and only
    what the socket takes; the rest goes out through a cycle of its own, waiting for a client that
    reads slowly, with the requests pipelined behind it answered after it, exact; a client gone
    midway leaves no descriptor open."""
    origin, _ = upstream
    body = random.Random(3).randbytes(3 * 1024 * 1024)
    origin.objects["/v"] = Obj(body, {"cache-control": "max-age=600"})
    settings = dataclasses.replace(http_settings, block_size=1024 * 1024)
    first, last = 500_000, 2_000_000  # two blocks, more than ON_LOOP
    big = f"GET /v HTTP/1.1\r\nHost: edge\r\nRange: bytes={first}-{last}\r\n\r\n".encode()
    small = b"GET /v HTTP/1.1\r\nHost: edge\r\nRange: bytes=5-14\r\n\r\n"
    with RunningServer(settings) as edge:
        _exchange(edge.port, b"GET /v HTTP/1.1\r\nHost: edge\r\n\r\n")  # stored
        for offset in (0, 1_500_000, 2_500_000):  # each block read and held
            _exchange(edge.port, f"GET /v HTTP/1.1\r\nHost: edge\r\nRange: bytes={offset}-{offset}\r\n\r\n".encode())
        clock.now += 0.25
        _until_ready(edge.port, small, decisions)
        time.sleep(0.1)
        descriptors = _block_files_open(settings)
        made, replayed = len(decisions), len(ranged_replays)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the server's socket fills at once
            sock.connect(("127.0.0.1", edge.port))
            sock.sendall(big + small)
            time.sleep(0.3)  # not reading: the rest waits for room
            sock.settimeout(10)
            data = b""
            while not data.endswith(b"\r\n\r\n" + body[5:15]):
                more = sock.recv(1 << 20)
                assert more, data[-200:]
                data += more
        got, _, after = data.partition(body[first:last + 1])
        assert got.startswith(b"HTTP/1.1 206 ") and got.endswith(b"\r\n\r\n")
        assert f"content-range: bytes {first}-{last}/{len(body)}\r\n".encode() in got
        assert after.startswith(b"HTTP/1.1 206 ") and after.endswith(b"\r\n\r\n" + body[5:15])
        assert after.count(b"HTTP/1.1") == 1
        assert len(decisions) == made and len(ranged_replays) == replayed + 2  # both from the ranged answer
        for _ in range(5):  # clients gone midway: the rest's descriptors are closed
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", edge.port))
                sock.sendall(big)
                time.sleep(0.05)
        deadline = time.monotonic() + 10
        while _block_files_open(settings) > descriptors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _block_files_open(settings) == descriptors


def _block_files_open(settings: Settings) -> int:
    """Descriptors of this process open on the cache's block files (each held block's one, and
    those of answers being sent)."""
    opened = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        opened += target.startswith(settings.cache_dir) and target.endswith(".val")
    return opened


def _warm_blocks(port: int, offsets: tuple[int, ...]) -> None:
    """Store /v and read each block holding one of `offsets`, so that they are held at hand."""
    _exchange(port, b"GET /v HTTP/1.1\r\nHost: edge\r\n\r\n")
    for offset in offsets:
        _exchange(port, f"GET /v HTTP/1.1\r\nHost: edge\r\nRange: bytes={offset}-{offset}\r\n\r\n".encode())


def test_a_ranged_answer_that_goes_on_is_not_cut_by_the_wait_of_the_answer_before_it(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float], ranged_replays: list[int]
) -> None:
    """Two requests in one segment, both answered at once: the first arms the connection's
    keep-alive wait; the second's rest goes on through its cycle, to a client that reads nothing
    for longer than keepalive_timeout, and is not cut when that wait ends."""
    origin, _ = upstream
    body = random.Random(5).randbytes(12 * 1024 * 1024)
    origin.objects["/v"] = Obj(body, {"cache-control": "max-age=600"})
    settings = dataclasses.replace(http_settings, block_size=4 * 1024 * 1024, cache_size_limit=256 * 1024 * 1024,
                                   keepalive_timeout=1)
    small = b"GET /v HTTP/1.1\r\nHost: edge\r\nRange: bytes=5-14\r\n\r\n"
    big = b"GET /v HTTP/1.1\r\nHost: edge\r\nRange: bytes=1000000-7000000\r\n\r\n"  # more than a socket holds
    with RunningServer(settings) as edge:
        _warm_blocks(edge.port, (0, 5_000_000))
        clock.now += 0.25
        _until_ready(edge.port, small, decisions)
        made, replayed = len(decisions), len(ranged_replays)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", edge.port))
            sock.sendall(small + big)
            time.sleep(2.0)  # over keepalive_timeout
            sock.settimeout(10)
            data = b""
            while not data.endswith(body[1_000_000:7_000_001]):
                more = sock.recv(1 << 20)
                assert more, f"cut after {len(data)} bytes"
                data += more
        assert len(decisions) == made and len(ranged_replays) >= replayed + 1
    assert data.count(b"HTTP/1.1 206 ") == 2 and body[5:15] + b"HTTP/1.1 206 " in data


def test_a_ranged_answer_that_cannot_go_on_is_cut_not_followed_by_another_answer(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the rest of an answer begun at once cannot be kept for later (no descriptor to
    spare), the connection is cut: the client sees a short 206, never an error page inside it."""
    origin, _ = upstream
    body = random.Random(6).randbytes(3 * 1024 * 1024)
    origin.objects["/v"] = Obj(body, {"cache-control": "max-age=600"})
    settings = dataclasses.replace(http_settings, block_size=1024 * 1024)
    big = b"GET /v HTTP/1.1\r\nHost: edge\r\nRange: bytes=500000-2000000\r\n\r\n"
    with RunningServer(settings) as edge:
        _warm_blocks(edge.port, (0, 1_500_000))
        clock.now += 0.25
        _until_ready(edge.port, b"GET /v HTTP/1.1\r\nHost: edge\r\nRange: bytes=5-14\r\n\r\n", decisions)

        def no_descriptors(self: Any, chunks: Any) -> Any:
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(proxy.cache.replies.InHand, "kept", no_descriptors)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", edge.port))
            sock.sendall(big)
            sock.settimeout(10)
            data = b""
            while more := sock.recv(1 << 20):
                data += more
    assert data.startswith(b"HTTP/1.1 206 ") and data.count(b"HTTP/1.1") == 1
    head, _, sent = data.partition(b"\r\n\r\n")
    assert 0 < len(sent) < 1_500_001 and body[500_000:].startswith(sent)


def test_a_response_that_ends_while_the_next_head_is_coming_leaves_that_head_whole(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings
) -> None:
    """An answer that ends while the next request's head is half received (a slow miss, say) does
    not drop what the connection is making of that head: the next request is answered, not 400."""
    origin, _ = upstream
    origin.objects["/x"] = Obj(b"x" * 100, {"cache-control": "max-age=600"})
    origin.delay = 0.5
    with RunningServer(http_settings) as edge, socket.create_connection(("127.0.0.1", edge.port)) as sock:
        sock.settimeout(10)
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: edge\r\n\r\nGET /x HTTP/1.1\r\nHo")
        assert _response(sock).endswith(b"\r\n\r\n" + b"x" * 100)  # the miss, answered while the head waits
        sock.sendall(b"st: edge\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200 ")


def test_a_ranged_answer_whose_segment_planning_fails_closes_its_descriptors(  # type: ignore[no-untyped-def]
    upstream, http_settings: Settings, clock: Clock, decisions: list[float], ranged_replays: list[int],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the app (`Connection: close`: not written at once), a ranged answer's blocks are
    descriptors of its own: when what runs once the blocks are in hand fails (the segment
    planner, say), they are closed, not left open for good."""
    origin, _ = upstream
    body = random.Random(5).randbytes(2 * 1024 * 1024)
    origin.objects["/v"] = Obj(body, {"cache-control": "max-age=600"})
    settings = dataclasses.replace(http_settings, block_size=1024 * 1024)
    kept = b"GET /v HTTP/1.1\r\nHost: edge\r\nRange: bytes=5-14\r\n\r\n"
    with RunningServer(settings) as edge:
        _exchange(edge.port, b"GET /v HTTP/1.1\r\nHost: edge\r\n\r\n")  # stored
        for offset in (0, 1_500_000):  # each block read and held
            _exchange(edge.port, f"GET /v HTTP/1.1\r\nHost: edge\r\nRange: bytes={offset}-{offset}\r\n\r\n".encode())
        clock.now += 0.25
        _until_ready(edge.port, kept, decisions)
        time.sleep(0.1)
        descriptors, replayed, made = _block_files_open(settings), len(ranged_replays), len(decisions)
        monkeypatch.setattr(proxy.cache.reads.ReadPath, "_get_served", _fails)
        for _ in range(3):  # across both blocks, through the app: its own descriptors
            answer = _exchange(edge.port, b"GET /v HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n"
                               b"Range: bytes=1000000-1100000\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 500 ")
        assert len(ranged_replays) == replayed and len(decisions) == made  # the ranged answer's, failed
        assert _block_files_open(settings) == descriptors


def _fails(*_: Any) -> None:
    raise RuntimeError("the segment planner failed")


@given(st.lists(st.tuples(st.sampled_from(["Content-Range", "content-length", "CONTENT-LENGTH", "X-Cache"]),
                          st.sampled_from(["", "5", "bytes 0-4/9", "a, b"])), max_size=5))
def test_the_span_of_an_answer_is_read_as_directives_get_reads_it(headers: list[tuple[str, str]]) -> None:
    """Ranged.at_once reads Content-Range and Content-Length in one pass (ready._span): the values
    directives.get gives, lines joined, empty ones included."""
    body = proxy.cache.replies.InHand(headers, [], True)
    assert proxy.server.ready._span(body) == {
        low: (proxy.http.directives.get(headers, low.decode()) or "").encode("latin-1")
        for low in (b"content-range", b"content-length")}
