"""Response plans: remembered for the same inputs, but each answer gets its own Date, its own
headers list and (with several ranges) its own multipart boundary."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.http.conditional import Conditions
from proxy.http.headers import format_http_date
from proxy.http.model import Representation, Span
from proxy.http.plan import plan_response, respan, same_but_span

REP = Representation(size=100, etag='"v1"', last_modified=1_700_000_000, content_type="video/mp4",
                     extra_headers=(("Cache-Control", "max-age=60"),))
NO_CONDITIONS = Conditions()


def plan(range_field: str | None, now: float, boundary: str | None = None, rep: Representation = REP,
         cond: Conditions = NO_CONDITIONS):  # type: ignore[no-untyped-def]
    def new_boundary() -> str:
        assert boundary is not None, "a boundary was asked for without several ranges"
        return boundary

    return plan_response("GET", cond, range_field, rep, max_ranges=16, new_boundary=new_boundary, now=now)


def test_the_same_request_planned_again_gets_the_date_of_its_own_time() -> None:
    first, second = plan("bytes=10-19", 1_800_000_000), plan("bytes=10-19", 1_800_000_007)
    assert first.status == second.status == 206
    assert first.body == second.body == [Span(10, 20)]
    assert first.headers[:-1] == second.headers[:-1]
    assert first.headers[-1] == ("Date", format_http_date(1_800_000_000))
    assert second.headers[-1] == ("Date", format_http_date(1_800_000_007))


def test_a_plan_changed_by_its_user_leaves_the_next_one_alone() -> None:
    first = plan(None, 1_800_000_000)
    first.headers.append(("X-Mine", "1"))
    first.headers[0] = ("Accept-Ranges", "none")
    second = plan(None, 1_800_000_000)
    assert ("X-Mine", "1") not in second.headers
    assert second.headers[0] == ("Accept-Ranges", "bytes")


def test_a_representation_with_its_own_date_gets_no_second_one() -> None:
    dated = Representation(size=4, etag=None, last_modified=None, content_type="text/plain",
                           extra_headers=(("Date", "Tue, 01 Dec 2026 00:00:00 GMT"),))
    for now in (1_800_000_000, 1_800_000_050):
        headers = plan(None, now, rep=dated).headers
        assert [v for n, v in headers if n == "Date"] == ["Tue, 01 Dec 2026 00:00:00 GMT"]


def test_a_not_modified_answer_is_dated_too() -> None:
    for now in (1_800_000_000, 1_800_000_003):
        answer = plan(None, now, cond=Conditions(if_none_match='"v1"'))
        assert answer.status == 304 and answer.body == []
        assert answer.headers == [("ETag", '"v1"'), ("Last-Modified", format_http_date(1_700_000_000)),
                                  ("Cache-Control", "max-age=60"), ("Date", format_http_date(now))]


def test_several_ranges_get_the_boundary_of_each_request() -> None:
    for boundary in ("aaaa", "bbbb"):
        multipart = plan("bytes=0-1,50-51", 1_800_000_000, boundary=boundary)
        assert ("Content-Type", f"multipart/byteranges; boundary={boundary}") in multipart.headers
        texts = b"".join(s for s in multipart.body if isinstance(s, bytes))
        assert texts.count(f"--{boundary}".encode()) == 3
        assert (b"aaaa" in texts) == (boundary == "aaaa")


def test_long_request_fields_are_planned_afresh_not_remembered() -> None:
    from proxy.http import plan as planning

    planning._prepared.cache_clear()
    plan("bytes=1-2", 1_800_000_000)
    assert planning._prepared.cache_info().currsize == 1
    long_range = "bytes=" + "0" * 300 + "1-2"  # the Range field is never part of what is kept
    long_tag = Conditions(if_none_match='"' + "x" * 300 + '"')  # a client chooses these: they are not kept
    assert plan(long_range, 1_800_000_000).status == 200  # too many digits: ignored (RFC 9110 section 14.2)
    assert plan("bytes=3-4", 1_800_000_000).headers[-4] == ("Content-Range", "bytes 3-4/100")
    assert plan(None, 1_800_000_000, cond=long_tag).status == 200
    assert planning._prepared.cache_info().currsize == 1


_RANGES = st.one_of(
    st.tuples(st.integers(0, 130), st.integers(0, 130)).map(lambda p: f"bytes={p[0]}-{p[1]}"),
    st.integers(0, 130).map(lambda first: f"bytes={first}-"),
    st.integers(0, 130).map(lambda n: f"bytes=-{n}"),
    st.tuples(st.integers(0, 120), st.integers(0, 120)).map(lambda p: f"bytes=0-4, {p[0]}-{p[1]}"),
    st.sampled_from(["bytes=x", "items=0-9", " bytes = 1-2", "BYTES=3-9", "bytes=1-2,", ""]),
    st.none(),
)
_CONDITIONS = st.builds(
    Conditions,
    if_match=st.sampled_from([None, '"v1"', '"v2"', "*"]),
    if_none_match=st.sampled_from([None, '"v1"', '"v2"']),
    if_modified_since=st.sampled_from([None, format_http_date(1_600_000_000), format_http_date(1_700_000_000)]),
    if_range=st.sampled_from([None, '"v1"', 'W/"v1"', '"v2"', format_http_date(1_700_000_000)]),
)


@given(size=st.integers(0, 120), etag=st.sampled_from([None, '"v1"', 'W/"v1"']),
       dated=st.booleans(), cond=_CONDITIONS, kept=_RANGES, other=_RANGES,
       now=st.floats(1.8e9, 1.8e9 + 0.99), later=st.floats(0, 0.99))
def test_respan_answers_what_plan_response_answers_another_range(
        size: int, etag: str | None, dated: bool, cond: Conditions, kept: str | None, other: str | None,
        now: float, later: float) -> None:
    """Where respan names a span, the plan of the same request with the other Range, later in the
    same second, is the kept plan but for that span's Content-Range and Content-Length."""
    extra = (("Cache-Control", "max-age=60"), *((("Date", format_http_date(1_700_000_000)),) if dated else ()))
    rep = Representation(size=size, etag=etag, last_modified=1_700_000_000, content_type="video/mp4",
                         extra_headers=extra)
    first = plan(kept, now, boundary="b", rep=rep, cond=cond)
    span = respan(first, other, size, 16)
    if span is None:
        return
    second = plan(other, min(now + later, 1.8e9 + 0.999), boundary="b", rep=rep, cond=cond)
    assert second.status == 206 and second.body == [Span(span[0], span[1] + 1)]
    assert same_but_span(first, second)
    assert ("Content-Range", f"bytes {span[0]}-{span[1]}/{size}") in second.headers
    assert ("Content-Length", str(span[1] - span[0] + 1)) in second.headers


def test_respan_leaves_to_plan_response_what_is_not_one_span_of_a_206() -> None:
    ranged = plan("bytes=0-9", 1_800_000_000)
    assert respan(ranged, "bytes=20-29", 100, 16) == (20, 29)
    assert respan(ranged, "bytes=90-200", 100, 16) == (90, 99)
    assert respan(ranged, "bytes=0-1,50-51", 100, 16) is None  # multipart
    assert respan(ranged, "bytes=200-300", 100, 16) is None  # 416
    assert respan(ranged, "bytes=x", 100, 16) is None  # Range ignored: a 200
    assert respan(ranged, None, 100, 16) is None
    assert respan(plan(None, 1_800_000_000), "bytes=20-29", 100, 16) is None  # a 200 kept: another status
    assert respan(plan("bytes=0-1,50-51", 1_800_000_000, boundary="b"), "bytes=20-29", 100, 16) is None
