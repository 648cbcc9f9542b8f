"""Request paths to safe relative paths."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.request.paths import BadPath, HiddenPath, clean_path


@pytest.mark.parametrize(
    "url_path, expected",
    [
        ("/video/a.mp4", "video/a.mp4"),
        ("//video///a.mp4", "video/a.mp4"),
        ("/", ""),
        ("/dir/a b.webm", "dir/a b.webm"),
        ("/%2e%2e", "%2e%2e"),  # double-encoded: a literal name, not a traversal
    ],
)
def test_clean_path_accepts(url_path: str, expected: str) -> None:
    assert clean_path(url_path) == expected


@pytest.mark.parametrize(
    "url_path",
    ["/../etc/passwd", "/a/../../b", "/a/./b", "/..", "/a\\..\\b", "/a\x00b", "/a\nb", "/a\x7fb",
     "/" + "a" * 256, "/a" * 2100],
)
def test_clean_path_rejects(url_path: str) -> None:
    with pytest.raises(BadPath):
        clean_path(url_path)


def test_dotfiles_hidden_unless_allowed() -> None:
    with pytest.raises(HiddenPath):
        clean_path("/.git/config")
    with pytest.raises(HiddenPath):
        clean_path("/a/.env")
    assert clean_path("/.well-known/x", allow_dotfiles=True) == ".well-known/x"


@given(st.text(max_size=60))
def test_clean_path_never_escapes(url_path: str) -> None:
    try:
        rel = clean_path(url_path, allow_dotfiles=True)
    except (BadPath, HiddenPath):
        return
    parts = rel.split("/") if rel else []
    assert ".." not in parts and "." not in parts and "" not in parts
    assert not rel.startswith("/") and "\\" not in rel and "\x00" not in rel


@given(st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=60))
def test_origin_path_is_a_valid_request_path(raw: str) -> None:
    from proxy.request.paths import origin_path

    path = origin_path(raw)
    assert path.startswith("/") and "//" not in path and "#" not in path
    assert all("!" <= c <= "~" for c in path)
    assert origin_path(path) == path  # what it keeps, it keeps exactly


def test_purge_keys_and_query_values_are_spelled_as_the_keys() -> None:
    from proxy.request.paths import key_prefix, query_value

    assert key_prefix("/caf%c3%a9/", True) == "/caf%C3%A9/"
    assert key_prefix("/v/a.mp4?x=1", True) == "/v/a.mp4?x=1"
    assert key_prefix("/caf%c3%a9/", False) == "/caf%c3%a9/"  # a directory origin's keys are decoded paths
    assert query_value("path=/a+b.mp4&x=1", "path") == "/a+b.mp4"
    assert query_value("prefix=/caf%25c3%25a9/", "prefix") == "/caf%c3%a9/"
    assert query_value("x=1", "path") is None


@pytest.mark.parametrize(
    "typed, http, key",
    [
        ("/premium/é.mp4", True, "/premium/%C3%A9.mp4"),  # a character is its UTF-8 bytes, as a browser sends it
        ("/premium/%c3%a9.mp4", True, "/premium/%C3%A9.mp4"),  # spelled encoded: the same key
        ("/x%FF.mp4", True, "/x%FF.mp4"),  # the bytes as requested, even when not UTF-8
        ("/a b.mp4?q=1", True, "/a%20b.mp4?q=1"),  # an HTTP origin's key has the query
        ("/a?b.mp4", False, "/a?b.mp4"),  # a directory's keys are file names: '?' is part of one
        ("/premium/é.mp4", False, "/premium/é.mp4"),
        ("//v//a.mp4", False, "/v/a.mp4"),
    ],
)
def test_the_key_of_a_typed_path(typed: str, http: bool, key: str) -> None:
    from proxy.request.paths import typed_key

    assert typed_key(typed, http) == key


@pytest.mark.parametrize("typed, http", [("/a/../b.mp4", True), ("/a/../b.mp4", False), ("/a/%2e%2e/b.mp4", True),
                                          ("/a\x00.mp4", True), ("/a\x00.mp4", False)])
def test_a_typed_path_that_names_no_file_is_refused(typed: str, http: bool) -> None:
    from proxy.request.paths import typed_key

    with pytest.raises(BadPath):
        typed_key(typed, http)


def test_a_typed_prefix_is_utf8_as_the_keys() -> None:
    from proxy.request.paths import key_prefix

    assert key_prefix("/vid/é", True) == "/vid/%C3%A9"
    assert key_prefix("/vid/é", False) == "/vid/é"
