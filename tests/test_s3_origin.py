"""An S3 bucket as the origin: a real S3 API server (moto in server mode, on loopback, checking
SigV4 signatures against IAM keys) behind a real edgecache on uvicorn."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from proxy.config import ConfigError, Settings, load_settings
from proxy.origins.s3rules import (
    Address,
    address,
    answer_fields,
    complete_body,
    failure,
    object_key,
    read_fields,
    upload_query,
)
from tests.conftest import RunningServer, pattern

MiB = 1024 * 1024
BUCKET = "media"
pytestmark = pytest.mark.anyio


@dataclasses.dataclass
class S3Server:
    url: str
    key_id: str
    secret: str
    s3: Any  # a boto3 S3 client with valid credentials


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 API on a loopback port, with one IAM user; after set-up every request must be
    signed with that user's key (moto's /moto-api/reset-auth), as AWS would require."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup",
                       aws_secret_access_key="setup")
    iam.create_user(UserName="edge")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="edge", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="edge")["AccessKey"]
    assert httpx.post(url + "/moto-api/reset-auth", content=b"0").status_code == 200
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                      aws_secret_access_key=key["SecretAccessKey"])
    s3.create_bucket(Bucket=BUCKET)
    try:
        yield S3Server(url, key["AccessKeyId"], key["SecretAccessKey"], s3)
    finally:
        s3.close()
        iam.close()
        server.stop()


@pytest.fixture
def s3_settings(settings: Settings, s3_server: S3Server) -> Settings:
    """An edge in front of s3://media/edge, with small blocks and the smallest part size S3 takes."""
    return dataclasses.replace(
        settings, origin=f"s3://{BUCKET}/edge", s3_endpoint_url=s3_server.url,
        s3_access_key_id=s3_server.key_id, s3_secret_access_key=s3_server.secret, s3_part_size=5 * MiB,
        block_size=256 * 1024, cache_size_limit=64 * MiB, max_object_size=32 * MiB, chunk_size=64 * 1024,
        origin_response_timeout=10.0,
    )


@pytest.fixture
def s3_edge(s3_settings: Settings) -> Iterator[RunningServer]:
    with RunningServer(s3_settings) as running:
        yield running


def _never_500(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 500 or response.status_code in (502, 503, 504), response.text
    return response


async def test_full_gets_and_ranges_are_the_objects_exact_bytes(s3_server: S3Server, s3_edge: RunningServer) -> None:
    data = pattern(3 * MiB + 12345, 5)
    s3_server.s3.put_object(Bucket=BUCKET, Key="edge/video/clip.mp4", Body=data, ContentType="video/mp4")
    stored = s3_server.s3.head_object(Bucket=BUCKET, Key="edge/video/clip.mp4")
    async with httpx.AsyncClient(base_url=s3_edge.url) as edge:
        first = await edge.get("/video/clip.mp4")
        assert first.status_code == 200 and first.content == data
        assert first.headers["etag"] == stored["ETag"]
        assert first.headers["content-type"] == "video/mp4"
        assert first.headers["cache-control"] == "public, max-age=3600"  # the configured one: S3 gave none
        assert first.headers["x-cache"] == "MISS"
        assert not any(name.startswith(("x-amz-", "x-amzn-")) for name in first.headers)  # the store's own
        again = await edge.get("/video/clip.mp4")
        assert again.content == data and again.headers["x-cache"] == "HIT"

        for spec, start, end in [("bytes=0-99", 0, 100), ("bytes=262100-262300", 262100, 262301),
                                 ("bytes=-500", len(data) - 500, len(data)), ("bytes=3000000-", 3000000, len(data))]:
            part = await edge.get("/video/clip.mp4", headers={"Range": spec})
            assert part.status_code == 206, spec
            assert part.content == data[start:end], spec
            assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{len(data)}"
        beyond = await edge.get("/video/clip.mp4", headers={"Range": f"bytes={len(data)}-"})
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"

        # A cold object, read from the middle: only ranges of it are asked from the store.
        s3_server.s3.put_object(Bucket=BUCKET, Key="edge/dir/a b ü.bin", Body=data)
        middle = await edge.get("/dir/a%20b%20%C3%BC.bin", headers={"Range": "bytes=1000000-1000009"})
        assert middle.status_code == 206 and middle.content == data[1000000:1000010]
        missing = await edge.get("/video/none.mp4")
        assert missing.status_code == 404
        head = await edge.head("/dir/a%20b%20%C3%BC.bin")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))

        # An empty object: S3 answers a range of it with 416, the edge asks again for the whole.
        s3_server.s3.put_object(Bucket=BUCKET, Key="edge/empty.bin", Body=b"")
        empty = await edge.get("/empty.bin")
        assert empty.status_code == 200 and empty.content == b"" and empty.headers["content-length"] == "0"
        empty_range = await edge.get("/empty.bin", headers={"Range": "bytes=0-5"})
        assert empty_range.status_code == 416 and empty_range.headers["content-range"] == "bytes */0"


