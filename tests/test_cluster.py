"""A cluster: deploy/haproxy.cfg (a real HAProxy) in front of three edges and a counting origin."""
from __future__ import annotations

import csv
import dataclasses
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.config import Settings
from proxy.writes.signing import signed_query
from tests.conftest import REPO_ROOT, RunningServer, pattern
from tests.upstream import Obj, Upstream

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None,
                                reason="haproxy is not installed (apt-get install haproxy; .ci/run installs it)")

EDGES = ("edge1", "edge2", "edge3")
KEY = "cluster-signing-key"


def render(config: str, port: int, edges: dict[str, int], admin: Path) -> str:
    """deploy/haproxy.cfg for loopback: its listen port, the edges' ports, health checks every
    100 ms (so the test need not wait long for a stopped edge to be seen), and an admin socket."""
    config = config.replace("bind :8080", f"bind :{port}", 1)  # every address: clients from elsewhere too
    config = config.replace("check inter 2s fall 2 rise 2", "check inter 100ms fall 2 rise 1", 1)
    config = config.replace("global\n", f"global\n    stats socket {admin} mode 600 level admin\n", 1)
    for name, edge_port in edges.items():
        config, count = re.subn(rf"server {name} {name}:8080\n", f"server {name} 127.0.0.1:{edge_port}\n", config)
        assert count == 1, name
    return config


def server_states(admin: Path, field: str = "") -> dict[str, str]:
    """Each edge's state as HAProxy sees it, 'UP L7OK 200' or 'DOWN L4CON ...' (status, last
    health check, its HTTP status), from `show stat` on its admin socket; or another `field`."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(admin))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    rows = csv.DictReader(data.decode().removeprefix("# ").splitlines())
    return {row["svname"]: row[field] if field else f"{row['status']} {row['check_status']} {row['check_code']}".strip()
            for row in rows if row["pxname"] == "edges" and row["svname"] in EDGES}


def wait_for(admin: Path, expected: dict[str, str], haproxy: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert haproxy.poll() is None, f"HAProxy exited: {log.read_text()}"
        try:
            states = server_states(admin)
        except OSError:  # not listening yet
            states = {}
        if all(states.get(name, "").startswith(state) for name, state in expected.items()):
            return
        assert time.monotonic() < deadline, f"HAProxy still sees {states}, not {expected}"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class Cluster:
    url: str
    origin: Upstream
    edges: dict[str, RunningServer]
    admin: Path
    haproxy: subprocess.Popen[bytes]
    log: Path

    def wait_for(self, expected: dict[str, str]) -> None:
        wait_for(self.admin, expected, self.haproxy, self.log)


@pytest.fixture
def cluster(settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    origin = Upstream()
    base = dataclasses.replace(settings, block_size=256 * 1024, cache_size_limit=64 * 1024 * 1024,
                               max_object_size=32 * 1024 * 1024, trusted_proxies="127.0.0.1",
                               signing_key=KEY)  # every read signed; /_edge/health is not content
    with RunningServer(dataclasses.replace(base, server_name=""), app=origin) as o:
        edges = {name: RunningServer(dataclasses.replace(base, origin=o.url, cache_dir=str(tmp_path / name),
                                                         cache_name=name)) for name in EDGES}
        for edge in edges.values():
            edge.__enter__()
        port, admin = free_port(), tmp_path / "admin.sock"
        config = tmp_path / "haproxy.cfg"
        config.write_text(render((REPO_ROOT / "deploy" / "haproxy.cfg").read_text(), port,
                                 {name: edge.port for name, edge in edges.items()}, admin))
        log = tmp_path / "haproxy.log"
        with open(log, "wb") as out:
            haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
        try:
            cluster = Cluster(f"http://127.0.0.1:{port}", origin, edges, admin, haproxy, log)
            cluster.wait_for(dict.fromkeys(EDGES, "UP L7OK 200"))  # /_edge/health answered 200
            yield cluster
        finally:
            haproxy.terminate()
            haproxy.wait(timeout=10)
            for edge in edges.values():
                edge.__exit__(None, None, None)


def outside_address() -> str:
    """An address of this machine that is not loopback (the source of a client from elsewhere)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # a route out (no packet is sent)
        except OSError:
            pytest.skip("this machine has no address but loopback")
        address: str = s.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    return address


