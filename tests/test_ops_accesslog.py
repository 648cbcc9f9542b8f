"""The access log: one line per request, in Apache combined or JSON form, with the edge's fields."""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import time

import httpx
import pytest

from proxy.config import ConfigError, Settings, load_settings
from proxy.ops.accesslog import QUEUE_LINES, Entry, LineWriter, as_json, combined
from proxy.server.front import fwd_status
from proxy.server.run import uvicorn_options
from tests.conftest import RunningServer

ENTRY = Entry(time=1796065200.25, client="192.0.2.7", method="GET", target='/video/a "b".mp4?x=1', protocol="1.1",
              status=206, sent=100, cache="MISS", range="bytes=0-99", origin_status=206, duration=0.0123456,
              referer="", user_agent="curl/8.5.0")


def test_combined_line_exactly() -> None:
    assert combined(ENTRY) == (
        '192.0.2.7 - - [30/Nov/2026:19:00:00 +0000] "GET /video/a \\"b\\".mp4?x=1 HTTP/1.1" 206 100 "-" '
        '"curl/8.5.0" cache=MISS range="bytes=0-99" origin_status=206 duration=0.012346'
    )
    quiet = ENTRY._replace(sent=0, cache="", range="", origin_status=None, user_agent="a\x1b[31m")
    assert combined(quiet).endswith('" 206 - "-" "a\\x1b[31m" cache=- range="-" origin_status=- duration=0.012346')


def test_json_line_exactly() -> None:
    assert json.loads(as_json(ENTRY)) == {
        "time": "2026-11-30T19:00:00.250Z", "client": "192.0.2.7", "method": "GET", "path": '/video/a "b".mp4?x=1',
        "protocol": "HTTP/1.1", "status": 206, "bytes": 100, "cache": "MISS", "range": "bytes=0-99",
        "origin_status": 206, "duration": 0.012346, "referer": None, "user_agent": "curl/8.5.0",
    }
    odd = ENTRY._replace(target='/a\nb"\\\x00é', client="", origin_status=None)
    assert json.loads(as_json(odd))["path"] == '/a\nb"\\\x00é' and "\n" not in as_json(odd)
    assert (json.loads(as_json(odd))["client"], json.loads(as_json(odd))["origin_status"]) == (None, None)


def test_fwd_status_is_read_from_the_last_member() -> None:
    assert fwd_status(b"edgecache; fwd=uri-miss; fwd-status=206; stored") == 206
    assert fwd_status(b'origin-cache; hit, edgecache; fwd=stale; fwd-status=304') == 304
    assert fwd_status(b"other; fwd-status=200, edgecache; hit; ttl=5") is None
    assert fwd_status(b"") is None


def test_the_format_is_a_setting() -> None:
    assert load_settings(environ={"EDGECACHE_ACCESS_LOG_FORMAT": "json"}).access_log_format == "json"
    with pytest.raises(ConfigError, match="'access_log_format': must be one of combined, json"):
        Settings(access_log_format="apache")
    assert uvicorn_options(Settings())["access_log"] is False  # one line per request: the edge's


def test_a_slow_writer_drops_lines_instead_of_growing() -> None:
    writer = LineWriter(io.StringIO())  # not started: nothing drains the queue
    for i in range(QUEUE_LINES + 5):
        writer.put(f"line {i}")
    assert len(writer.lines) == QUEUE_LINES