async def test_paths_never_leave_the_prefix(s3_server: S3Server, s3_edge: RunningServer) -> None:
    s3_server.s3.put_object(Bucket=BUCKET, Key="private.txt", Body=b"outside the prefix")
    async with httpx.AsyncClient(base_url=s3_edge.url) as edge:
        for path in ("/%2e%2e/private.txt", "/x/..%2F..%2Fprivate.txt", "/.%2E/private.txt"):
            response = _never_500(await edge.get(path))
            assert response.status_code == 400, path
        assert (await edge.get("/private.txt")).status_code == 404
        # Only the range and preconditions reach the store: a client's query or signature cannot.
        s3_server.s3.put_object(Bucket=BUCKET, Key="edge/q.txt", Body=b"the object")
        response = await edge.get("/q.txt?uploads", headers={"Authorization": "AWS4-HMAC-SHA256 forged"})
        assert response.status_code == 200 and response.content == b"the object"


async def test_conditional_requests(s3_server: S3Server, s3_edge: RunningServer) -> None:
    s3_server.s3.put_object(Bucket=BUCKET, Key="edge/cond.bin", Body=b"x" * 5000)
    etag = s3_server.s3.head_object(Bucket=BUCKET, Key="edge/cond.bin")["ETag"]
    async with httpx.AsyncClient(base_url=s3_edge.url) as edge:
        cold = await edge.get("/cond.bin", headers={"If-None-Match": etag})
        assert cold.status_code == 304 and cold.content == b"" and cold.headers["etag"] == etag
        warm = await edge.get("/cond.bin", headers={"If-None-Match": etag})
        assert warm.status_code == 304 and warm.headers["etag"] == etag
        other = await edge.get("/cond.bin", headers={"If-None-Match": '"other"'})
        assert other.status_code == 200 and other.content == b"x" * 5000
        failed = await edge.get("/cond.bin", headers={"If-Match": '"other"'})
        assert failed.status_code == 412


