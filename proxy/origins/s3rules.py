"""The S3 API's rules as the S3 origin needs them (pure, stdlib only): object keys, which
fields go to and come back from the store, and what an S3 error means for the client."""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ..http.directives import Headers, get
from ..http.headers import end_to_end

MAX_KEY_BYTES = 1024  # S3's limit on an object key, in UTF-8 bytes

# Request fields the store understands for a read (RFC 9110 sections 13.1 and 14.2); nothing
# else a client sends (Authorization, Cookie, x-amz-*) reaches it or changes the signature.
_READ_FIELDS = frozenset({"range", "if-range", "if-match", "if-none-match", "if-modified-since",
                          "if-unmodified-since"})
# Errors that say the edge's own credentials are wrong, not that the object is missing.
_CREDENTIAL_ERRORS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                                "TokenRefreshRequired", "InvalidSecurity"})


@dataclass(frozen=True)
class Address:
    """Where a bucket's requests go: scheme, host, port (None: the scheme's) and the path
    every key's path starts with."""

    scheme: str
    host: str
    port: int | None
    base_path: str


def address(endpoint_url: str, bucket: str, region: str) -> Address:
    """A configured endpoint is asked path-style (`/BUCKET/KEY`: what MinIO, Ceph RGW and a
    local endpoint need, and R2 accepts); AWS virtual-hosted style, `BUCKET.s3.REGION...`,
    except for a bucket name with dots, which no wildcard certificate covers (path-style)."""
    if endpoint_url:
        url = urlsplit(endpoint_url)
        return Address(url.scheme, url.hostname or "", url.port, url.path.rstrip("/") + "/" + bucket)
    if "." in bucket:
        return Address("https", f"s3.{region}.amazonaws.com", None, "/" + bucket)
    return Address("https", f"{bucket}.s3.{region}.amazonaws.com", None, "")


def object_key(prefix: str, path: str) -> str | None:
    """The key of a cleaned relative path ('video/a.mp4', see paths.clean_path) below the
    prefix ('edge/' or ''), or None when no object can have it (the root, too long)."""
    key = prefix + path
    if not path or len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        return None
    return key


def key_path(key: str) -> str:
    """A key as a URL path segment sequence: every byte but unreserved ones and '/' percent-encoded
    (the URI encoding SigV4 signs for S3)."""
    return quote(key.encode("utf-8", "surrogateescape"), safe="/-_.~")


def upload_query(upload_id: str, part: int | None = None) -> str:
    """The query naming a multipart upload (and one of its parts), every value URI-encoded as
    SigV4 signs it."""
    query = f"uploadId={quote(upload_id, safe='-_.~')}"
    return query if part is None else f"partNumber={part}&{query}"


def read_fields(headers: Headers) -> dict[str, str]:
    """The fields of a read the store is asked with: range and preconditions, the first of each."""
    kept: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in _READ_FIELDS and lower not in kept:
            kept[lower] = value
    return kept


def answer_fields(headers: Headers, status: int, cache_control: str) -> Headers:
    """The store's response fields as the edge passes them on: end-to-end fields without the
    store's own `x-amz-*` and `x-amzn-*` (request ids, user metadata, encryption details); the configured
    Cache-Control when the object has none (not on a 304, which updates the stored fields:
    RFC 9111 section 4.3.4)."""
    kept = [(n, v) for n, v in end_to_end(headers) if not n.lower().startswith(("x-amz-", "x-amzn-"))]
    if cache_control and status != 304 and get(kept, "cache-control") is None:
        kept.append(("Cache-Control", cache_control))
    return kept


def xml_field(document: str, name: str) -> str | None:
    """The text of the first <name> element of a small S3 XML answer, entities decoded.
    A pattern, not an XML parser: S3 answers are flat, and no entity is ever expanded."""
    found = re.search(rf"<{name}>([^<]*)</{name}>", document)
    return html.unescape(found.group(1)) if found else None


def complete_body(etags: list[str]) -> bytes:
    """The CompleteMultipartUpload document listing the parts, numbered from 1, in order."""
    parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{html.escape(etag)}</ETag></Part>"
                    for n, etag in enumerate(etags, 1))
    return f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()


@dataclass(frozen=True)
class Failure:
    """What an S3 error answer means: the status the client gets, and the reason for the log."""

    status: int
    reason: str  # for the log
    answer: str  # what the store said, for the client: '403 SignatureDoesNotMatch'


def failure(status: int, code: str | None, message: str | None, anonymous: bool) -> Failure:
    """An S3 error answer (not 2xx, 304 or 412) as a client status: a missing object is 404 (an
    anonymous reader is told 403 for it when the bucket does not allow listing); anything else
    (a missing bucket, refused credentials, a bucket in another region, a failing store) is a
    502 with the reason."""
    answer = f"{status} {code}" if code else str(status)
    detail = answer + (f": {message}" if message else "")

    def meaning(client_status: int, reason: str) -> Failure:
        return Failure(client_status, f"{reason} ({detail})", answer)

    if status == 404 and code in (None, "NoSuchKey"):
        return meaning(404, "no such object")
    if status == 403 and anonymous and code in (None, "AccessDenied"):
        return meaning(404, "not readable anonymously")
    if code == "NoSuchBucket":
        return meaning(502, "the bucket does not exist")
    if code in _CREDENTIAL_ERRORS:
        return meaning(502, "the store refused the edge's credentials")
    if status == 403:
        return meaning(502, "the store denied access")
    if status in (301, 307) or code in ("PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed"):
        return meaning(502, "the bucket is in another region or at another endpoint")
    return meaning(502, "the store failed")
