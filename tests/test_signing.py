"""Signed URLs: the pure rules (proxy/signing.py) with hypothesis, then through a real server."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.cli import main
from proxy.config import ConfigError, Settings
from proxy.writes import signing
from tests.conftest import SAMPLE_SIZE, pattern
from tests.test_server import exchange
from tests.upstream import Obj

KEY = "k" * 16 + "-test-signing"
NOW = 1_800_000_000

keys = st.text(min_size=16, max_size=40)
segments = st.text(st.sampled_from("abcXYZ019-._~%20"), min_size=1, max_size=12)
paths = st.lists(segments, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s))
params = st.lists(st.from_regex(r"[a-z]{1,5}=[a-z0-9]{0,5}", fullmatch=True), max_size=3)
times = st.integers(min_value=0, max_value=10**11)


@given(keys, paths, times, params, st.integers(min_value=0, max_value=3))
def test_a_signed_url_is_granted_without_its_parameters(
    key: str, path: str, expires: int, others: list[str], at: int
) -> None:
    pairs = list(others)
    pairs.insert(min(at, len(pairs)), signing.signed_query(key, path, expires))
    granted = signing.check(key, path + "?" + "&".join(pairs), True, expires)
    assert granted == signing.Granted(path + ("?" + "&".join(others) if others else ""))


@given(keys, paths, times, st.sampled_from(["path", "expires", "digit", "key"]))
def test_any_change_is_a_wrong_signature(key: str, path: str, expires: int, change: str) -> None:
    sig = signing.signature(key, path, expires)
    if change == "path":
        path += "x"
    elif change == "expires":
        expires += 1
    elif change == "digit":
        sig = ("0" if sig[0] != "0" else "1") + sig[1:]
    else:
        key += "!"
    verdict = signing.check(key, f"{path}?expires={expires}&signature={sig}", True, 0)
    assert verdict == signing.Refused("wrong signature for this path")


@given(keys, paths, times)
def test_after_its_expiry_a_signed_url_is_refused(key: str, path: str, expires: int) -> None:
    verdict = signing.check(key, path + "?" + signing.signed_query(key, path, expires), True, expires + 1)
    assert verdict == signing.Refused("the signed URL has expired")


@given(st.text(max_size=40), st.text(max_size=80))
def test_any_query_gets_a_verdict_never_an_exception(expires: str, sig: str) -> None:
    verdict = signing.check(KEY, f"/a.mp4?expires={expires}&signature={sig}", True, NOW)
    assert isinstance(verdict, signing.Refused)


@pytest.mark.parametrize("query, reason", [
    ("", "this URL needs a signature"),
    ("expires=1900000000", "this URL needs a signature"),
    ("signature=" + "0" * 64, "this URL needs a signature"),
    ("expires=1&expires=2&signature=" + "0" * 64, "the signature's parameters are given more than once"),
    ("expires=" + "9" * 5000 + "&signature=" + "0" * 64, "malformed signature"),
    ("expires=1900000000&signature=" + "é" * 64, "malformed signature"),
    ("expires=-5&signature=" + "0" * 64, "malformed signature"),
])
def test_missing_repeated_or_malformed(query: str, reason: str) -> None:
    verdict = signing.check(KEY, "/a.mp4?" + query, True, NOW)
    assert isinstance(verdict, signing.Refused) and verdict.reason.startswith(reason)


def test_unprotected_paths_lose_the_parameters_all_the_same() -> None:
    assert signing.check(KEY, "/free.mp4?v=1&expires=2&signature=x", False, NOW) == signing.Granted("/free.mp4?v=1")
    assert signing.needs_signature("/premium/a.mp4", ("/premium/",))
    assert not signing.needs_signature("/free/a.mp4", ("/premium/",))
    assert signing.needs_signature("/free/a.mp4", ())


@pytest.mark.parametrize("changes, message", [
    ({"signing_key": "short"}, "invalid setting 'signing_key': must be at least 16 characters"),
    ({"signed_prefixes": "/premium/"}, "invalid setting 'signed_prefixes': needs a signing_key"),
    ({"signing_key": KEY, "signed_prefixes": "premium/"}, "invalid setting 'signed_prefixes': 'premium/' does"),
])
def test_signing_settings_are_checked(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        Settings(**changes)
    assert str(e.value).startswith(message)


def _url(base: str, path: str, expires: int = NOW * 2, key: str = KEY) -> str:
    return f"{base}{path}?{signing.signed_query(key, path, expires)}"


def test_reads_of_signed_prefixes_need_a_valid_signature(settings, make_server) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, signing_key=KEY, signed_prefixes="/video/, /dir/")
    clip = pattern(SAMPLE_SIZE)
    with httpx.Client(base_url=edge.url) as c:
        r = c.get(_url("", "/video/clip.mp4"))
        assert (r.status_code, r.content) == (200, clip)
        r = c.head(_url("", "/video/clip.mp4"))
        assert (r.status_code, r.headers["content-length"], r.content) == (200, str(SAMPLE_SIZE), b"")
        r = c.get(_url("", "/video/clip.mp4"), headers={"range": "bytes=10-19"})
        assert (r.status_code, r.content) == (206, clip[10:20])
        # One signature names one file on the origin, whichever route reads it; any spelling of its path.
        assert c.get(_url("", "/video/clip.mp4").replace("/video/", "/get_video_by_name/")).content == clip
        assert c.get(_url("", "/dir/a%20b.webm").replace("/dir/", "/d%69r/")).content == pattern(1000, 3)
        refused = {
            "unsigned": c.get("/video/clip.mp4"),
            "unsigned HEAD": c.head("/video/clip.mp4"),
            "compat route": c.get("/get_video_by_name/clip.mp4"),
            "assets route": c.get("/assets/video/clip.mp4"),
            "another file": c.get(_url("", "/video/clip.mp4").replace("clip.mp4", "other.mp4")),
            "expired": c.get(_url("", "/video/clip.mp4", expires=1_700_000_000)),
            "another key": c.get(_url("", "/video/clip.mp4", key=KEY + "x")),
        }
        for what, r in refused.items():
            assert r.status_code == 403, what
            assert r.headers["cache-control"] == "no-store", what
        assert refused["unsigned"].text == (
            "Forbidden: this URL needs a signature (?expires=<unix time>&signature=<hex>)\n")
        assert refused["expired"].text == "Forbidden: the signed URL has expired\n"
        assert refused["another key"].text == "Forbidden: wrong signature for this path\n"
        # Outside the prefixes, and the edge's own routes, need none.
        assert c.get("/small.txt").content == b"hello, edge\n"
        assert c.get("/_edge/health").status_code == 200


def test_every_signed_url_of_a_file_shares_one_cached_copy(http_settings, upstream) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    body = pattern(100_000, 5)
    origin.objects["/paid/a.mp4"] = Obj(body)
    origin.objects["/paid/a.mp4?v=2"] = Obj(body[:10])
    from tests.conftest import RunningServer

    with RunningServer(dataclasses.replace(http_settings, signing_key=KEY)) as edge, httpx.Client() as c:
        first = c.get(_url(edge.url, "/paid/a.mp4", expires=NOW * 2))
        second = c.get(_url(edge.url, "/paid/a.mp4", expires=NOW * 3))
        assert (first.status_code, first.content, second.content) == (200, body, body)
        assert second.headers["x-cache"] == "HIT"
        # Other parameters stay: they are the origin's (and part of the key).
        third = c.get(_url(edge.url, "/paid/a.mp4", expires=NOW * 2) + "&v=2")
        assert (third.status_code, third.content) == (200, body[:10])
    assert [h.path for h in origin.hits] == ["/paid/a.mp4", "/paid/a.mp4?v=2"]


def test_sign_prints_a_url_the_edge_accepts(settings, make_server, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, signing_key=KEY)
    monkeypatch.setenv("EDGECACHE_SIGNING_KEY", KEY)
    assert main(["sign", "/dir/a b.webm", "--ttl", "60", "--base", edge.url]) == 0
    url = capsys.readouterr().out.strip()
    assert re.fullmatch(re.escape(edge.url) + r"/dir/a%20b\.webm\?expires=\d+&signature=[0-9a-f]{64}", url)
    assert httpx.get(url).content == pattern(1000, 3)
    assert main(["sign", "/dir/a b.webm"]) == 2
    assert capsys.readouterr().err == "edgecache sign: give --base or set public_base_url\n"
    monkeypatch.delenv("EDGECACHE_SIGNING_KEY")
    assert main(["sign", "/x.mp4", "--base", edge.url]) == 2
    assert capsys.readouterr().err == "edgecache sign: no signing_key is set\n"


def test_sign_encodes_a_path_as_a_browser_asks_for_it(settings, make_server, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    (Path(settings.origin) / "premium").mkdir()
    (Path(settings.origin) / "premium" / "é.mp4").write_bytes(b"accent")
    edge = make_server(settings, signing_key=KEY)
    monkeypatch.setenv("EDGECACHE_SIGNING_KEY", KEY)
    assert main(["sign", "/premium/é.mp4", "--ttl", "60", "--base", edge.url]) == 0
    url = capsys.readouterr().out.strip()
    assert re.fullmatch(re.escape(edge.url) + r"/premium/%C3%A9\.mp4\?expires=\d+&signature=[0-9a-f]{64}", url)
    assert httpx.get(url).content == b"accent"



def test_every_read_of_a_signed_path_needs_its_signature(http_settings, upstream, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    origin.objects["/paid/a.mp4"] = Obj(b"paid", {"cache-control": "max-age=600"})
    edge = make_server(http_settings, signing_key=KEY, signed_prefixes="/paid/")
    unsigned = httpx.options(edge.url + "/paid/a.mp4")
    assert (unsigned.status_code, unsigned.text) == (
        403, "Forbidden: this URL needs a signature (?expires=<unix time>&signature=<hex>)\n")
    assert httpx.options(edge.url + _url("", "/paid/a.mp4")).status_code != 403  # signed: it goes on
    assert [hit.method for hit in origin.hits] == ["OPTIONS"]


def test_the_asterisk_target_is_answered_by_the_edge(http_settings, upstream, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    edge = make_server(http_settings)
    answer = exchange(edge, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nallow: OPTIONS, GET, HEAD, PUT, POST\r\n" in answer
    other = exchange(edge, b"GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert other.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert other.endswith(b"Bad Request: the request target '*' is for OPTIONS only (RFC 9112 section 3.2.4)\n")
    assert origin.hits == []
