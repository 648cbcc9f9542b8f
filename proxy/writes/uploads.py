"""Uploads: names checked, multipart parsed as a stream, sizes enforced while streaming."""
from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.multipart import MultipartParser, parse_options_header

from ..request.paths import MAX_SEGMENT_BYTES, BadPath, HiddenPath, clean_path

RESERVED = ("_edge",)


class UploadError(Exception):
    """An upload refused with a 4xx (or 507) status; the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def upload_folder(url_path: str) -> str:
    """The relative folder a multipart upload to `url_path` writes into ('' for the root),
    checked before the body is read; UploadError(400) saying why it cannot be."""
    try:
        path = clean_path(url_path)
    except BadPath as e:
        raise UploadError(400, str(e)) from None
    except HiddenPath:
        raise UploadError(400, "names starting with '.' are not allowed") from None
    if path.split("/", 1)[0] in RESERVED:
        raise UploadError(400, "'/_edge/' is reserved")
    return path


def upload_path(url_path: str, extensions: tuple[str, ...]) -> str:
    """The relative path an upload to `url_path` writes, or UploadError(400/415)."""
    if url_path.endswith("/"):
        raise UploadError(400, "an upload names a file, not a folder")
    path = upload_folder(url_path)
    if not path:
        raise UploadError(400, "an upload needs a file name")
    if extensions and not path.lower().endswith(extensions):
        raise UploadError(415, f"only {', '.join(extensions)} files may be uploaded")
    return path


def file_name(name: str) -> str:
    """A multipart filename as one safe path segment, or UploadError(400)."""
    if not name or "/" in name or "\\" in name:
        raise UploadError(400, "the file name must be a plain name, without folders")
    if name in (".", "..") or name.startswith("."):
        raise UploadError(400, "names starting with '.' are not allowed")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise UploadError(400, "control characters are not allowed in names")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES:
        raise UploadError(400, "file name too long")
    return name


async def limited(chunks: AsyncIterator[bytes], max_size: int) -> AsyncIterator[bytes]:
    """The chunks; UploadError(413) as soon as they exceed max_size bytes. (A body that stops
    coming is the server's to time out: client_body_timeout.)"""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_size:
            raise UploadError(413, f"uploads are limited to {max_size} bytes")
        yield chunk


def check_declared_length(length: str | None, max_size: int) -> None:
    """Refuse a too-large upload before reading it (Content-Length)."""
    if length is not None and length.strip().isdigit() and int(length) > max_size:
        raise UploadError(413, f"uploads are limited to {max_size} bytes")


class MultipartFile:
    """The file field of a multipart/form-data body, parsed as it streams.

    Only the bytes of the current request chunk are held: memory does not grow
    with the upload. Other fields are skipped; a body that ends early is refused.
    """

    def __init__(self, body: AsyncIterator[bytes], content_type: str, field: str = "file") -> None:
        kind, params = parse_options_header(content_type.encode("latin-1"))
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise UploadError(400, "expected multipart/form-data with a boundary")
        self.body = aiter(body)
        self.field = field.encode()
        self.filename: str | None = None
        self._pending: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._name = self._value = b""
        self._in_file = self._file_done = self._ended = False
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._grow("_name", d[s:e]),
                "on_header_value": lambda d, s, e: self._grow("_value", d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_count=16,
        )

    def _grow(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + bytes(data))

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name = self._value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") == self.field and b"filename" in params and self.filename is None:
            self.filename = params[b"filename"].decode("utf-8", "replace")
            self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._pending.append(bytes(data[start:end]))

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self._file_done = True

    def _end(self) -> None:
        self._ended = True

    async def _feed(self) -> bool:
        """Parse one more chunk of the body; False when the body has ended."""
        chunk = await anext(self.body, None)
        if chunk is None:
            return False
        try:
            self.parser.write(chunk)
        except Exception as e:  # noqa: BLE001 - the parser's errors are the client's
            raise UploadError(400, f"malformed multipart body: {e}") from None
        return True

    async def open(self) -> str:
        """Read up to the file field's data; its filename."""
        while self.filename is None:
            if self._ended or not await self._feed():
                raise UploadError(400, f"no file in the multipart field '{self.field.decode()}'")
        return self.filename

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes; then the rest of the body is read to check it is complete."""
        while True:
            while self._pending:
                yield self._pending.pop(0)
            if self._file_done:
                break
            if not await self._feed():
                raise UploadError(400, "the multipart body ended before the file did")
        while not self._ended:
            if not await self._feed():
                raise UploadError(400, "the multipart body ended early")
