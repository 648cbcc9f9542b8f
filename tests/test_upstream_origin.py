"""The HTTP origin client (origins/upstream.py, pool.py, wire.py), against real origins on
loopback sockets that answer with exact bytes: what they were sent, byte for byte, and what
the edge makes of every framing and misbehaviour an origin can show."""
from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.origins import wire
from proxy.origins.base import OriginError, Target
from proxy.origins.upstream import UpstreamOrigin

pytestmark = pytest.mark.anyio

Answer = Callable[[bytes], bytes | list[bytes] | None]  # a request's bytes -> the answer's bytes (pieces)


class Raw:
    """An origin on a loopback port: each request (its head, and as many body bytes as its
    Content-Length or chunks say) is recorded and answered with `answer(request)`: bytes, pieces
    written one at a time (the last b"": the connection is closed after them), or None to close
    the connection without an answer."""

    def __init__(self, answer: Answer | bytes) -> None:
        self.answer: Answer = answer if callable(answer) else (lambda _: answer)
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Raw:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if length:
                    body = await reader.readexactly(int(length[1]))
                elif re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head):
                    while True:
                        size = await reader.readuntil(b"\r\n")
                        chunk = await reader.readexactly(int(size, 16) + 2)
                        body += size + chunk
                        if int(size, 16) == 0:
                            break
                self.requests.append(head + body)
                answer = self.answer(head + body)
                if answer is None:
                    break
                pieces = [answer] if isinstance(answer, bytes) else answer
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    if len(pieces) > 1:
                        await asyncio.sleep(0.001)
                if pieces[-1:] == [b""]:
                    break  # closed after the answer
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def make(base: str, **kw: float) -> UpstreamOrigin:
    return UpstreamOrigin(base, connect_timeout=kw.get("connect", 1), read_timeout=kw.get("read", 1),
                          response_timeout=kw.get("response", 2))


async def body(response) -> bytes:  # type: ignore[no-untyped-def]
    out = b""
    async for chunk in response.body:
        out += chunk
    await response.close()
    return out


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_the_request_is_sent_to_the_configured_origin_exactly() -> None:
    """The request line has the base path and the client's raw target; Host is the origin's
    (never the client's); the client's end-to-end fields follow in order, then Via, and nothing
    of an HTTP library's own (no Accept-Encoding: a client that accepts no encoding is never
    answered gzip because a library asked)."""
    async with Raw(OK) as raw:
        origin = make(raw.url + "/base")
        r = await origin.request("GET", Target("evil.example/x", "//evil.example/x?a=%20b"),
                                 [("host", "evil.example"), ("accept", "*/*"), ("x-client", "1")])
        assert (r.status, await body(r)) == (200, b"ok")
        await origin.aclose()
    assert raw.requests == [b"GET /base//evil.example/x?a=%20b HTTP/1.1\r\nHost: 127.0.0.1:" + str(raw.port).encode()
                            + b"\r\naccept: */*\r\nx-client: 1\r\nVia: 1.1 edgecache\r\n\r\n"]


async def test_hop_by_hop_fields_are_dropped_and_via_added_both_ways() -> None:
    answer = (b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Keep: yes\r\n"
              b"Content-Length: 0\r\n\r\n")
    async with Raw(answer) as raw:
        origin = make(raw.url)
        r = await origin.request("GET", Target("a", "/a"), [("connection", "x-drop"), ("x-drop", "1"),
                                                            ("te", "trailers"), ("x-keep", "1")])
        assert r.headers == [("X-Keep", "yes"), ("Content-Length", "0"), ("Via", "1.1 edgecache")]
        await r.close()
        await origin.aclose()
    assert raw.requests == [b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nx-keep: 1\r\nVia: 1.1 edgecache\r\n\r\n"
                            % raw.port]


async def test_a_post_without_a_body_says_its_length_is_zero() -> None:
    async with Raw(OK) as raw:
        origin = make(raw.url)
        r = await origin.request("POST", Target("form", "/form"), [("host", "edge.test"), ("x-client", "1")])
        assert (r.status, await body(r)) == (200, b"ok")
        await origin.aclose()
    assert raw.requests == [b"POST /form HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nx-client: 1\r\nVia: 1.1 edgecache\r\n"
                            b"Content-Length: 0\r\n\r\n" % raw.port]


