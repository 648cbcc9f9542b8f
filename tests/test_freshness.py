"""RFC 9111 rules as tables: storing, freshness lifetime, age, reuse, Vary, 304 merge."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http import freshness as fr
from proxy.http.cachestatus import cache_status
from proxy.http.headers import format_http_date

NOW = 1_800_000_000.0
P = fr.Policy()


def h(**fields: str) -> list[tuple[str, str]]:
    return [(k.replace("_", "-"), v) for k, v in fields.items()]


@pytest.mark.parametrize(
    "req, status, res, expected",
    [
        (h(), 200, h(cache_control="max-age=60"), True),
        (h(), 200, h(), True),  # heuristically cacheable status
        (h(), 299, h(cache_control="max-age=60"), True),  # unknown status, explicit freshness (section 3)
        (h(), 299, h(cache_control="max-age=60, must-understand"), False),  # section 5.2.2.3
        (h(), 200, h(cache_control="max-age=60, no-store, must-understand"), True),  # understood: no-store yields
        (h(), 199, h(cache_control="max-age=60"), False),  # not final
        (h(), 304, h(cache_control="max-age=60"), False),
        (h(), 200, h(vary="accept, *"), False),  # a "*" anywhere in Vary
        (h(), 200, h(cdn_cache_control="no-store", cache_control="max-age=60"), False),  # RFC 9213 wins
        (h(), 200, h(cdn_cache_control="max-age=60", cache_control="no-store"), True),
        (h(), 200, h(cdn_cache_control='max-age="60"', cache_control="no-store"), False),  # invalid: ignored
        (h(), 302, h(), False),  # not heuristically cacheable, no explicit freshness
        (h(), 302, h(cache_control="max-age=60"), True),
        (h(), 404, h(), True),
        (h(), 500, h(), False),
        (h(), 500, h(expires="Thu, 01 Jan 2099 00:00:00 GMT"), True),
        (h(), 200, h(cache_control="no-store"), False),
        (h(cache_control="no-store"), 200, h(cache_control="max-age=60"), False),
        (h(), 200, h(cache_control="private"), False),
        (h(), 200, h(cache_control='private="set-cookie"'), True),  # qualified: stored without the field
        (h(), 200, h(cache_control="max-age=60", set_cookie="s=1"), False),  # a cookie is one client's
        (h(), 200, h(cache_control='max-age=60, private="Set-Cookie"', set_cookie="s=1"), True),
        (h(), 200, h(cache_control='max-age=60, no-cache="set-cookie"', set_cookie="s=1"), True),
        (h(), 200, h(cache_control='max-age=60, no-cache="x-other"', set_cookie="s=1"), False),
        (h(), 200, h(cache_control="no-cache"), True),  # stored, always revalidated
        (h(), 200, h(vary="*"), False),
        (h(authorization="Bearer x"), 200, h(cache_control="max-age=60"), False),
        (h(authorization="Bearer x"), 200, h(cache_control="public"), True),
        (h(authorization="Bearer x"), 200, h(cache_control="s-maxage=60"), True),
        (h(authorization="Bearer x"), 200, h(cache_control="must-revalidate"), True),
    ],
)
def test_storable(req, status, res, expected) -> None:  # type: ignore[no-untyped-def]
    assert fr.storable("GET", req, status, res, P) is expected


def test_only_get_is_stored() -> None:
    assert not fr.storable("POST", [], 200, h(cache_control="max-age=60"), P)
    assert not fr.storable("HEAD", [], 200, h(cache_control="max-age=60"), P)


@pytest.mark.parametrize(
    "status, res, expected",
    [
        (200, h(cache_control="max-age=60"), 60),
        (200, h(cache_control="max-age=60, s-maxage=5"), 5),  # s-maxage wins in a shared cache
        (200, h(cache_control="max-age=60", expires=format_http_date(NOW + 999)), 60),
        (200, h(cache_control='max-age="60"'), 60),
        (200, h(cache_control="max-age=abc"), 0),  # invalid: stale
        (200, h(cache_control="max-age=-1"), 0),
        (200, h(cache_control="max-age=99999999999999"), 2**31),
        (200, h(cache_control="max-age=10, max-age=99"), 10),  # first wins
        (200, h(expires=format_http_date(NOW + 100), date=format_http_date(NOW)), 100),
        (200, h(expires=format_http_date(NOW + 100)), 100),  # no Date: the response time
        (200, h(expires="0"), 0),  # invalid Expires: already expired
        (200, h(expires=format_http_date(NOW - 10), date=format_http_date(NOW)), 0),
        (200, h(last_modified=format_http_date(NOW - 1000), date=format_http_date(NOW)), 100),  # 10%
        (200, h(last_modified=format_http_date(NOW - 10**8), date=format_http_date(NOW)), 86400),  # capped
        (302, h(last_modified=format_http_date(NOW - 1000)), 0),  # no heuristics for 302
        (302, h(last_modified=format_http_date(NOW - 1000), cache_control="public"), 100),
        (200, h(), 0),
        (200, h(cdn_cache_control="max-age=600", cache_control="max-age=5"), 600),  # RFC 9213 section 2.1
        (200, h(cdn_cache_control="max-age=5", cache_control="max-age=600"), 5),
        (200, h(cdn_cache_control="max-age=60", expires="0"), 60),  # Expires ignored with CDN-Cache-Control
        (200, h(cdn_cache_control="max-age =60", cache_control="max-age=5"), 5),  # invalid field: ignored
    ],
)
def test_freshness_lifetime(status, res, expected) -> None:  # type: ignore[no-untyped-def]
    assert fr.freshness_lifetime(status, res, "/a.mp4", NOW, P) == expected


def test_default_ttls_apply_only_without_explicit_freshness() -> None:
    policy = fr.Policy(default_ttls=(("*.m3u8", 2), ("/video/*", 600)))
    assert fr.freshness_lifetime(200, [], "/live/index.m3u8", NOW, policy) == 2
    assert fr.freshness_lifetime(200, [], "/video/a.mp4", NOW, policy) == 600
    assert fr.freshness_lifetime(200, h(cache_control="max-age=5"), "/video/a.mp4", NOW, policy) == 5
    assert fr.freshness_lifetime(200, [], "/other", NOW, policy) == 0


@pytest.mark.parametrize(
    "res, request_time, response_time, now, expected",
    [
        (h(), NOW, NOW, NOW, 0),
        (h(), NOW, NOW, NOW + 30, 30),  # resident time
        (h(age="100"), NOW, NOW, NOW + 30, 130),
        (h(age="100"), NOW - 2, NOW, NOW, 102),  # response delay added to Age
        (h(date=format_http_date(NOW - 50)), NOW, NOW, NOW, 50),  # apparent age
        (h(date=format_http_date(NOW + 50)), NOW, NOW, NOW, 0),  # a clock ahead: never negative
        (h(age="junk"), NOW, NOW, NOW, 0),
        (h(age="10, 20"), NOW, NOW, NOW, 10),
    ],
)
def test_current_age(res, request_time, response_time, now, expected) -> None:  # type: ignore[no-untyped-def]
    assert fr.current_age(res, request_time, response_time, now) == expected


@pytest.mark.parametrize(
    "req, res, lifetime, age, kind, background, sie",
    [
        (h(), h(), 60, 10, "fresh", False, False),
        (h(), h(), 60, 60, "revalidate", False, False),
        (h(cache_control="no-cache"), h(), 60, 10, "revalidate", False, False),
        (h(pragma="no-cache"), h(), 60, 10, "revalidate", False, False),
        (h(pragma="no-cache", cache_control="max-stale"), h(), 60, 10, "fresh", False, False),  # CC wins
        (h(), h(cache_control="no-cache"), 60, 10, "revalidate", False, False),
        (h(cache_control="max-age=5"), h(), 60, 10, "revalidate", False, False),
        (h(cache_control="max-age=0"), h(), 60, 0.5, "revalidate", False, False),
        (h(cache_control="max-age=20"), h(), 60, 10, "fresh", False, False),
        (h(cache_control="min-fresh=55"), h(), 60, 10, "revalidate", False, False),
        (h(cache_control="min-fresh=40"), h(), 60, 10, "fresh", False, False),
        (h(cache_control="max-stale"), h(), 60, 1000, "stale-ok", False, False),
        (h(cache_control="max-stale=100"), h(), 60, 100, "stale-ok", False, False),
        (h(cache_control="max-stale=10"), h(), 60, 100, "revalidate", False, False),
        (h(cache_control="max-stale"), h(cache_control="must-revalidate"), 60, 100, "revalidate", False, False),
        (h(cache_control="max-stale"), h(cache_control="s-maxage=60"), 60, 100, "revalidate", False, False),
        (h(), h(cache_control="stale-while-revalidate=30"), 60, 80, "stale-ok", True, False),
        (h(), h(cache_control="stale-while-revalidate=30"), 60, 100, "revalidate", False, False),
        (h(), h(cache_control="stale-while-revalidate=30, must-revalidate"), 60, 80, "revalidate", False, False),
        (h(), h(cache_control="stale-if-error=30"), 60, 80, "revalidate", False, True),
        (h(), h(cache_control="stale-if-error=30"), 60, 100, "revalidate", False, False),
        (
            h(cache_control="stale-if-error=100"),
            h(cache_control="stale-if-error=30"),
            60, 100, "revalidate", False, True,
        ),
        (h(), h(cache_control="stale-if-error=30, proxy-revalidate"), 60, 80, "revalidate", False, False),
    ],
)
def test_reuse(req, res, lifetime, age, kind, background, sie) -> None:  # type: ignore[no-untyped-def]
    decision = fr.reuse(req, 200, res, lifetime, age, P)
    assert (decision.kind.value, decision.background, decision.stale_if_error) == (kind, background, sie)
    assert decision.ttl == lifetime - age


def test_qualified_no_cache_and_private_drop_their_fields_instead() -> None:
    res = h(cache_control='max-age=60, no-cache="set-cookie, x-a", private="x-b"', set_cookie="s", x_a="1",
            x_b="2", x_c="3")
    assert fr.stored_headers(res, P) == [res[0], ("x-c", "3")]
    assert fr.reuse([], 200, res, 60, 10, P).kind is fr.ReuseKind.FRESH  # no validation needed without them
    assert fr.stored_headers(h(x_a="1"), P) == h(x_a="1")


def test_configured_stale_defaults() -> None:
    policy = fr.Policy(stale_while_revalidate=30, stale_if_error=300)
    assert fr.reuse([], 200, [], 60, 80, policy) == fr.Reuse(fr.ReuseKind.STALE_OK, -20, background=True,
                                                             stale_if_error=True, stale_if_unreachable=True)
    stale = fr.reuse([], 200, h(cache_control="stale-while-revalidate=0"), 60, 80, policy)
    assert stale.kind is fr.ReuseKind.REVALIDATE


@given(lifetime=st.floats(0, 1e6), age=st.floats(0, 1e6))
def test_without_directives_fresh_exactly_while_age_below_lifetime(lifetime: float, age: float) -> None:
    decision = fr.reuse([], 200, [], lifetime, age, P)
    assert decision.kind is (fr.ReuseKind.FRESH if age < lifetime else fr.ReuseKind.REVALIDATE)


def test_cache_control_parsing() -> None:
    assert fr.cache_control('Max-Age=5, no-cache="a, b", public,, x=y') == {
        "max-age": "5", "no-cache": "a, b", "public": None, "x": "y"}


def test_vary_key_and_fields() -> None:
    assert fr.vary_fields(h(vary="Accept-Language, accept-encoding")) == ("accept-encoding", "accept-language")
    a = fr.vary_key(("accept-language",), h(accept_language="en, fr"))
    b = fr.vary_key(("accept-language",), h(accept_language="en,fr"))
    c = fr.vary_key(("accept-language",), h(accept_language="de"))
    d = fr.vary_key(("accept-language",), h())
    assert a == b and a != c and d != fr.vary_key(("accept-language",), h(accept_language=""))


def test_merge_304_updates_fields_but_not_framing() -> None:
    stored = h(cache_control="max-age=1", etag='"a"', content_length="10", x_old="1")
    merged = fr.merge_304(stored, h(cache_control="max-age=60", content_length="0", x_new="2"))
    assert dict(merged) == {"cache-control": "max-age=60", "etag": '"a"', "content-length": "10",
                            "x-old": "1", "x-new": "2"}


def test_cache_status_format() -> None:
    assert cache_status(hit=True, ttl=41.7) == "edgecache; hit; ttl=41"
    assert (
        cache_status(fwd="uri-miss", fwd_status=200, stored=True)
        == "edgecache; fwd=uri-miss; fwd-status=200; stored"
    )
    assert cache_status(fwd="stale", detail="timeout") == 'edgecache; fwd=stale; detail="timeout"'