async def test_without_the_cache_every_request_goes_to_the_store(
    s3_server: S3Server, s3_settings: Settings, make_server: Any
) -> None:
    data = pattern(300000, 2)
    s3_server.s3.put_object(Bucket=BUCKET, Key="edge/uncached.bin", Body=data)
    etag = s3_server.s3.head_object(Bucket=BUCKET, Key="edge/uncached.bin")["ETag"]
    edge = make_server(s3_settings, cache_enabled=False)
    async with httpx.AsyncClient(base_url=edge.url) as client:
        whole = await client.get("/uncached.bin")
        assert whole.status_code == 200 and whole.content == data and whole.headers["etag"] == etag
        part = await client.get("/uncached.bin", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == data[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
        assert (await client.get("/uncached.bin", headers={"If-None-Match": etag})).status_code == 304


async def test_an_object_replaced_while_cached_is_served_new_once_stale(
    s3_server: S3Server, s3_edge: RunningServer
) -> None:
    # max-age=0: stored, and revalidated with the store on every request.
    s3_server.s3.put_object(Bucket=BUCKET, Key="edge/live.m3u8", Body=b"version one", CacheControl="max-age=0")
    async with httpx.AsyncClient(base_url=s3_edge.url) as edge:
        first = await edge.get("/live.m3u8")
        assert first.content == b"version one" and first.headers["cache-control"] == "max-age=0"
        second = await edge.get("/live.m3u8")
        assert second.content == b"version one"
        assert "fwd-status=304" in second.headers["cache-status"]  # revalidated, the stored copy served
        s3_server.s3.put_object(Bucket=BUCKET, Key="edge/live.m3u8", Body=b"version two, longer",
                                CacheControl="max-age=0")
        third = await edge.get("/live.m3u8")
        assert third.status_code == 200 and third.content == b"version two, longer"
        assert third.headers["etag"] == s3_server.s3.head_object(Bucket=BUCKET, Key="edge/live.m3u8")["ETag"]


async def _body(size: int, seed: int) -> AsyncIterator[bytes]:
    """`size` bytes of pattern(size, seed), streamed in 1 MiB pieces."""
    data = pattern(size, seed)
    for offset in range(0, size, MiB):
        yield data[offset:offset + MiB]


async def test_a_40mib_upload_streams_into_the_bucket_in_parts(s3_server: S3Server, s3_edge: RunningServer) -> None:
    size = 40 * MiB
    async with httpx.AsyncClient(base_url=s3_edge.url, timeout=60) as edge:
        response = await edge.put("/uploads/big.mp4", content=_body(size, 9), headers={"Content-Type": "video/mp4"})
        assert response.status_code == 201, response.text
        head = s3_server.s3.head_object(Bucket=BUCKET, Key="edge/uploads/big.mp4")
        assert head["ContentLength"] == size and head["ContentType"] == "video/mp4"
        assert head["ETag"].endswith('-8"')  # a multipart upload of 8 parts of 5 MiB
        assert response.json()["etag"] == head["ETag"] and response.json()["size"] == size
        stored = s3_server.s3.get_object(Bucket=BUCKET, Key="edge/uploads/big.mp4")["Body"].read()
        assert hashlib.sha256(stored).digest() == hashlib.sha256(pattern(size, 9)).digest()

        served = await edge.get("/uploads/big.mp4", headers={"Range": "bytes=20971000-20972000"})
        assert served.content == pattern(size, 9)[20971000:20972001]
        # Replaced with a small file: one PUT, and the edge serves the new bytes at once.
        replaced = await edge.put("/uploads/big.mp4", content=b"small now", headers={"Content-Type": "video/mp4"})
        assert replaced.status_code == 200
        assert s3_server.s3.head_object(Bucket=BUCKET, Key="edge/uploads/big.mp4")["ETag"].count("-") == 0
        assert (await edge.get("/uploads/big.mp4")).content == b"small now"

        form = await edge.post("/forms", files={"file": ("clip.mp4", b"multipart form bytes", "video/mp4")})
        assert form.status_code == 201 and form.json()["path"] == "/forms/clip.mp4"
        stored_form = s3_server.s3.get_object(Bucket=BUCKET, Key="edge/forms/clip.mp4")["Body"].read()
        assert stored_form == b"multipart form bytes"
    assert s3_server.s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def _open_uploads(s3_server: S3Server) -> list[str]:
    return [u["Key"] for u in s3_server.s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def _wait_until(condition: Any, what: str) -> None:
    """Poll until `condition()` holds (the edge finishes an aborted upload in its own thread)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


async def test_aborted_uploads_leave_no_multipart_upload_open(
    s3_server: S3Server, s3_settings: Settings, make_server: Any
) -> None:
    edge = make_server(s3_settings, max_upload_size=8 * MiB)
    # A client that goes away after 7 MiB of 8: one part was sent, then the upload is aborted.
    with socket.create_connection(("127.0.0.1", edge.port)) as sock:
        sock.sendall(b"PUT /aborted/gone.bin HTTP/1.1\r\nHost: edge\r\nContent-Length: 8388608\r\n\r\n")
        for piece in range(7):
            sock.sendall(pattern(MiB, piece))
    _wait_until(lambda: _open_uploads(s3_server) == [], "the multipart upload was not aborted")

    async with httpx.AsyncClient(base_url=edge.url, timeout=60) as client:
        too_big = await client.put("/aborted/too-big.bin", content=_body(12 * MiB, 1))
        assert too_big.status_code == 413
    assert _open_uploads(s3_server) == []
    assert s3_server.s3.list_objects_v2(Bucket=BUCKET, Prefix="edge/aborted/").get("Contents", []) == []


async def test_a_missing_bucket_is_a_502_with_the_reason_logged(
    s3_settings: Settings, make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgecache")
    edge = make_server(s3_settings, origin="s3://no-such-bucket/edge")
    async with httpx.AsyncClient(base_url=edge.url) as client:
        response = _never_500(await client.get("/video/clip.mp4"))
        assert response.status_code == 502 and response.text == "Bad Gateway: the S3 origin answered 404 NoSuchBucket\n"
        upload = _never_500(await client.put("/video/new.mp4", content=b"data"))
        assert upload.status_code == 502 and "the bucket does not exist" in upload.text
        assert (await client.get("/_edge/health")).status_code == 503
    assert "the bucket does not exist (404 NoSuchBucket" in caplog.text


@pytest.mark.parametrize("change, reason", [
    ({"s3_secret_access_key": "not-the-secret"}, "SignatureDoesNotMatch"),
    ({"s3_access_key_id": "AKIANOSUCHKEY0000000"}, "InvalidAccessKeyId"),
])
async def test_bad_credentials_are_a_502_with_the_reason_logged(
    s3_server: S3Server, s3_settings: Settings, make_server: Any, caplog: pytest.LogCaptureFixture,
    change: dict[str, str], reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="edgecache")
    s3_server.s3.put_object(Bucket=BUCKET, Key="edge/creds.bin", Body=b"secret bytes")
    edge = make_server(s3_settings, **change)
    async with httpx.AsyncClient(base_url=edge.url) as client:
        response = _never_500(await client.get("/creds.bin"))
        assert response.status_code == 502 and response.text == f"Bad Gateway: the S3 origin answered 403 {reason}\n"
        assert _never_500(await client.head("/creds.bin")).status_code == 502
        upload = _never_500(await client.put("/creds-upload.bin", content=b"data"))
        assert upload.status_code == 502
        assert (await client.get("/_edge/health")).status_code == 503
    assert f"the store refused the edge's credentials (403 {reason}" in caplog.text
    assert "edge/creds-upload.bin" not in str(s3_server.s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


async def test_an_unreachable_endpoint_is_a_502(s3_settings: Settings, make_server: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        edge = make_server(s3_settings, s3_endpoint_url=f"http://127.0.0.1:{port}")
        async with httpx.AsyncClient(base_url=edge.url) as client:
            assert _never_500(await client.get("/a.bin")).status_code == 502
            assert _never_500(await client.put("/a.bin", content=b"x")).status_code == 502
    assert "unreachable: 127.0.0.1: ConnectError" in caplog.text


# --- settings and the pure rules ----------------------------------------------------------


def test_s3_settings() -> None:
    s = load_settings(environ={"EDGECACHE_ORIGIN": "s3://my-videos/edge/v1/", "AWS_ACCESS_KEY_ID": "AKIA1",
                               "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "t0k3n"})
    assert s.s3_location == ("my-videos", "edge/v1/")
    assert (s.s3_access_key_id, s.s3_secret_access_key, s.s3_session_token) == ("AKIA1", "s3cr3t", "t0k3n")
    assert "s3cr3t" not in repr(s) and "t0k3n" not in repr(s)
    assert load_settings(environ={"EDGECACHE_ORIGIN": "s3://my-videos"}).s3_location == ("my-videos", "")
    explicit = load_settings(environ={"EDGECACHE_S3_ACCESS_KEY_ID": "mine", "AWS_ACCESS_KEY_ID": "other"})
    assert explicit.s3_access_key_id == "mine"
    assert load_settings(environ={"EDGECACHE_S3_PART_SIZE": "16MiB"}).s3_part_size == 16 * MiB


@pytest.mark.parametrize("changes, message", [
    ({"origin": "s3://Bad_Bucket"}, "expected s3://BUCKET[/PREFIX] with a valid bucket name"),
    ({"origin": "s3://videos/a/../b"}, "the S3 key prefix is not a clean path"),
    ({"origin": "s3://videos/a//b"}, "the S3 key prefix is not a clean path"),
    ({"origin": "ftp://host/x"}, "only http://, https:// and s3:// URLs or a directory"),
    ({"s3_part_size": 4 * MiB}, "invalid setting 's3_part_size': must be between 5 MiB and 5 GiB"),
    ({"origin": "s3://videos", "s3_part_size": 5 * MiB, "max_upload_size": 60 * 1024**3},
     "10,000 parts must hold max_upload_size"),
    ({"s3_endpoint_url": "minio:9000"}, "invalid setting 's3_endpoint_url'"),
])
def test_invalid_s3_settings(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Settings(cache_size_limit=2**40, **changes)


def test_object_keys_and_requests() -> None:
    assert object_key("edge/", "video/a b.mp4") == "edge/video/a b.mp4"
    assert object_key("", "") is None and object_key("edge/", "x" * 1020) is None
    assert read_fields([("Range", "bytes=0-1"), ("Authorization", "x"), ("x-amz-acl", "public-read"),
                        ("If-None-Match", '"a"'), ("range", "bytes=5-")]) == {"range": "bytes=0-1",
                                                                                "if-none-match": '"a"'}
    assert upload_query("a/b+c=", 3) == "partNumber=3&uploadId=a%2Fb%2Bc%3D"
    assert complete_body(['"e1"', '"e2"']) == (
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;e1&quot;</ETag></Part>"
        b"<Part><PartNumber>2</PartNumber><ETag>&quot;e2&quot;</ETag></Part></CompleteMultipartUpload>")


def test_addresses() -> None:
    assert address("http://127.0.0.1:9000", "media", "us-east-1") == Address("http", "127.0.0.1", 9000, "/media")
    assert address("https://acc.r2.cloudflarestorage.com/", "media", "auto") == Address(
        "https", "acc.r2.cloudflarestorage.com", None, "/media")
    assert address("", "media", "eu-west-3") == Address("https", "media.s3.eu-west-3.amazonaws.com", None, "")
    assert address("", "media.example", "eu-west-3") == Address(
        "https", "s3.eu-west-3.amazonaws.com", None, "/media.example")


def test_answer_fields() -> None:
    fields = [("ETag", '"e"'), ("x-amz-request-id", "1"), ("x-amzn-requestid", "2"), ("x-amz-meta-owner", "me"),
              ("Connection", "close")]
    assert answer_fields(fields, 200, "public, max-age=60") == [
        ("ETag", '"e"'), ("Cache-Control", "public, max-age=60")]
    assert answer_fields([*fields, ("Cache-Control", "no-cache")], 206, "public") == [
        ("ETag", '"e"'), ("Cache-Control", "no-cache")]
    assert answer_fields(fields, 304, "public, max-age=60") == [("ETag", '"e"')]


@pytest.mark.parametrize("status, code, anonymous, expected, words", [
    (404, "NoSuchKey", False, 404, "no such object"),
    (404, None, False, 404, "no such object"),  # a HEAD has no body
    (403, "AccessDenied", True, 404, "not readable anonymously"),
    (403, "AccessDenied", False, 502, "the store denied access"),
    (404, "NoSuchBucket", False, 502, "the bucket does not exist"),
    (403, "SignatureDoesNotMatch", False, 502, "refused the edge's credentials"),
    (403, "ExpiredToken", False, 502, "refused the edge's credentials"),
    (301, "PermanentRedirect", False, 502, "in another region"),
    (400, "AuthorizationHeaderMalformed", False, 502, "in another region"),
    (503, "SlowDown", False, 502, "the store failed (503 SlowDown"),
])
def test_s3_errors(status: int, code: str | None, anonymous: bool, expected: int, words: str) -> None:
    found = failure(status, code, "a message", anonymous)
    assert found.status == expected and words in found.reason and found.reason.endswith(": a message)")
    assert found.answer == (f"{status} {code}" if code else str(status))




class Recorder:
    """An ASGI app standing in for the store, to see exactly what the edge sends it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append((scope["method"], scope["raw_path"].decode() + "?" + scope["query_string"].decode(),
                              headers))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5"), (b"etag", b'"e"')]})
        await send({"type": "http.response.body", "body": b"bytes"})


@pytest.mark.parametrize("credentials", [("AKIAEXAMPLE", "secret", "the-session-token"), ("", "", "")])
async def test_what_the_store_is_sent(s3_settings: Settings, make_server: Any, credentials: tuple[str, ...]) -> None:
    recorder = Recorder()
    with RunningServer(dataclasses.replace(s3_settings, server_name=""), app=recorder) as store:
        key_id, secret, token = credentials
        edge = make_server(s3_settings, s3_endpoint_url=store.url, s3_access_key_id=key_id,
                           s3_secret_access_key=secret, s3_session_token=token, s3_region="eu-west-3")
        async with httpx.AsyncClient(base_url=edge.url) as client:
            response = await client.get("/a%20b/%C3%BC.bin?versionId=1&uploads", headers={
                "Authorization": "Bearer client", "x-amz-server-side-encryption": "AES256", "Cookie": "c=1",
                "Range": "bytes=0-2", "If-None-Match": '"x"'})
            assert response.status_code == 206 and response.content == b"byt"
    method, path, headers = recorder.requests[0]
    assert (method, path) == ("GET", "/media/edge/a%20b/%C3%BC.bin?")  # no query: it could name other things
    assert headers["range"].startswith("bytes=0-")
    assert "cookie" not in headers and "x-amz-server-side-encryption" not in headers
    if key_id:
        assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={key_id}/")
        assert "/eu-west-3/s3/aws4_request, SignedHeaders=" in headers["authorization"]
        signed = headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        assert {"host", "range", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"} <= set(signed)
        assert headers["x-amz-security-token"] == token
        assert headers["x-amz-content-sha256"] == hashlib.sha256(b"").hexdigest()
    else:
        assert "authorization" not in headers and "x-amz-security-token" not in headers


async def test_the_type_of_an_upload_comes_from_its_name(s3_server: S3Server, s3_edge: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=s3_edge.url) as edge:
        put = await edge.put("/films/clip.mp4", content=b"not html", headers={"Content-Type": "text/html"})
        form = await edge.post("/films", files={"file": ("other.mp4", b"<script>", "text/html")})
        assert (put.status_code, form.status_code) == (201, 201)
        for key in ("edge/films/clip.mp4", "edge/films/other.mp4"):
            assert s3_server.s3.head_object(Bucket=BUCKET, Key=key)["ContentType"] == "video/mp4", key
        assert (await edge.get("/films/other.mp4")).headers["content-type"] == "video/mp4"
