"""PUT /<path> with the raw body, or POST /<folder> multipart with the field `file`: the upload
streamed to the origin, answered with where it now is."""
from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ..config import Settings
from ..origins.base import OriginError
from ..request.paths import url_path
from ..request.target import target_of
from ..server.texts import REASONS, gone, text
from ..service import EdgeService
from .guard import WriteGuard
from .uploads import MultipartFile, UploadError, check_declared_length, file_name, limited, upload_folder, upload_path


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


class UploadRoute:
    def __init__(self, settings: Settings, service: EdgeService, guard: WriteGuard) -> None:
        self.settings = settings
        self.service = service
        self.guard = guard

    async def __call__(self, request: Request, decoded: str) -> Response:
        """An upload to `decoded` (the request's path, decoded)."""
        refusal = self.guard.refusal(request)
        if refusal is not None:
            return refusal
        settings = self.settings
        limit = settings.max_upload_size
        try:
            check_declared_length(request.headers.get("content-length"), limit)
            # The whole request body is bounded in size (and in time, by the server: client_body_timeout):
            # a multipart body's preamble and other fields too, not only the file.
            received = limited(request.stream(), limit)
            if request.method == "POST":
                upload_folder(decoded)  # refused before the body is read
                form = MultipartFile(received, request.headers["content-type"])
                name = file_name(await form.open())
                path = upload_path(decoded.rstrip("/") + "/" + name, settings.extensions)
                body, length = form.chunks(), None
            else:
                path = upload_path(decoded, settings.extensions)
                declared = request.headers.get("content-length", "")
                body, length = received, int(declared) if declared.isdigit() else None
            query = request.scope.get("query_string", b"").decode("latin-1")
            uploaded = await self.service.upload(target_of(path, query), body, length)
        except UploadError as e:
            return text(e.status, f"{REASONS.get(e.status, 'Bad Request')}: {e}")
        except ClientDisconnect:
            return gone(request, "during the upload")
        except OriginError as e:
            return text(e.status, f"{REASONS[e.status]}: the origin failed during the upload ({e.kind})")
        if not 200 <= uploaded.status < 300:
            return text(uploaded.status, f"The origin refused the upload ({uploaded.status}): {uploaded.detail}")
        base = self.guard.public_base(request, settings.public_base_url)
        url = base + url_path(path)
        answer = {"url": url, "path": "/" + path, "size": uploaded.size, "etag": uploaded.etag,
                  "content_type": uploaded.content_type}
        folder, _, name = path.rpartition("/")
        if settings.compat_routes and folder == "video":
            answer = {"video_url": f"{base}/get_video_by_name{url_path(name)}", **answer}
        return JSONResponse(answer, status_code=uploaded.status, headers={"Location": url})
