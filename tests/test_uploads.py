"""Uploads and purge: streamed, atomic, authorized; both origin kinds."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from proxy.app import create_app
from tests.conftest import REPO_ROOT, RunningServer, pattern
from tests.test_server import _rss
from tests.upstream import Obj

pytestmark = pytest.mark.anyio
VIDEO = pattern(700_000, seed=21)


def tree(root: Path) -> list[tuple[str, bytes | None]]:
    """Every path below `root` and its bytes, but the edge's own cache directory's (the cache
    keeps its state there on its own time)."""
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
                  for p in root.rglob("*") if "cache" not in p.relative_to(root).parts[:1])


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".upload")]


async def test_put_then_get_byte_exact_and_overwrite(server: RunningServer, origin_dir: Path) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.put("/new/dir/clip.mp4", content=VIDEO)
        assert r.status_code == 201
        body = r.json()
        assert body["url"] == f"{server.url}/new/dir/clip.mp4" and r.headers["location"] == body["url"]
        assert body["size"] == len(VIDEO) and body["content_type"] == "video/mp4" and body["etag"].startswith('"')
        got = await c.get("/new/dir/clip.mp4")
        assert got.content == VIDEO and got.headers["etag"] == body["etag"]
        second = pattern(1000, seed=1)
        again = await c.put("/new/dir/clip.mp4", content=second)
        assert again.status_code == 200 and again.json()["size"] == 1000
        after = await c.get("/new/dir/clip.mp4", headers={"If-None-Match": body["etag"]})
        assert after.status_code == 200 and after.content == second  # the old ETag no longer matches
    assert (origin_dir / "new" / "dir" / "clip.mp4").read_bytes() == second
    assert leftovers(origin_dir) == []


async def test_compat_post_video_multipart(server: RunningServer, origin_dir: Path) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/video", files={"file": ("my clip.mp4", VIDEO, "video/mp4")}, data={"note": "x"})
        assert r.status_code == 201
        assert r.json()["video_url"] == f"{server.url}/get_video_by_name/my%20clip.mp4"
        got = await c.get("/get_video_by_name/my%20clip.mp4", headers={"Range": "bytes=100-199"})
        assert got.status_code == 206 and got.content == VIDEO[100:200]
    assert (origin_dir / "video" / "my clip.mp4").read_bytes() == VIDEO


async def test_base_url_from_configured_or_trusted_proxy(settings, make_server) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, public_base_url="https://cdn.example.com/")
    r = httpx.put(edge.url + "/a.mp4", content=b"x")
    assert r.json()["url"] == "https://cdn.example.com/a.mp4"
    edge2 = make_server(settings, trusted_proxies="127.0.0.0/8")
    r = httpx.put(edge2.url + "/b.mp4", content=b"x", headers={"X-Forwarded-Proto": "https",
                                                          "X-Forwarded-Host": "videos.example",
                                                          "X-Forwarded-For": "127.0.0.9"})
    assert r.json()["url"] == "https://videos.example/b.mp4"
    r = httpx.put(edge.url + "/c.mp4", content=b"x", headers={"X-Forwarded-Host": "evil.example"})
    assert r.status_code == 403  # forwarded through a proxy that is not trusted: not a loopback writer
    edge3 = make_server(settings, write_tokens="t")
    r = httpx.put(edge3.url + "/d.mp4", content=b"x", headers={"X-Forwarded-Host": "evil.example",
                                                          "Authorization": "Bearer t"})
    assert r.json()["url"] == f"{edge3.url}/d.mp4"  # an untrusted X-Forwarded-Host is ignored


@pytest.mark.parametrize(
    "method, path, files, status",
    [
        ("PUT", "/a/%2e%2e/%2e%2e/escape.mp4", None, 400),
        ("PUT", "/.hidden.mp4", None, 400),
        ("PUT", "/folder/", None, 400),
        ("PUT", "/a%00b.mp4", None, 400),
        ("PUT", "/" + "n" * 300 + ".mp4", None, 400),
        ("POST", "/video", ("../evil.mp4",), 400),
        ("POST", "/video", ("a/b.mp4",), 400),
        ("POST", "/video", ("a\\b.mp4",), 400),
        ("POST", "/video", (".env",), 400),
        ("PUT", "/dir", None, 409),  # a folder of that name exists
    ],
)
async def test_hostile_names_are_refused(server: RunningServer, origin_dir: Path, method: str, path: str,
                                         files: tuple | None, status: int) -> None:
    before = tree(origin_dir.parent)
    async with httpx.AsyncClient(base_url=server.url) as c:
        if files:
            r = await c.post(path, files={"file": (files[0], b"data", "video/mp4")})
        else:
            r = await c.request(method, path, content=b"data")
    assert r.status_code == status, r.text
    assert r.text.split(":")[0] in ("Bad Request", "Conflict")
    assert tree(origin_dir.parent) == before


async def test_multipart_without_file_or_truncated(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/video", files={"other": ("a.mp4", b"x")})
        assert r.status_code == 400 and "no file" in r.text
        body = b'--B\r\nContent-Disposition: form-data; name="file"; filename="t.mp4"\r\n\r\nabc'
        r = await c.post("/video", content=body, headers={"Content-Type": "multipart/form-data; boundary=B"})
        assert r.status_code == 400 and "ended" in r.text
        r = await c.post("/video", content=b"x", headers={"Content-Type": "multipart/form-data"})
        assert r.status_code == 400
        control = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="x\x01.mp4"\r\n\r\nabc'
                   b"\r\n--B--\r\n")
        r = await c.post("/video", content=control, headers={"Content-Type": "multipart/form-data; boundary=B"})
        assert r.status_code == 400 and "control" in r.text


async def test_size_limit_up_front_and_while_streaming(settings, make_server, origin_dir: Path) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, max_upload_size=1000)
    async with httpx.AsyncClient(base_url=edge.url) as c:
        r = await c.put("/small.txt", content=b"x" * 1001)
        assert r.status_code == 413

        async def chunked():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield b"y" * 300

        r = await c.put("/small.txt", content=chunked())  # no Content-Length: counted as it streams
        assert r.status_code == 413
        r = await c.post("/video", files={"file": ("big.mp4", b"z" * 2000)})
        assert r.status_code == 413
    assert (origin_dir / "small.txt").read_bytes() == b"hello, edge\n"
    assert not (origin_dir / "video" / "big.mp4").exists() and leftovers(origin_dir) == []


async def test_stalled_upload_is_dropped(settings, make_server, origin_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server(settings, client_body_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"PUT /small.txt HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert leftovers(origin_dir) == [] and (origin_dir / "small.txt").read_bytes() == b"hello, edge\n"


async def test_extension_allow_list(settings, make_server) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, upload_extensions=".mp4, webm")
    assert httpx.put(edge.url + "/a.exe", content=b"x").status_code == 415
    assert httpx.put(edge.url + "/a.WEBM", content=b"x").status_code == 201


async def test_disconnect_mid_upload_leaves_old_file(settings, make_server, origin_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server(settings, client_body_timeout=2.0)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"PUT /small.txt HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1_000_000)
    await asyncio.sleep(1.0)  # the server may not have started on the request when we closed
    for _ in range(300):
        if not leftovers(origin_dir):
            break
        await asyncio.sleep(0.05)
    assert leftovers(origin_dir) == []
    assert (origin_dir / "small.txt").read_bytes() == b"hello, edge\n"


@pytest.mark.parametrize("cached", [True, False])
async def test_readers_during_overwrites_never_see_mixed_bytes(settings, make_server, cached: bool) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, cache_enabled=cached, block_size=64 * 1024, cache_control="no-cache")
    versions = [pattern(400_000, seed=s) for s in range(4)]
    async with httpx.AsyncClient(base_url=edge.url, timeout=30) as c:
        await c.put("/race.bin", content=versions[0])
        stop = False
        seen: list[bytes] = []

        async def reader() -> None:
            while not stop:
                try:
                    r = await c.get("/race.bin")
                except httpx.RemoteProtocolError:
                    continue  # a response cut because the version changed mid-fill: allowed
                if r.status_code == 200:
                    seen.append(r.content)

        readers = [asyncio.create_task(reader()) for _ in range(4)]
        for i in range(12):
            assert (await c.put("/race.bin", content=versions[i % 4])).status_code in (200, 201)
            await asyncio.sleep(0.02)
        # Most reads during the overwrites are cut (each block is checked against the version);
        # once the writes stop, the readers' next reads complete.
        await asyncio.sleep(0.3)
        stop = True
        await asyncio.gather(*readers)
    assert seen and all(body in versions for body in seen)


async def test_upload_invalidates_and_purge_by_path_and_prefix(server: RunningServer, origin_dir: Path) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        for name in ("a.mp4", "b.mp4"):
            await c.put(f"/p/{name}", content=b"v1-" + name.encode())
            await c.get(f"/p/{name}")
            assert (await c.get(f"/p/{name}")).headers["x-cache"] == "HIT"
        (origin_dir / "p" / "a.mp4").write_bytes(b"changed behind the edge's back")
        assert (await c.get("/p/a.mp4")).content == b"v1-a.mp4"  # still fresh in the cache
        r = await c.post("/_edge/purge", params={"path": "/p/a.mp4"})
        assert r.status_code == 200 and r.json() == {"purged": ["/p/a.mp4"], "count": 1}
        fresh = await c.get("/p/a.mp4")
        assert fresh.content == b"changed behind the edge's back" and fresh.headers["x-cache"] == "MISS"
        r = await c.post("/_edge/purge", params={"prefix": "/p/"})
        assert r.json()["purged"] == ["/p/a.mp4", "/p/b.mp4"]
        assert (await c.get("/p/b.mp4")).headers["x-cache"] == "MISS"
        assert (await c.post("/_edge/purge")).status_code == 400


async def test_write_authorization(settings) -> None:  # type: ignore[no-untyped-def]
    async def call(app, client_ip, method, path, **kw):  # type: ignore[no-untyped-def]
        transport = httpx.ASGITransport(app=app, client=(client_ip, 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as c:
            return await c.request(method, path, **kw)

    open_app = create_app(settings)
    assert (await call(open_app, "127.0.0.1", "PUT", "/w.mp4", content=b"x")).status_code == 201
    assert (await call(open_app, "::1", "PUT", "/w.mp4", content=b"x")).status_code == 200
    remote = await call(open_app, "203.0.113.7", "PUT", "/w.mp4", content=b"x")
    assert remote.status_code == 403 and "loopback" in remote.text
    via_proxy = await call(open_app, "127.0.0.1", "PUT", "/w.mp4", content=b"x",
                           headers={"X-Forwarded-For": "203.0.113.7"})
    assert via_proxy.status_code == 403  # forwarded by a proxy that is not trusted: not loopback
    assert (await call(open_app, "203.0.113.7", "POST", "/_edge/purge", params={"prefix": "/"})).status_code == 403
    assert (await call(open_app, "203.0.113.7", "GET", "/w.mp4")).status_code == 200  # reads stay public

    import dataclasses

    locked = create_app(dataclasses.replace(settings, write_tokens="t0ken"))
    r = await call(locked, "127.0.0.1", "PUT", "/w.mp4", content=b"x")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    bad = await call(locked, "127.0.0.1", "PUT", "/w.mp4", content=b"x", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 403
    good = await call(locked, "203.0.113.7", "PUT", "/w.mp4", content=b"y", headers={"Authorization": "Bearer t0ken"})
    assert good.status_code == 200
    trusted = create_app(dataclasses.replace(settings, trusted_proxies="10.0.0.0/8"))
    assert (await call(trusted, "10.0.0.2", "PUT", "/w.mp4", content=b"x",
                       headers={"X-Forwarded-For": "127.0.0.1"})).status_code == 200
    assert (await call(trusted, "10.0.0.2", "PUT", "/w.mp4", content=b"x",
                       headers={"X-Forwarded-For": "198.51.100.1"})).status_code == 403


async def test_http_origin_uploads(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    edge = make_server(http_settings)
    origin.objects["/video/clip.mp4"] = Obj(b"old", {"cache-control": "max-age=600"})
    async with httpx.AsyncClient(base_url=edge.url) as c:
        assert (await c.get("/get_video_by_name/clip.mp4")).content == b"old"
        r = await c.post("/video", files={"file": ("clip.mp4", VIDEO, "video/mp4")})
        assert r.status_code == 201 and r.json()["size"] == len(VIDEO)
        put = [h for h in origin.hits if h.method == "PUT"][-1]
        assert put.path == "/video/clip.mp4" and put.headers["content-type"] == "video/mp4"
        assert origin.received["/video/clip.mp4"] == VIDEO
        again = await c.get("/get_video_by_name/clip.mp4")
        assert again.content == VIDEO and again.headers["x-cache"] == "MISS"  # invalidated
        raw = await c.put("/raw.bin", content=b"raw bytes")  # proxied as it is: the origin's answer
        assert raw.status_code == 201 and raw.content == b"" and origin.received["/raw.bin"] == b"raw bytes"
        assert [h for h in origin.hits if h.method == "PUT"][-1].headers["content-length"] == "9"


async def test_http_origin_upload_errors_are_passed_back(upstream, http_settings, make_server) -> None:  # type: ignore[no-untyped-def]
    origin, _ = upstream
    edge = make_server(http_settings)
    origin.fail_status = 507
    r = httpx.post(edge.url + "/video", files={"file": ("x.mp4", b"data", "video/mp4")})
    assert r.status_code == 507
    assert r.text == "The origin refused the upload (507): origin failure\n"
    proxied = httpx.put(edge.url + "/x.mp4", content=b"data")
    assert (proxied.status_code, proxied.text) == (507, "origin failure")


async def test_one_gib_streamed_upload_keeps_memory_flat(server: RunningServer, origin_dir: Path) -> None:
    size = 1024**3
    chunk = b"\0" * (1 << 20)
    before = _rss()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(f"PUT /gig.bin HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode())
        for _ in range(size // len(chunk)):
            s.sendall(chunk)
        response = b""
        while data := s.recv(65536):
            response += data
    assert response.startswith(b"HTTP/1.1 201")
    assert (origin_dir / "gig.bin").stat().st_size == size
    grown = _rss() - before
    assert grown < 64 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB"


def test_cli_purge_on_a_stopped_servers_cache(settings, origin_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with RunningServer(settings) as running:
        httpx.get(running.url + "/small.txt")
        assert httpx.get(running.url + "/small.txt").headers["x-cache"] == "HIT"
    out = subprocess.run([sys.executable, "-m", "proxy", "purge", "--cache-dir", settings.cache_dir, "--prefix", "/"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0 and json.loads(out.stdout) == {"purged": ["/small.txt"], "count": 1}
    with RunningServer(settings) as running:
        assert httpx.get(running.url + "/small.txt").headers["x-cache"] == "MISS"


async def test_concurrent_uploads_last_to_finish_wins_intact(server: RunningServer, origin_dir: Path) -> None:
    versions = [pattern(300_000 + i, seed=40 + i) for i in range(6)]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        results = await asyncio.gather(*(c.put("/same.bin", content=v) for v in versions))
        assert all(r.status_code in (200, 201) for r in results)
        final = (origin_dir / "same.bin").read_bytes()
        assert final in versions
        assert (await c.get("/same.bin")).content == final
    assert leftovers(origin_dir) == []


async def test_disk_full_is_507_and_leaves_the_old_file(  # type: ignore[no-untyped-def]
    client: httpx.AsyncClient, origin_dir: Path, monkeypatch
) -> None:
    import errno

    import proxy.origins.local as local

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local, "write_all", full)
    r = await client.put("/small.txt", content=b"new bytes")
    assert r.status_code == 507 and r.text.startswith("Insufficient Storage")
    assert (origin_dir / "small.txt").read_bytes() == b"hello, edge\n" and leftovers(origin_dir) == []