async def test_bodies_are_streamed_with_their_length_or_chunked() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"defghijklmnopq"

    async with Raw(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n") as raw:
        origin = make(raw.url)
        r = await origin.request("PUT", Target("up", "/up?x=1"), [("content-length", "17")], chunks())
        assert r.status == 201
        await r.close()
        r = await origin.request("PUT", Target("up", "/up"), [], chunks())
        assert r.status == 201
        await r.close()
        await origin.aclose()
    host = b"Host: 127.0.0.1:%d\r\n" % raw.port
    assert raw.requests == [
        b"PUT /up?x=1 HTTP/1.1\r\n" + host + b"Content-Length: 17\r\nVia: 1.1 edgecache\r\n\r\nabcdefghijklmnopq",
        b"PUT /up HTTP/1.1\r\n" + host + b"Via: 1.1 edgecache\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         b"3\r\nabc\r\ne\r\ndefghijklmnopq\r\n0\r\n\r\n",
    ]
    assert raw.connections == 1  # the second on the connection of the first


async def test_redirects_are_not_followed() -> None:
    async with Raw(b"HTTP/1.1 302 Found\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n") as raw:
        origin = make(raw.url)
        r = await origin.request("GET", Target("old", "/old"), [])
        assert r.status == 302 and r.header("location") == "/new"
        await r.close()
        await origin.aclose()
    assert len(raw.requests) == 1


async def test_a_connection_refused_is_unreachable_502() -> None:
    async with Raw(OK) as raw:
        url = raw.url
    origin = make(url)  # nobody listens there now
    with pytest.raises(OriginError) as e:
        await origin.request("GET", Target("a", "/a"), [])
    assert (e.value.kind, e.value.status) == ("unreachable", 502)
    await origin.aclose()


async def test_an_origin_that_does_not_answer_in_time_is_a_504() -> None:
    async with Raw(lambda _: [b"HTTP/1.1 200 OK\r\n"]) as raw:  # a head begun, never ended
        origin = make(raw.url, read=5, response=0.3)
        with pytest.raises(OriginError) as e:
            await origin.request("GET", Target("a", "/a"), [])
        assert (e.value.kind, e.value.status, e.value.detail) == ("timeout", 504, "no response within 0.3s")
        origin = make(raw.url, read=0.2, response=5)
        with pytest.raises(OriginError) as e:
            await origin.request("GET", Target("a", "/a"), [])
        assert (e.value.kind, e.value.detail) == ("timeout", "ReadTimeout")
        await origin.aclose()


@pytest.mark.parametrize("answer, why", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", "closed mid-body"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n", "closed between chunks"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\nzz\r\n", "a bad chunk size"),
])
async def test_a_body_cut_short_or_broken_is_an_origin_error(answer: bytes, why: str) -> None:
    async with Raw(lambda _: [answer, b""]) as raw:
        origin = make(raw.url)
        r = await origin.request("GET", Target("a", "/a"), [])
        got = b""
        with pytest.raises(OriginError) as e:
            async for chunk in r.body:
                got += chunk
        assert got == b"partial" and e.value.kind == "unreachable"
        await r.close()
        await origin.aclose()


@pytest.mark.parametrize("answer", [b"", b"garbage\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n"])
async def test_no_answer_or_not_http_is_unreachable(answer: bytes) -> None:
    async with Raw(lambda _: [answer] if answer else None) as raw:
        origin = make(raw.url)
        with pytest.raises(OriginError) as e:
            await origin.request("GET", Target("a", "/a"), [])
        assert e.value.kind == "unreachable"
        assert origin.pool.free == 100  # the slot came back
        await origin.aclose()


async def test_a_field_that_cannot_be_sent_is_refused_not_sent() -> None:
    async with Raw(OK) as raw:
        origin = make(raw.url)
        with pytest.raises(OriginError):
            await origin.request("GET", Target("a", "/a"), [("x-bad", "a\r\nInjected: 1")])
        with pytest.raises(OriginError):
            await origin.request("GET", Target("a", "/a"), [("bad name", "1")])
        await origin.aclose()
    assert raw.requests == []


