"""`edgecache simulate`: traces read (the shared CSV, gzip'd or not; the access log's json and
combined lines), sizes with units, the JSON lines, the plot."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import sys
from pathlib import Path

import pytest

from proxy import cli
from proxy.config import parse_size
from proxy.ops.accesslog import Entry, as_json, combined
from proxy.ops.traces import TraceError, open_text, read_trace
from proxy.policy.adaptive import AdaptivePolicy
from proxy.policy.lru import LruPolicy
from proxy.policy.replay import replay

KiB = 1024


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["simulate", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("text", "expected"), [
    ("4.2GiB", 4509715660),  # 4.2 x 2^30, the fraction of a byte dropped
    ("1.5 MiB", 1572864), ("256MiB", 268435456), ("0.5k", 512), ("1048576", 1048576),
])
def test_sizes_take_decimals(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_the_shared_csv_gzipped_or_not(tmp_path: Path) -> None:
    lines = "# time,object,size_kib\n0,7,3\n1,9,1\n2,7,3\n"
    plain = tmp_path / "t.csv"
    plain.write_text(lines)
    packed = tmp_path / "t.trace"
    packed.write_bytes(gzip.compress(lines.encode()))
    expected = [(7, 3 * KiB, 0, 3 * KiB), (9, KiB, 0, KiB), (7, 3 * KiB, 0, 3 * KiB)]
    for path in (plain, packed):
        with open_text(str(path)) as lines:  # gzip'd by its first bytes, whatever its name
            assert list(read_trace(lines)) == expected
    with pytest.raises(TraceError, match="line 2: expected time,object,size_kib"):
        list(read_trace(io.StringIO("0,1,2\n1,x,2\n")))


ENTRY = Entry(time=1796065200.25, client="192.0.2.7", method="GET", target="/v/a.mp4", protocol="1.1",
              status=200, sent=1000, cache="MISS", range="", origin_status=200, duration=0.01, referer="",
              user_agent="curl/8.5.0")
LOG = [
    ENTRY,
    ENTRY._replace(status=206, sent=100, range="bytes=500-599", cache="HIT"),
    ENTRY._replace(target="/v/b.mp4", status=206, sent=300, range="bytes=200-", cache="MISS"),
    ENTRY._replace(target="/v/b.mp4", status=206, sent=50, range="bytes=-50", cache="HIT"),  # the last 50
    ENTRY._replace(method="HEAD", sent=0),  # no body: not a request for bytes
    ENTRY._replace(status=304, sent=0),
    ENTRY._replace(target="/_edge/metrics", cache=""),  # the edge's own answers are not traffic
    ENTRY._replace(status=404, sent=20),
]


@pytest.mark.parametrize("form", [combined, as_json])
def test_access_logs_as_requests_for_bytes(form) -> None:  # type: ignore[no-untyped-def]
    requests = list(read_trace(io.StringIO("".join(form(e) + "\n" for e in LOG))))
    assert requests == [
        ("/v/a.mp4", 1000, 0, 1000),
        ("/v/a.mp4", 1000, 500, 600),
        ("/v/b.mp4", 500, 200, 500),  # size: the furthest byte known so far
        ("/v/b.mp4", 500, 450, 500),
    ]


def test_json_lines_per_size_and_policy_are_the_replay_of_the_same_code(tmp_path: Path) -> None:
    trace = [(n % 7, (1 + n % 3) * 100) for n in range(200)]
    path = tmp_path / "t.csv"
    path.write_text("# time,object,size_kib\n" + "".join(f"{t},{o},{k}\n" for t, (o, k) in enumerate(trace)))
    code, out, _ = run(str(path), "--size", "300KiB,1MiB", "--block-size", "64KiB", "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["size"], r["policy"]) for r in lines] == [(300 * KiB, "edgecache"), (300 * KiB, "lru"),
                                                          (KiB * KiB, "edgecache"), (KiB * KiB, "lru")]
    for r in lines:
        policy = (AdaptivePolicy if r["policy"] == "edgecache" else LruPolicy)(r["size"], 64 * KiB, 262144)
        f = replay(((o, k * KiB, 0, k * KiB) for o, k in trace), policy)
        assert (r["requests"], r["bytes"], r["hit_bytes"], r["hit_requests"]) == \
            (200, f.bytes, f.hit_bytes, f.hit_requests)
        assert r["byte_hit_ratio"] == round(f.byte_hit_ratio, 6) and r["request_hit_ratio"] == round(
            f.request_hit_ratio, 6)
    code, out, _ = run(str(path), "--size", "1MiB")
    assert code == 0 and "edgecache" in out and "lru" in out and "byte hit ratio" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--size", "lots"], "sizes are numbers with a unit"),
    (["--size", "0"], "must be positive"),
    (["--plot", "chart.pdf"], "--plot writes .svg or .png files"),
])
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text("0,1,1\n")
    code, _, err = run(str(path), *args)
    assert code == 2 and message in err


def test_unreadable_traces_say_why(tmp_path: Path) -> None:
    code, _, err = run(str(tmp_path / "none.csv"))
    assert code == 2 and "cannot read" in err
    bad = tmp_path / "bad.log"
    bad.write_text("hello there\n")
    code, _, err = run(str(bad))
    assert code == 2 and "not a trace line" in err


def test_plot_without_matplotlib_says_which_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.csv"
    path.write_text("0,1,1\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    code, _, err = run(str(path), "--plot", str(tmp_path / "p.svg"))
    assert code == 2 and "pip install 'edgecache[plot]'" in err


def test_plot_draws_both_policies(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "t.csv"
    path.write_text("".join(f"{n},{n % 5},{1 + n % 4}\n" for n in range(100)))
    code, _, _ = run(str(path), "--size", "4KiB,8KiB", "--block-size", "1KiB", "--plot", str(tmp_path / "p.svg"))
    svg = (tmp_path / "p.svg").read_text()
    assert code == 0 and "edgecache" in svg and "lru" in svg
