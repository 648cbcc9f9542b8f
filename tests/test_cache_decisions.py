"""The cache state machine as tables: decide() for every kind of stored entry and request,
on_response() for every kind of origin answer, and the rules they lean on."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http import cache as hc
from proxy.http import freshness as fr
from proxy.http.cache import Fwd
from proxy.http.directives import cdn_directives, sf_dictionary
from proxy.http.headers import format_http_date

NOW = 1_800_000_000.0
P = fr.Policy()
DATE = format_http_date(NOW - 100)
LM = format_http_date(NOW - 100_000)


def h(**fields: str) -> list[tuple[str, str]]:
    return [(k.replace("_", "-"), v) for k, v in fields.items()]


def stored(status: int = 200, **fields: str) -> hc.Stored:
    return hc.Stored(status, h(**fields), NOW - 10, NOW - 10)


def req(method: str = "GET", **fields: str) -> hc.Request:
    return hc.Request(method, h(**fields), "/a.mp4")


FRESH = stored(cache_control="max-age=60", etag='"v1"')
STALE = stored(cache_control="max-age=5", etag='"v1"', last_modified=LM)
NO_VALIDATORS = stored(cache_control="max-age=5")
MARKER = hc.PassMarker(hc.PassReason.UNCACHEABLE, NOW + 60)
OLD_MARKER = hc.PassMarker(hc.PassReason.UNCACHEABLE, NOW - 1)
INM = [("If-None-Match", '"v1"')]
TOO_LARGE = hc.PassMarker(hc.PassReason.TOO_LARGE, float("inf"))


@pytest.mark.parametrize(
    "request_, entry, expected",
    [
        # nothing stored
        (req(), None, hc.Fetch(Fwd.URI_MISS)),
        (req("HEAD"), None, hc.Fetch(Fwd.URI_MISS)),
        (req(cache_control="only-if-cached"), None, hc.Answer(504, Fwd.URI_MISS, "only-if-cached")),
        (req(authorization="Bearer x"), None, hc.Fetch(Fwd.URI_MISS, as_is=True)),
        (req(cache_control="no-store"), None, hc.Fetch(Fwd.URI_MISS, as_is=True)),
        (req("HEAD", authorization="Bearer x"), None, hc.Relay(Fwd.URI_MISS)),
        # other methods never touch the cache
        (req("POST"), FRESH, hc.Relay(Fwd.METHOD)),
        (req("DELETE"), None, hc.Relay(Fwd.METHOD)),
        # a fresh stored response
        (req(), FRESH, hc.Serve(10, 50)),
        (req("HEAD"), FRESH, hc.Serve(10, 50)),
        (req(cache_control="no-cache"), FRESH, hc.Validate(INM, Fwd.REQUEST, 10, 50, False)),
        (req(pragma="no-cache"), FRESH, hc.Validate(INM, Fwd.REQUEST, 10, 50, False)),
        (req(cache_control="max-age=5"), FRESH, hc.Validate(INM, Fwd.REQUEST, 10, 50, False)),
        (req(cache_control="min-fresh=55"), FRESH, hc.Validate(INM, Fwd.REQUEST, 10, 50, False)),
        (req(authorization="x"), FRESH, hc.Fetch(Fwd.URI_MISS, as_is=True)),  # section 3.5
        (req(authorization="x"), stored(cache_control="max-age=60, public"), hc.Serve(10, 50)),
        # a stale stored response
        (req(), STALE, hc.Validate([*INM, ("If-Modified-Since", LM)], Fwd.STALE, 10, -5, False, True)),
        (req(), NO_VALIDATORS, hc.Validate([], Fwd.STALE, 10, -5, False, True)),
        (req(), stored(cache_control="max-age=5, must-revalidate"), hc.Validate([], Fwd.STALE, 10, -5, False)),
        (req(), stored(cache_control="max-age=5, s-maxage=5"), hc.Validate([], Fwd.STALE, 10, -5, False)),
        (req(cache_control="max-age=1"), NO_VALIDATORS, hc.Validate([], Fwd.STALE, 10, -5, False)),
        (req(cache_control="no-cache"), NO_VALIDATORS, hc.Validate([], Fwd.STALE, 10, -5, False)),
        (req(), stored(cache_control="no-cache, max-age=60"), hc.Validate([], Fwd.STALE, 10, 50, False)),
        (req(cache_control="max-stale=10"), STALE, hc.Serve(10, -5, stale=True)),
        (req(cache_control="only-if-cached"), STALE, hc.Answer(504, Fwd.STALE, "only-if-cached")),
        (req(), stored(cache_control="max-age=5, stale-while-revalidate=30"), hc.Serve(10, -5, stale=True,
                                                                                        refresh=True)),
        (req(), stored(cache_control="max-age=5, stale-if-error=30"), hc.Validate([], Fwd.STALE, 10, -5, True, True)),
        # remembered decisions not to store
        (req(), MARKER, hc.Fetch(Fwd.BYPASS, as_is=True, detail="uncacheable")),
        (req("HEAD"), MARKER, hc.Relay(Fwd.BYPASS, "uncacheable")),
        (req(), OLD_MARKER, hc.Fetch(Fwd.URI_MISS)),
        (req(), TOO_LARGE, hc.Relay(Fwd.BYPASS, "too large")),
        (req(cache_control="only-if-cached"), MARKER, hc.Answer(504, Fwd.URI_MISS, "only-if-cached")),
    ],
)
def test_decide(request_: hc.Request, entry: hc.Entry | None, expected: hc.Action) -> None:
    assert hc.decide(request_, entry, Fwd.URI_MISS, NOW, P) == expected


def test_serving_stale_while_the_origin_is_unreachable_can_be_turned_off() -> None:
    policy = fr.Policy(stale_if_unreachable=False)
    assert hc.decide(req(), NO_VALIDATORS, Fwd.URI_MISS, NOW, policy) == hc.Validate([], Fwd.STALE, 10, -5, False)


def test_decide_gives_the_vary_miss_reason() -> None:
    assert hc.decide(req(), None, Fwd.VARY_MISS, NOW, P) == hc.Fetch(Fwd.VARY_MISS)


BLOCK = hc.Sent((0, 1023))
BLOCK_5 = hc.Sent((5120, 6143))
VALIDATION = hc.Sent((0, 1023), conditional=True)
VALIDATION_SIE = hc.Sent((0, 1023), conditional=True, stale_if_error=True, stale_if_unreachable=True)
VALIDATION_DISCONNECTED = hc.Sent((0, 1023), conditional=True, stale_if_unreachable=True)
AS_IS = hc.Sent(None)
STRONG = dict(etag='"v1"', cache_control="max-age=60")


@pytest.mark.parametrize(
    "sent, status, response, entry, expected",
    [
        # the representation, in blocks
        (BLOCK, 206, h(content_range="bytes 0-1023/5000", **STRONG), None, hc.StoreBlocks(5000, 0, True)),
        (BLOCK_5, 206, h(content_range="bytes 5120-6143/9000", **STRONG), None, hc.StoreBlocks(9000, 5120, True)),
        (BLOCK_5, 206, h(content_range="bytes 5120-5999/6000", **STRONG), None, hc.StoreBlocks(6000, 5120, True)),
        (BLOCK, 206, h(content_range="bytes 0-99/100", cache_control="max-age=60"), None,
         hc.StoreBlocks(100, 0, False)),
        (BLOCK, 200, h(content_length="5000", **STRONG), None, hc.StoreBlocks(5000, 0, True)),
        (BLOCK, 200, h(content_length="5000", cache_control="max-age=60"), None, hc.StoreBlocks(5000, 0, False)),
        (BLOCK, 200, h(content_length="5000", etag='W/"v1"'), None, hc.StoreBlocks(5000, 0, False)),
        (BLOCK, 200, h(content_length="5", last_modified=LM, date=DATE), None, hc.StoreBlocks(5, 0, True)),
        (BLOCK, 200, h(content_length="5", last_modified=DATE, date=DATE), None, hc.StoreBlocks(5, 0, False)),
        # one response holds everything: unknown length, other statuses
        (BLOCK, 200, h(cache_control="max-age=60"), None, hc.StoreBody()),
        (BLOCK, 404, h(content_length="9"), None, hc.StoreBody()),
        (BLOCK, 301, h(cache_control="max-age=60"), None, hc.StoreBody()),
        (BLOCK, 299, h(cache_control="max-age=60"), None, hc.StoreBody()),
        # not for one response: ask for the whole body from one response
        (BLOCK, 206, h(content_range="bytes 0-1023/5000", cache_control="max-age=60"), None, hc.Refetch.WHOLE),
        (BLOCK, 416, h(content_range="bytes */0", cache_control="max-age=60"), None, hc.Refetch.WHOLE),
        (BLOCK, 416, h(content_range="bytes */0"), None, hc.Refetch.WHOLE),
        (AS_IS, 416, h(content_range="bytes */0"), None, hc.Pass(remember=True)),
        # wrong answers to a block request
        (BLOCK, 206, h(content_range="bytes 4-9/10", **STRONG), None,
         hc.BadGateway("asked for bytes 0-1023, got 4-9/10")),
        (BLOCK, 206, h(content_range="bytes 0-1023/*", **STRONG), None,
         hc.BadGateway("a 206 without a valid Content-Range")),
        # not storable
        (BLOCK, 200, h(cache_control="no-store"), None, hc.Pass(remember=True)),
        (BLOCK, 200, h(cache_control="private, max-age=60"), None, hc.Pass(remember=True)),
        (BLOCK, 200, h(vary="*", cache_control="max-age=60"), None, hc.Pass(remember=True)),
        (BLOCK, 503, h(), None, hc.Pass(remember=False)),
        (BLOCK, 206, h(content_range="bytes 0-1023/5000", cache_control="no-store"), None, hc.Forward(True)),
        (AS_IS, 206, h(content_range="bytes 0-9/10", cache_control="max-age=60"), None, hc.Pass(remember=False)),
        (AS_IS, 304, h(etag='"v1"'), None, hc.Pass(remember=False)),
        # validation
        (VALIDATION, 304, h(etag='"v1"', cache_control="max-age=99"), STALE,
         hc.Freshen(h(last_modified=LM, etag='"v1"', cache_control="max-age=99"))),
        (VALIDATION, 304, h(), STALE, hc.Freshen(STALE.headers)),
        (VALIDATION, 304, h(etag='"v2"'), STALE, hc.Refetch.UNCONDITIONAL),
        (VALIDATION, 304, h(last_modified=DATE), STALE, hc.Refetch.UNCONDITIONAL),
        (VALIDATION, 200, h(content_length="7", etag='"v2"'), STALE, hc.StoreBlocks(7, 0, True)),
        (VALIDATION, 500, h(), STALE, hc.Pass(remember=False)),
        (VALIDATION_SIE, 500, h(), STALE, hc.ServeStale(500)),
        (VALIDATION_DISCONNECTED, 500, h(), STALE, hc.Pass(remember=False)),  # an answer: not disconnected
        (VALIDATION_SIE, 404, h(content_length="1"), STALE, hc.StoreBody()),
    ],
)
def test_on_response(
    sent: hc.Sent, status: int, response: list[tuple[str, str]], entry: hc.Stored | None, expected: hc.Outcome
) -> None:
    assert hc.on_response(req(), sent, status, response, entry, P) == expected


def test_a_request_that_forbids_storing_is_not_remembered_as_uncacheable() -> None:
    answer = hc.on_response(req(authorization="x"), AS_IS, 200, h(cache_control="max-age=60"), None, P)
    assert answer == hc.Pass(remember=False)


def test_on_failure_serves_stale_only_when_allowed() -> None:
    assert hc.on_failure(VALIDATION_SIE, STALE) == hc.ServeStale(None)
    assert hc.on_failure(VALIDATION_DISCONNECTED, STALE) == hc.ServeStale(None)
    assert hc.on_failure(VALIDATION, STALE) is None
    assert hc.on_failure(VALIDATION_SIE, None) is None


@pytest.mark.parametrize(
    "status, response, expected",
    [
        (206, h(etag='"v1"', content_range="bytes 100-199/1000"), hc.BlockAnswer.BODY),
        (206, h(etag='"v1"', content_range="bytes 100-150/1000"), hc.BlockAnswer.BAD),
        (206, h(etag='"v2"', content_range="bytes 100-199/1000"), hc.BlockAnswer.CHANGED),
        (206, h(content_range="bytes 100-199/1000"), hc.BlockAnswer.CHANGED),
        (200, h(etag='"v1"', content_length="1000"), hc.BlockAnswer.WHOLE),
        (200, h(etag='"v1"', content_length="999"), hc.BlockAnswer.CHANGED),
        (200, h(etag='"v2"', content_length="1000"), hc.BlockAnswer.CHANGED),
        (404, h(), hc.BlockAnswer.CHANGED),
        (412, h(), hc.BlockAnswer.CHANGED),
        (503, h(), hc.BlockAnswer.BAD),
    ],
)
def test_block_answer(status: int, response: list[tuple[str, str]], expected: hc.BlockAnswer) -> None:
    assert hc.block_answer(status, response, '"v1"', 1000, 100, 199) is expected


@pytest.mark.parametrize(
    "headers, expected",
    [
        (h(etag='"a"'), '"a"'),
        (h(etag='W/"a"'), None),
        (h(etag="unquoted"), None),
        (h(last_modified=LM, date=DATE), "lm:" + LM),
        (h(last_modified=DATE, date=DATE), None),  # section 8.8.2.2: not a second before Date
        (h(last_modified=LM), None),
        (h(), None),
    ],
)
def test_strong_validator(headers: list[tuple[str, str]], expected: str | None) -> None:
    assert hc.strong_validator(headers) == expected


def test_fetch_headers_replace_the_clients_range_preconditions_and_encoding() -> None:
    client = h(range="bytes=5-", if_none_match='"x"', if_modified_since=LM, accept_encoding="gzip",
               cache_control="no-cache", user_agent="ua")
    assert hc.fetch_headers(client, (0, 99), h(if_none_match='"v1"')) == [
        ("user-agent", "ua"), ("Range", "bytes=0-99"), ("Accept-Encoding", "identity"), ("if-none-match", '"v1"')]
    assert hc.fetch_headers(client, None) == [("user-agent", "ua"), ("Accept-Encoding", "identity")]


@pytest.mark.parametrize(
    "method, status, expected",
    [
        ("POST", 200, ["/a", "/loc", "/cl"]),
        ("PUT", 201, ["/a", "/loc", "/cl"]),
        ("DELETE", 204, ["/a", "/loc", "/cl"]),
        ("M-SEARCH", 302, ["/a", "/loc", "/cl"]),
        ("POST", 404, []),
        ("POST", 500, []),
        ("GET", 200, []),
        ("OPTIONS", 200, []),
    ],
)
def test_invalidated(method: str, status: int, expected: list[str]) -> None:
    assert hc.invalidated(method, status, "/a", ["/loc", "/cl"]) == expected


def test_only_keys_on_this_origin_are_invalidated_once() -> None:
    assert hc.invalidated("POST", 200, "/a", [None, "/a"]) == ["/a"]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("max-age=60", {"max-age": "60"}),
        ("max-age=60, private", {"max-age": "60", "private": True}),
        ("no-store;a=1, x=?0", {"no-store": True, "x": False}),
        ('foo="bar, baz"', {"foo": '"bar, baz"'}),
        ("max-age =60", None),
        ("max-age= 60", None),
        ("Max-Age=60", None),
        ("max-age=60,", None),
        ("max-age=60, &&&", None),
        ("", {}),
    ],
)
def test_sf_dictionary(value: str, expected: dict[str, str | bool] | None) -> None:
    assert sf_dictionary(value) == expected


@given(st.text())
def test_sf_dictionary_never_raises(value: str) -> None:
    sf_dictionary(value)


def test_cdn_directives_take_the_first_valid_targeted_field() -> None:
    fields = ("edge-cache-control", "cdn-cache-control")
    assert cdn_directives(h(cdn_cache_control="max-age=5"), fields) == {"max-age": "5"}
    assert cdn_directives(h(edge_cache_control="x y", cdn_cache_control="max-age=5"), fields) == {"max-age": "5"}
    assert cdn_directives(h(cdn_cache_control='max-age="5"'), fields) is None  # wrong type
    assert cdn_directives(h(), fields) is None


def test_a_stored_responses_freshness_is_worked_out_per_path_and_policy() -> None:
    one = stored(date=DATE)  # no explicit freshness: the operator's rules by path decide
    rules = fr.Policy(default_ttls=(("*.m3u8", 2), ("/video/*", 600)))
    for _ in range(2):  # the second time from what the stored response remembers
        assert one.freshness("/live/a.m3u8", rules)[0] == 2
        assert one.freshness("/video/a.mp4", rules)[0] == 600
        assert one.freshness("/other", rules)[0] == 0
    assert one.freshness("/video/a.mp4", fr.Policy(default_ttls=(("/video/*", 5),)))[0] == 5  # another policy
    assert hc.decide(hc.Request("GET", [], "/video/a.mp4"), one, Fwd.URI_MISS, NOW, rules) == hc.Serve(100, 500)
    assert stored(cache_control="max-age=60, no-cache").freshness("/a", P)[1] == {"max-age": "60", "no-cache": None}