FRAMINGS = [
    # (answer, method, body, reused): every framing of RFC 9112 section 6.3
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET", b"hello", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3;ext=1\r\nllo\r\n0\r\nX-Trailer: 1\r\n\r\n",
     "GET", b"hello", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", b"", False),  # no body after a HEAD's head
    (b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", "GET", b"", True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", "GET", b"", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET", b"hello", True),  # interim heads skipped
    (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET", b"hello", False),  # HTTP/1.0: not kept
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello", "GET", b"hello", False),
]


@pytest.mark.parametrize("answer, method, expected, reused", FRAMINGS)
async def test_each_framing_is_read_exactly_and_the_connection_kept_when_it_may_be(
        answer: bytes, method: str, expected: bytes, reused: bool) -> None:
    async with Raw(answer) as raw:
        origin = make(raw.url)
        for _ in range(2):
            r = await origin.request(method, Target("a", "/a"), [])
            assert (r.status, await body(r)) == (int(answer.rpartition(b"HTTP/1.")[2][2:5]), expected)
            assert ("X-Trailer", "1") not in r.headers and ("Link", "</a.css>") not in r.headers
        await origin.aclose()
    assert raw.connections == (1 if reused else 2)


async def test_trailers_and_bytes_after_the_answer_are_not_its_fields() -> None:
    """Trailer fields (RFC 9110 section 6.5) and a message the origin sends after the answer,
    arriving in the same segment, change nothing of the answer's head."""
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
              b"Cache-Control: max-age=31536000\r\nSet-Cookie: a=b\r\n\r\n"
              b"HTTP/1.1 408 Request Timeout\r\nX-Stray: 1\r\nContent-Length: 0\r\n\r\n")
    async with Raw(answer) as raw:
        origin = make(raw.url)
        r = await origin.request("GET", Target("a", "/a"), [])
        assert (r.status, await body(r)) == (200, b"ok")
        assert r.headers == [("Transfer-Encoding", "chunked"), ("Via", "1.1 edgecache")] or \
            r.headers == [("Via", "1.1 edgecache")]
        r = await origin.request("GET", Target("a", "/a"), [])  # not on that connection
        assert r.status == 200
        await r.close()
        await origin.aclose()
    assert raw.connections == 2


async def test_a_request_that_finds_no_free_connection_in_time_gives_no_slot_away() -> None:
    async with Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as raw:
        origin = UpstreamOrigin(raw.url, connect_timeout=0.2, read_timeout=1, response_timeout=2, max_connections=1)
        first = await origin.request("GET", Target("a", "/a"), [])
        with pytest.raises(OriginError) as e:
            await origin.request("GET", Target("a", "/a"), [])
        assert (e.value.kind, e.value.detail) == ("timeout", "PoolTimeout")
        assert origin.pool.free == 0
        assert await body(first) == b"ok"
        assert origin.pool.free == 1
        r = await origin.request("GET", Target("a", "/a"), [])
        assert await body(r) == b"ok"
        await origin.aclose()


async def test_a_target_with_bytes_a_request_line_cannot_hold_is_sent_percent_encoded() -> None:
    async with Raw(OK) as raw:
        origin = make(raw.url)
        r = await origin.request("GET", Target("seg 1.ts", "/seg 1.ts?x=\u00e9&y=\u20ac"), [])
        assert await body(r) == b"ok"
        r = await origin.request("GET", Target("a", "/a?x=\u00c3\u00a9"), [])  # bytes C3 A9 as received
        assert await body(r) == b"ok"
        await origin.aclose()
    assert raw.requests[0].startswith(b"GET /seg%201.ts?x=%C3%A9&y=%E2%82%AC HTTP/1.1\r\n")
    assert raw.requests[1].startswith(b"GET /a?x=%C3%A9 HTTP/1.1\r\n")


async def test_a_body_that_runs_to_the_close_is_read_to_the_close() -> None:
    """No Content-Length and no chunks: the body ends where the connection does (RFC 9112
    section 6.3, item 8), and that connection cannot carry another request."""
    async with Raw(lambda _: [b"HTTP/1.1 200 OK\r\n\r\nhel", b"lo", b""]) as raw:
        origin = make(raw.url)
        for _ in range(2):
            r = await origin.request("GET", Target("a", "/a"), [])
            assert (r.status, await body(r)) == (200, b"hello")
        await origin.aclose()
    assert raw.connections == 2


async def test_a_connection_the_origin_closes_after_each_answer_is_replaced_without_a_word() -> None:
    """An origin that closes each connection after its answer without saying so (as servers do
    at their idle timeout): the next request finds it closed, or fails on it before any answer
    came (a GET is then sent again on a new connection, RFC 9112 section 9.3.1)."""
    async with Raw(lambda _: [OK, b""]) as raw:
        origin = make(raw.url)
        for _ in range(6):
            r = await origin.request("GET", Target("a", "/a"), [])
            assert (r.status, await body(r)) == (200, b"ok")
            await asyncio.sleep(0.01 if _ % 2 else 0)
        await origin.aclose()
    assert raw.connections == 6 and len(raw.requests) == 6


async def test_a_large_body_is_held_within_the_high_water_mark_while_the_reader_is_slow() -> None:
    size = 8 * 1024 * 1024
    async with Raw(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + bytes(size)) as raw:
        origin = make(raw.url)
        r = await origin.request("GET", Target("a", "/a"), [])
        (connection,) = origin.pool._busy
        got, most = 0, 0
        async for chunk in r.body:
            got += len(chunk)
            most = max(most, connection._buffered)
            await asyncio.sleep(0.001)
        await r.close()
        await origin.aclose()
    assert got == size and most <= wire.HIGH_WATER + 256 * 1024


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), framing=st.sampled_from([f for f in FRAMINGS if f[1] == "GET"]))
def test_an_answer_cut_anywhere_reads_the_same(data: st.DataObject, framing: tuple[bytes, str, bytes, bool]) -> None:
    """However the origin's bytes are cut into writes, the status, fields and body are the same."""
    answer, _, expected, _ = framing
    cuts = sorted(data.draw(st.sets(st.integers(1, len(answer) - 1), max_size=8)))
    pieces = [answer[a:b] for a, b in zip([0, *cuts], [*cuts, len(answer)], strict=True)]

    async def run() -> tuple[int, bytes]:
        async with Raw(lambda _: pieces) as raw:
            origin = make(raw.url)
            r = await origin.request("GET", Target("a", "/a"), [])
            got = (r.status, await body(r))
            await origin.aclose()
            return got

    status, got = asyncio.run(run())
    assert got == expected and status == int(answer.rpartition(b"HTTP/1.")[2][2:5])