def test_a_forged_client_address_does_not_pass_haproxy(cluster: Cluster) -> None:
    """HAProxy's option forwardfor adds its own X-Forwarded-For line after the client's: a client
    from elsewhere that sends `X-Forwarded-For: 127.0.0.2` is still from elsewhere, and may not write."""
    port = cluster.url.rsplit(":", 1)[1]
    stranger = f"http://{outside_address()}:{port}"
    forged = {"X-Forwarded-For": "127.0.0.2", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    refused = "Forbidden: writes are allowed from loopback only until write_tokens is configured\n"
    with httpx.Client(timeout=10, headers=forged) as c:
        for answer in (c.post(stranger + "/_edge/purge?prefix=/"), c.get(stranger + "/_edge/objects"),
                       c.put(stranger + "/films/new.mp4", content=b"x")):
            assert (answer.status_code, answer.text) == (403, refused)
        assert [hit for hit in cluster.origin.hits if hit.method == "PUT"] == []
        # From this machine, through the same HAProxy, the same writes pass.
        assert c.post(cluster.url + "/_edge/purge?prefix=/").status_code == 200
        assert c.get(cluster.url + "/_edge/objects").status_code == 200


def _served(c: httpx.Client, path: str, body: bytes, expires: int = 2**33) -> tuple[str, bool]:
    """Which edge answered a signed URL of `path` (its Cache-Status name), and whether from its cache."""
    r = c.get(path + "?" + signed_query(KEY, path, expires))
    assert (r.status_code, r.content) == (200, body)
    name, _, rest = r.headers["cache-status"].partition("; ")
    return name, rest.startswith("hit")


def test_each_object_is_fetched_once_and_a_lost_edge_moves_only_its_keys(cluster: Cluster) -> None:
    bodies = {f"/films/{i}.mp4": pattern(3000 + i, i) for i in range(30)}
    for path, body in bodies.items():
        cluster.origin.objects[path] = Obj(body)
    with httpx.Client(base_url=cluster.url, timeout=10) as c:
        first = {path: _served(c, path, body) for path, body in bodies.items()}
        # Another signed URL: the query is not hashed, so the same edge answers, from its cached copy.
        again = {path: _served(c, path, body, 2**33 + 1) for path, body in bodies.items()}
    owner = {path: name for path, (name, _) in first.items()}
    assert server_states(cluster.admin, "chkdown") == dict.fromkeys(EDGES, "0")  # no edge was ever down
    assert set(owner.values()) == set(EDGES)  # every edge has a share
    assert not any(hit for _, hit in first.values())
    assert again == {path: (owner[path], True) for path in bodies}
    assert {path: len(cluster.origin.gets(path)) for path in bodies} == dict.fromkeys(bodies, 1)

    cluster.edges["edge2"].__exit__(None, None, None)  # edge2 is gone; the health check finds out
    cluster.wait_for({"edge1": "UP L7OK 200", "edge2": "DOWN L4CON", "edge3": "UP L7OK 200"})
    with httpx.Client(base_url=cluster.url, timeout=10) as c:
        after = {path: _served(c, path, body) for path, body in bodies.items()}
    moved = {path for path in bodies if after[path][0] != owner[path]}
    assert moved == {path for path in bodies if owner[path] == "edge2"}
    for path in bodies:
        # Keys of the edges still up stay where they were, cached; edge2's are fetched once more.
        assert after[path][1] == (path not in moved), path
        assert len(cluster.origin.gets(path)) == (2 if path in moved else 1), path
