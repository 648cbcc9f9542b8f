"""Upload failures are answered with the right status and a reason, never a 500, and leave no trace."""
from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer
from tests.test_server import exchange
from tests.test_uploads import leftovers, tree

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "method, path, blocking",
    [
        ("PUT", "/video/clip.mp4/x.mp4", "video/clip.mp4"),  # FileExistsError from makedirs before
        ("PUT", "/small.txt/a/b.mp4", "small.txt"),  # NotADirectoryError before
        ("POST", "/video/clip.mp4", "video/clip.mp4"),  # multipart into a "folder" that is a file
        ("PUT", "/inside-link.txt/x.mp4", "inside-link.txt"),  # a link to a file is a file too
    ],
)
def test_a_file_in_the_way_of_a_folder_is_409(server: RunningServer, origin_dir: Path, method: str, path: str,
                                                blocking: str) -> None:
    before = tree(origin_dir.parent)
    if method == "POST":
        r = httpx.post(server.url + path, files={"file": ("x.mp4", b"data", "video/mp4")})
    else:
        r = httpx.put(server.url + path, content=b"data")
    assert (r.status_code, r.text) == (409, f"Conflict: a file is in the way of the folder '{blocking}'\n")
    assert tree(origin_dir.parent) == before


def test_folders_are_not_created_outside_the_origin(server: RunningServer, origin_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", origin_dir / "out")
    r = httpx.put(server.url + "/out/new/x.mp4", content=b"data")
    assert (r.status_code, r.text) == (400, "Bad Request: the folder is outside the origin\n")
    assert list((tmp_path / "elsewhere").iterdir()) == []  # before: 'new' was created there


@pytest.fixture
def read_only(origin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The origin as a read-only mount would behave (the tests run as root, so chmod cannot
    show it): every call that would change something below the root fails with EROFS,
    the unlink of a file that does not exist included."""
    root = str(origin_dir)
    real_open, real_mkdir, real_unlink, real_replace = os.open, os.mkdir, os.unlink, os.replace

    def below(path: object) -> bool:
        return isinstance(path, str | os.PathLike) and os.path.abspath(os.fspath(path)).startswith(root + os.sep)

    def deny(path: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))  # type: ignore[arg-type]

    def fake_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if below(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            deny(path)
        return real_open(path, flags, *args, **kwargs)

    def guard(real):  # type: ignore[no-untyped-def]
        def call(path, *args, **kwargs):  # type: ignore[no-untyped-def]
            if below(path):
                deny(path)
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", guard(real_mkdir))
    monkeypatch.setattr(os, "unlink", guard(real_unlink))
    monkeypatch.setattr(os, "replace", guard(real_replace))
    yield


@pytest.mark.parametrize("path", ["/small.txt", "/new.mp4", "/new/folder/x.mp4"])
def test_a_read_only_origin_is_503_with_the_reason(server: RunningServer, origin_dir: Path, read_only: None,
                                                    path: str) -> None:
    before = tree(origin_dir)
    r = httpx.put(server.url + path, content=b"data")
    assert (r.status_code, r.text) == (
        503, "Service Unavailable: the origin directory is not writable (Read-only file system)\n")
    form = httpx.post(server.url + "/video", files={"file": ("x.mp4", b"data", "video/mp4")})
    assert form.status_code == 503 and "not writable" in form.text
    assert tree(origin_dir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_directory_without_write_permission_is_503(server: RunningServer, origin_dir: Path) -> None:
    os.chmod(origin_dir, 0o555)
    try:
        r = httpx.put(server.url + "/small.txt", content=b"data")
    finally:
        os.chmod(origin_dir, 0o755)
    assert (r.status_code, r.text) == (
        503, "Service Unavailable: the origin directory is not writable (Permission denied)\n")


@pytest.mark.parametrize(
    "method, path",
    [("PUT", "/_edge/x.mp4"), ("PUT", "/_edge/purge"), ("PUT", "/_edge/health"), ("POST", "/_edge/uploads"),
     ("PUT", "/assets/_edge/x.mp4"), ("PUT", "//_edge/x.mp4")],
)
def test_uploads_under_edge_are_400_with_the_reason(server: RunningServer, origin_dir: Path, method: str,
                                                     path: str) -> None:
    if method == "POST":
        raw = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.mp4\"\r\n\r\ndata\r\n--B--\r\n")
        head = f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=B\r\n"
    else:
        raw = b"data"
        head = f"PUT {path} HTTP/1.1\r\nHost: a\r\n"
    answer = exchange(server, head.encode() + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(raw) + raw)
    status, _, body = answer.partition(b"\r\n")[0], None, answer.partition(b"\r\n\r\n")[2]
    assert (status, body) == (b"HTTP/1.1 400 Bad Request", b"Bad Request: '/_edge/' is reserved\n")
    assert not (origin_dir / "_edge").exists()


def test_upload_under_edge_still_needs_write_permission(settings, make_server) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, write_tokens="t")
    assert httpx.put(edge.url + "/_edge/x.mp4", content=b"x").status_code == 401
    r = httpx.put(edge.url + "/_edge/x.mp4", content=b"x", headers={"Authorization": "Bearer t"})
    assert r.status_code == 400


@pytest.mark.parametrize(
    "preamble",
    [
        b"",  # nothing after the headers
        b"--B\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nab",  # inside a field before the file
        b"--B\r\nContent-Disposition: form-data; name=\"file\"; filen",  # inside the file part's headers
    ],
    ids=["no-body", "in-a-field", "in-file-headers"],
)
def test_a_stalled_multipart_preamble_is_dropped(settings, make_server, origin_dir: Path, preamble: bytes) -> None:  # type: ignore[no-untyped-def]
    server = make_server(settings, client_body_timeout=0.5)
    # The answer names the timeout that ended the wait; without it recv would time out and raise.
    with socket.create_connection(("127.0.0.1", server.port), timeout=8) as s:
        s.sendall(b"POST /video HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                  b"Content-Length: 100000\r\n\r\n" + preamble)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert answer.endswith(b"\r\n\r\nRequest Timeout: the request body stopped coming (client_body_timeout 0.5 s, "
                           b"client_body_min_rate 256 B/s)\n")
    assert b"\r\nconnection: close\r\n" in answer
    assert leftovers(origin_dir) == []


def test_non_file_fields_count_against_the_size_limit(settings, make_server, origin_dir: Path) -> None:  # type: ignore[no-untyped-def]
    edge = make_server(settings, max_upload_size=1000)

    def body() -> Iterator[bytes]:  # streamed without Content-Length
        yield b"--B\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n"
        for _ in range(50):
            yield b"n" * 100
        yield b"\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.mp4\"\r\n\r\nsmall\r\n--B--\r\n"

    r = httpx.post(edge.url + "/video", content=body(), headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert (r.status_code, r.text) == (413, "Content Too Large: uploads are limited to 1000 bytes\n")

    def trailing() -> Iterator[bytes]:  # fields after the file count too
        yield b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.mp4\"\r\n\r\nsmall\r\n"
        yield b"--B\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n"
        for _ in range(50):
            yield b"n" * 100
        yield b"\r\n--B--\r\n"

    r = httpx.post(edge.url + "/video", content=trailing(), headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert (r.status_code, r.text) == (413, "Content Too Large: uploads are limited to 1000 bytes\n")
    assert not (origin_dir / "video" / "f.mp4").exists() and leftovers(origin_dir) == []
    ok = httpx.post(edge.url + "/video", files={"file": ("f.mp4", b"x" * 500)}, data={"note": "short"})
    assert ok.status_code == 201


async def test_temp_files_are_created_and_removed_off_the_event_loop(  # type: ignore[no-untyped-def]
    client: httpx.AsyncClient, origin_dir: Path, monkeypatch
) -> None:
    import proxy.origins.local as local

    loop_thread = threading.current_thread()
    calls: list[tuple[str, threading.Thread]] = []
    real_open, real_unlink = os.open, os.unlink

    def spy_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).endswith(".upload"):
            calls.append(("open", threading.current_thread()))
        return real_open(path, *args, **kwargs)

    def spy_unlink(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).endswith(".upload"):
            calls.append(("unlink", threading.current_thread()))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "unlink", spy_unlink)
    assert (await client.put("/ok.mp4", content=b"x")).status_code == 201

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local, "write_all", full)
    assert (await client.put("/full.mp4", content=b"x")).status_code == 507
    assert [name for name, _ in calls] == ["open", "open", "unlink"]
    assert all(thread is not loop_thread for _, thread in calls)
    assert leftovers(origin_dir) == []


def test_an_upload_to_a_missing_origin_directory_is_refused(settings, make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A network mount not up yet: a file written into an empty mount point would be hidden by the mount."""
    missing = tmp_path / "mount"
    edge = make_server(settings, origin=str(missing))
    answer = httpx.put(edge.url + "/films/a.mp4", content=b"x")
    assert (answer.status_code, answer.text) == (503, "Service Unavailable: origin directory missing\n")
    answer = httpx.post(edge.url + "/video", files={"file": ("a.mp4", b"x")})
    assert answer.status_code == 503
    assert not missing.exists()