@pytest.mark.parametrize("log_format", ["combined", "json"])
def test_one_line_per_request_through_a_server(settings: Settings, log_format: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    settings = dataclasses.replace(settings, access_log=True, access_log_format=log_format)
    with RunningServer(settings) as server, httpx.Client(base_url=server.url) as c:
        c.get("/video/clip.mp4", headers={"Range": "bytes=0-99", "User-Agent": "t/1", "Referer": "http://r/"})
        fills = server.server.config.app.state.service.reads.filler.active
        deadline = time.monotonic() + 10
        while fills and time.monotonic() < deadline:  # the block is stored (before: a miss, collapsed into its fill)
            time.sleep(0.01)
        c.get("/video/clip.mp4", headers={"Range": "bytes=0-99", "User-Agent": "t/1"})
        c.head("/small.txt?v=2", headers={"User-Agent": "t/1"})
        c.get("/missing.bin", headers={"User-Agent": "t/1"})
        c.get("/x%00.mp4", headers={"User-Agent": "t/1"})  # lines come as requests end (in any order)
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        for r in records:
            assert r.pop("duration") >= 0 and r.pop("time").endswith("Z")
        order = ["/video/clip.mp4", "/small.txt?v=2", "/missing.bin", "/x%00.mp4"]
        records.sort(key=lambda r: (order.index(r["path"]), r["cache"] == "HIT"))
        assert records == [
            {"client": "127.0.0.1", "method": "GET", "path": "/video/clip.mp4", "protocol": "HTTP/1.1",
             "status": 206, "bytes": 100, "cache": "MISS", "range": "bytes=0-99", "origin_status": 206,
             "referer": "http://r/", "user_agent": "t/1"},
            {"client": "127.0.0.1", "method": "GET", "path": "/video/clip.mp4", "protocol": "HTTP/1.1",
             "status": 206, "bytes": 100, "cache": "HIT", "range": "bytes=0-99", "origin_status": None,
             "referer": None, "user_agent": "t/1"},
            {"client": "127.0.0.1", "method": "HEAD", "path": "/small.txt?v=2", "protocol": "HTTP/1.1",
             "status": 200, "bytes": 0, "cache": "MISS", "range": None, "origin_status": 206,
             "referer": None, "user_agent": "t/1"},
            {"client": "127.0.0.1", "method": "GET", "path": "/missing.bin", "protocol": "HTTP/1.1",
             "status": 404, "bytes": len("Not Found\n"), "cache": "MISS", "range": None, "origin_status": 404,
             "referer": None, "user_agent": "t/1"},
            {"client": "127.0.0.1", "method": "GET", "path": "/x%00.mp4", "protocol": "HTTP/1.1",
             "status": 400, "bytes": records[4]["bytes"], "cache": None, "range": None, "origin_status": None,
             "referer": None, "user_agent": "t/1"},
        ]
        assert records[4]["bytes"] > 0
    else:
        stamp = r"\[\d\d/\w\w\w/\d{4}:\d\d:\d\d:\d\d \+0000\]"
        expected = [
            r'"GET /video/clip.mp4 HTTP/1.1" 206 100 "http://r/" "t/1" cache=MISS range="bytes=0-99" origin_status=206',
            r'"GET /video/clip.mp4 HTTP/1.1" 206 100 "-" "t/1" cache=HIT range="bytes=0-99" origin_status=-',
            r'"HEAD /small.txt\?v=2 HTTP/1.1" 200 - "-" "t/1" cache=MISS range="-" origin_status=206',
            r'"GET /missing.bin HTTP/1.1" 404 10 "-" "t/1" cache=MISS range="-" origin_status=404',
            r'"GET /x%00.mp4 HTTP/1.1" 400 \d+ "-" "t/1" cache=- range="-" origin_status=-',
        ]
        assert len(lines) == len(expected), lines
        for pattern in expected:
            full = rf"127\.0\.0\.1 - - {stamp} {pattern} duration=\d+\.\d{{6}}"
            matching = [x for x in lines if re.fullmatch(full, x)]
            assert len(matching) == 1, (pattern, lines)


def test_no_lines_when_the_log_is_off(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    with RunningServer(settings) as server:  # the fixture's settings: access_log = false
        assert httpx.get(server.url + "/small.txt").status_code == 200
    assert capsys.readouterr().out == ""


def test_origin_failures_are_logged_with_context(settings: Settings, caplog: pytest.LogCaptureFixture,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    dead = dataclasses.replace(settings, origin="http://127.0.0.1:9", access_log=True, access_log_format="json")
    with caplog.at_level(logging.WARNING, logger="edgecache"), RunningServer(dead) as server:
        assert httpx.get(server.url + "/v/a.mp4?x=1", headers={"Range": "bytes=5-"}).status_code == 502
    warnings = [r.getMessage() for r in caplog.records if "answered 502" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("GET /v/a.mp4?x=1 from 127.0.0.1 answered 502: cache-status "
                                  "'edgecache; fwd=miss; detail=\"unreachable\"'")
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x]
    assert (line["status"], line["cache"], line["range"], line["path"]) == (502, "MISS", "bytes=5-", "/v/a.mp4?x=1")

