"""The pure rules behind the server's limits: counting a head as it arrives, a body's time, the
refusals' bytes."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.server.limits import BodyClock, HeadMeter, Refusal, refusal_bytes

LIMIT = 200


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes, list[int]]:
    """A request head, a body after it, and the sizes of the reads they arrive in."""
    target = b"/" + draw(st.binary(min_size=0, max_size=300).map(lambda b: b.hex().encode()[:300]))
    line = b"GET " + target + b" HTTP/1.1\r\n"
    fields = draw(st.lists(st.tuples(st.sampled_from([b"Host", b"X-A", b"Accept"]),
                                     st.text("abc xyz", max_size=60).map(str.encode)), max_size=6))
    head = line + b"".join(name + b": " + value + b"\r\n" for name, value in fields) + b"\r\n"
    body = draw(st.binary(max_size=400).filter(lambda b: b"\r\n\r\n" not in b))
    cuts = draw(st.lists(st.integers(1, 64), min_size=1, max_size=40))
    return head, body, cuts


@given(requests())
def test_a_head_is_counted_exactly_however_it_is_cut(request: tuple[bytes, bytes, list[int]]) -> None:
    head, body, cuts = request
    data = head + body
    meter = HeadMeter(LIMIT)
    at, refusal, i = 0, None, 0
    while at < len(data) and refusal is None:
        size = cuts[i % len(cuts)]
        i += 1
        refusal = meter.feed(data[at:at + size])
        at += size
        if refusal is None and at >= len(head) and meter.active:
            assert meter.count == len(head)  # the body after the head is never counted
            meter.end()  # the parser saw the end of the head
    line = head.index(b"\n") + 1
    if len(head) <= LIMIT:
        assert refusal is None
    else:
        assert refusal is not None
        assert refusal.status == (414 if line > LIMIT else 431)


def test_a_head_split_in_its_last_line_ending() -> None:
    meter = HeadMeter(1000)
    for piece in (b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r", b"\nbody bytes"):
        assert meter.feed(piece) is None
    assert meter.count == len(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_a_new_head_is_counted_from_zero() -> None:
    meter = HeadMeter(30)
    assert meter.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") is None
    meter.end()
    assert meter.feed(b"x" * 1000) is None  # a body: not counted
    meter.begin()
    refusal = meter.feed(b"GET /" + b"a" * 40)
    assert refusal == Refusal(414, "target_too_long", "the request line is over 30 bytes (max_header_bytes)")


@pytest.mark.parametrize(
    "events, now, expired",
    [
        ([], 9.9, False),
        ([], 10.1, True),  # nothing came for the timeout
        ([("arrived", 5.0, 5000)], 14.9, False),
        ([("arrived", 5.0, 5000)], 15.1, True),
        # a drip: a byte every second never leaves it idle, but it is far slower than the rate
        ([("arrived", float(t), 1) for t in range(1, 12)], 11.5, True),
        # fast enough: 256 bytes a second buys a second each
        ([("arrived", float(t), 256) for t in range(1, 30)], 29.5, False),
        # while the edge does not read, the client's time does not run
        ([("arrived", 1.0, 1), ("held", 40.0, 0)], 49.0, False),
        ([("arrived", 1.0, 1), ("held", 40.0, 0)], 50.5, True),
    ],
)
def test_a_body_has_its_time(events: list[tuple[str, float, int]], now: float, expired: bool) -> None:
    clock = BodyClock(timeout=10.0, min_rate=256, since=0.0, last=0.0)
    for kind, at, count in events:
        if kind == "arrived":
            clock.arrived(at, count)
        else:
            clock.held(at)
    assert clock.expired(now) is expired


def test_without_a_rate_only_idleness_counts() -> None:
    clock = BodyClock(timeout=10.0, min_rate=0, since=0.0, last=0.0)
    for t in range(1, 100):
        clock.arrived(float(t), 1)
    assert not clock.expired(100.0)


def test_the_bytes_of_a_refusal() -> None:
    refusal = Refusal(503, "too_many_connections", "the edge has 16 connections open (max_connections)")
    assert refusal_bytes(refusal, b"edgecache", now=0.0) == (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 51\r\n"
        b"connection: close\r\ndate: Thu, 01 Jan 1970 00:00:00 GMT\r\nserver: edgecache\r\n"
        b"x-content-type-options: nosniff\r\nretry-after: 1\r\n\r\n"
        b"the edge has 16 connections open (max_connections)\n")
    assert b"server:" not in refusal_bytes(Refusal(408, "head_timeout", "late"), b"", now=0.0)