async def test_the_environments_proxy_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    async with Raw(OK) as raw:
        origin = make(raw.url)
        r = await origin.request("GET", Target("a", "/a"), [])
        assert (r.status, await body(r)) == (200, b"ok")
        await origin.aclose()


async def test_the_pool_is_an_httpx_transport_too() -> None:
    """What the S3 origin sends goes through the same pool as an httpx transport."""
    async with Raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n") as raw:
        origin = make(raw.url)
        async with httpx.AsyncClient(transport=origin.pool) as client:
            r = await client.put(raw.url + "/p?q=1", content=b"data", headers={"x-amz-date": "1"})
        assert (r.status_code, r.content) == (200, b"ok")
        await origin.aclose()
    assert raw.requests[0].startswith(b"PUT /p?q=1 HTTP/1.1\r\n") and raw.requests[0].endswith(b"\r\n\r\ndata")


@pytest.mark.parametrize(
    "base, location, key",
    [
        ("http://o.example:8000/media", "/media/v/b.mp4", "/v/b.mp4"),
        ("http://o.example:8000/media", "http://o.example:8000/media/v/b.mp4", "/v/b.mp4"),
        ("http://o.example:8000/media", "/media/v/a%2fb.mp4?x=1", "/v/a%2Fb.mp4?x=1"),
        ("http://o.example:8000/media", "/other/x.mp4", None),  # the origin's, not served by the edge
        ("http://o.example:8000/media", "http://other.example/media/x.mp4", None),
        ("http://o.example:8000/media", "https://o.example:8000/media/x.mp4", None),
        ("http://o.example:8000/media", "//o.example:8000/media/x.mp4", None),
        ("http://o.example:8000", "/x.mp4", "/x.mp4"),
        ("http://o.example:8000", "relative/x.mp4", None),
    ],
)
def test_location_keys(base: str, location: str, key: str | None) -> None:
    origin = UpstreamOrigin(base, connect_timeout=1, read_timeout=1, response_timeout=1)
    assert origin.location_key(location) == key


def test_the_type_of_an_upload_comes_from_its_name(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    edge = make_server(http_settings)
    form = httpx.post(edge.url + "/films", files={"file": ("clip.mp4", b"<script>", "text/html")})
    assert form.status_code == 201
    assert [h.headers["content-type"] for h in origin.hits if h.method == "PUT"] == ["video/mp4"]
