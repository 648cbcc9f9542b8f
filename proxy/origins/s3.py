"""An S3-compatible object store (AWS, MinIO, Ceph RGW, R2) as the origin: objects below a key
prefix, read with ranged GETs and written with streamed PUTs or multipart uploads, every
request SigV4-signed by botocore over one pooled httpx client."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator

import anyio
import httpx
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ..http.directives import Headers, get
from ..http.headers import content_type_for
from ..writes.uploads import UploadError
from .base import OriginError, OriginResponse, Target, Uploaded, text_response
from .local import SANDBOX, active_content
from .pool import OriginPool, Timeouts
from .s3rules import (
    Failure,
    address,
    answer_fields,
    complete_body,
    failure,
    key_path,
    object_key,
    read_fields,
    upload_query,
    xml_field,
)
from .upstream import KEEPALIVE_EXPIRY, body_of, send

log = logging.getLogger("edgecache")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_XML = 64 * 1024  # bytes of an S3 XML answer (an error, an upload id) read at most


class _Signer(S3SigV4Auth):  # type: ignore[misc]
    """botocore's S3 SigV4 signer, given the payload's SHA-256 (the edge hashes a part's chunks
    in a thread; botocore would want them as one body to hash on the event loop)."""

    def payload(self, request: AWSRequest) -> str:
        return str(request.context["payload_sha256"])


class _Refused(Exception):
    """The store answered an upload step with an error."""

    def __init__(self, found: Failure) -> None:
        super().__init__(found.reason)
        self.failure = found


class S3Origin:
    kind = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str,
        region: str,
        credentials: tuple[str, str, str],
        part_size: int,
        cache_control: str,
        connect_timeout: float,
        read_timeout: float,
        response_timeout: float,
        max_connections: int = 100,
    ) -> None:
        self.prefix = prefix
        self.part_size = part_size
        self.cache_control = cache_control
        self.response_timeout = response_timeout
        self.address = address(endpoint_url, bucket, region)
        key_id, secret, token = credentials
        self.signer = _Signer(Credentials(key_id, secret, token or None), "s3", region) if key_id else None
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout)
        self.pool = OriginPool(max_connections, KEEPALIVE_EXPIRY, Timeouts.of(timeout))
        self.client = httpx.AsyncClient(  # builds the requests; upstream.send sends them on the pool
            timeout=timeout,
            transport=self.pool,
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: only the configured endpoint
        )
        self.client.headers.clear()  # only the fields the origin's requests set (upstream.py)

    def cache_key(self, target: Target) -> str:
        return "/" + target.path  # the query names no other object: it is not sent

    def location_key(self, location: str) -> str | None:
        return None  # the edge sends no writes that answer with a Location to the store

    async def _send(self, method: str, key: str, query: str = "", headers: dict[str, str] | None = None,
                    body: list[bytes] | None = None) -> httpx.Response:
        """Sign and send a request about `key` ('' for the bucket); the body is a list of chunks,
        sent as they are (a streamed part is never joined into one copy)."""
        headers = dict(headers or {})
        digest = EMPTY_SHA256
        if body is not None:
            digest = await anyio.to_thread.run_sync(_sha256, body)  # megabytes: not on the event loop
            headers["Content-Length"] = str(sum(map(len, body)))
        where = self.address
        path = where.base_path + "/" + key_path(key) if key else where.base_path or "/"
        raw_path = (path + (f"?{query}" if query else "")).encode("ascii")
        url = httpx.URL(scheme=where.scheme, host=where.host, port=where.port, raw_path=raw_path)
        if self.signer is not None:
            signing = AWSRequest(method=method, url=str(url), headers=headers)
            signing.context["payload_sha256"] = digest
            self.signer.add_auth(signing)
            headers = dict(signing.headers.items())
        request = self.client.build_request(method, url, headers=headers,
                                            content=None if body is None else _chunks(body))
        return await send(self.pool, request, self.response_timeout, body is not None)

    async def _error(self, response: httpx.Response) -> Failure:
        """The meaning of an error answer (its body read up to MAX_XML bytes), logged; closes it."""
        text = (await _read_some(response)).decode("utf-8", "replace")
        found = failure(response.status_code, xml_field(text, "Code"), xml_field(text, "Message"),
                        anonymous=self.signer is None)
        level = logging.INFO if found.status == 404 else logging.WARNING
        log.log(level, "S3 origin: %s %s: %s", response.request.method, response.request.url.path, found.reason)
        return found

    async def request(
        self, method: str, target: Target, headers: Headers, body: AsyncIterator[bytes] | None = None
    ) -> OriginResponse:
        """A GET or HEAD of the object, with the client's range and preconditions."""
        if method not in ("GET", "HEAD"):
            return text_response(405, "Method Not Allowed", [("Allow", "GET, HEAD")])
        key = object_key(self.prefix, target.path)
        if key is None:
            return text_response(404, "Not Found")
        response = await self._send(method, key, headers=read_fields(headers))
        status = response.status_code
        if status not in (200, 206, 304, 412, 416):
            found = await self._error(response)
            return text_response(found.status, "Not Found" if found.status == 404 else
                                 f"Bad Gateway: the S3 origin answered {found.answer}")
        fields = answer_fields([(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw],
                               status, self.cache_control)
        if status in (412, 416):  # the store's XML error body is not the client's
            await response.aclose()
            kept = [(n, v) for n, v in fields if n.lower() in ("etag", "last-modified", "content-range")]
            return text_response(status, "Precondition Failed" if status == 412 else "Range Not Satisfiable", kept)
        if active_content(get(fields, "content-type") or ""):
            fields.append(SANDBOX)  # as a directory origin's: an uploaded page runs in an opaque origin
        return OriginResponse(status, fields, body_of(response.aiter_raw()), response.aclose)

    async def upload(
        self, target: Target, chunks: AsyncIterator[bytes], length: int | None
    ) -> Uploaded:
        """Stream the body into the bucket: one PUT when it is smaller than a part, else a
        multipart upload sending each part as it fills, so at most one part is held in memory.
        A multipart upload that does not complete (the client goes, the body is too big or
        idle, a part is refused) is aborted, leaving nothing stored."""
        key = object_key(self.prefix, target.path)
        if key is None:
            raise UploadError(400, "the name is too long for the object store")
        media = content_type_for(target.path)
        try:
            existed = await self._exists(key)
            upload_id: str | None = None
            part: list[bytes] = []
            filled = size = 0
            etags: list[str] = []
            try:
                async for chunk in chunks:
                    part.append(chunk)
                    filled += len(chunk)
                    size += len(chunk)
                    if filled >= self.part_size:
                        if upload_id is None:
                            upload_id = await self._start(key, media)
                        etags.append(await self._part(key, upload_id, len(etags) + 1, part))
                        part, filled = [], 0
                if upload_id is None:
                    etag = await self._put(key, media, part)
                else:
                    if part:
                        etags.append(await self._part(key, upload_id, len(etags) + 1, part))
                    etag = await self._complete(key, upload_id, etags)
            except BaseException:
                if upload_id is not None:
                    with anyio.CancelScope(shield=True):
                        await self._abort(key, upload_id)
                raise
        except _Refused as e:
            return Uploaded(e.failure.status if e.failure.status != 404 else 502, 0, None, media, e.failure.reason)
        return Uploaded(200 if existed else 201, size, etag, media)

    async def _exists(self, key: str) -> bool:
        """Whether the key holds an object now (for 200 or 201); asked first, it also checks the
        bucket and the credentials before the body is read."""
        response = await self._send("HEAD", key)
        if response.status_code not in (200, 404):
            raise _Refused(await self._error(response))
        await response.aclose()
        return response.status_code == 200

    async def _put(self, key: str, media: str, body: list[bytes]) -> str | None:
        response = await self._send("PUT", key, headers={"Content-Type": media}, body=body)
        return await self._etag(response)

    async def _start(self, key: str, media: str) -> str:
        response = await self._send("POST", key, "uploads", {"Content-Type": media}, body=[])
        document = await self._document(response)
        upload_id = xml_field(document, "UploadId")
        if not upload_id:
            raise _Refused(Failure(502, "the store's CreateMultipartUpload answer has no UploadId", "200"))
        return upload_id

    async def _part(self, key: str, upload_id: str, number: int, body: list[bytes]) -> str:
        response = await self._send("PUT", key, upload_query(upload_id, number), body=body)
        etag = await self._etag(response)
        if etag is None:
            raise _Refused(Failure(502, f"the store's answer to part {number} has no ETag", "200"))
        return etag

    async def _complete(self, key: str, upload_id: str, etags: list[str]) -> str | None:
        response = await self._send("POST", key, upload_query(upload_id),
                                    {"Content-Type": "application/xml"}, [complete_body(etags)])
        return xml_field(await self._document(response), "ETag")

    async def _abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload; a failure is logged (the bucket's lifecycle rules are the
        last resort for parts left behind)."""
        try:
            response = await self._send("DELETE", key, upload_query(upload_id))
            await response.aclose()
            if response.status_code not in (204, 404):
                log.warning("S3 origin: aborting the upload of %s failed: %s", key, response.status_code)
        except OriginError as e:
            log.warning("S3 origin: aborting the upload of %s failed: %s", key, e)

    async def _etag(self, response: httpx.Response) -> str | None:
        if response.status_code != 200:
            raise _Refused(await self._error(response))
        await response.aclose()
        etag: str | None = response.headers.get("etag")
        return etag

    async def _document(self, response: httpx.Response) -> str:
        """The XML answer of a 200; S3 may also report a failure inside a 200 (an <Error> root)."""
        if response.status_code != 200:
            raise _Refused(await self._error(response))
        document = (await _read_some(response)).decode("utf-8", "replace")
        if "<Error>" in document:
            code = xml_field(document, "Code")
            raise _Refused(failure(500, code, xml_field(document, "Message"), anonymous=self.signer is None))
        return document

    async def healthy(self) -> bool:
        """The bucket answers (HeadBucket; an anonymous reader may be refused the listing)."""
        try:
            response = await self._send("HEAD", "")
        except OriginError:
            return False
        await response.aclose()
        return response.status_code == 200 or (response.status_code == 403 and self.signer is None)

    async def aclose(self) -> None:
        await self.client.aclose()


def _sha256(body: list[bytes]) -> str:
    hashed = hashlib.sha256()
    for chunk in body:
        hashed.update(chunk)
    return hashed.hexdigest()


async def _chunks(body: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in body:
        yield chunk


async def _read_some(response: httpx.Response) -> bytes:
    """Up to MAX_XML bytes of a response's body; the response is closed."""
    data = b""
    try:
        async for chunk in body_of(response.aiter_raw()):
            data += chunk[: MAX_XML - len(data)]
            if len(data) >= MAX_XML:
                break
    finally:
        await response.aclose()
    return data
