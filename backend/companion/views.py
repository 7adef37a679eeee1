"""The `/s3/multipart` routes `@uppy/aws-s3` calls in Companion mode, answering in Companion's shapes.

A thin door onto the same services as GraphQL's direct uploads (`services/direct*.py`), so an Uppy
upload is an ordinary DIRECT FileUpload with the same ledger, checks and live progress. Uppy tells
the server neither the size nor part checksums: its upload's size is fixed at completion, from the
parts it lists (each checked in the bucket by size and ETag). `uploadId` in these routes is the
FileUpload's id and `key` its `storageKey`; an upload that is not the caller's, or a key that is not
its own, answers 404. Credentials as on `/graphql` (bearer token, or the session with `X-CSRFToken`
on POST and DELETE); refusals are the contract's JSON error body with the status `STATUS_FOR` names.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from backend.http_errors import error_response
from backend.tokens.services import token_user
from backend.uploads.errors import InvalidState, NotFound, UploadError
from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.selectors import upload_get_for_user
from backend.uploads.services import upload_cancel
from backend.uploads.services.direct import PartToSign, direct_create, direct_offered, direct_sign, sha256_check
from backend.uploads.services.direct_parts import direct_complete, direct_parts_listed

logger = logging.getLogger(__name__)

# The HTTP status of each domain error on these routes (CONTRACT section 4). INVALID_STATE is 409,
# not GraphQL's 200: a Companion client reads any 2xx as success.
STATUS_FOR = {
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "BAD_USER_INPUT": 400,
    "INVALID_STATE": 409,
    "FILE_TOO_LARGE": 413,
    "QUOTA_EXCEEDED": 413,
    "TOO_MANY_ACTIVE_UPLOADS": 429,
    "CHECKSUM_MISMATCH": 400,
    "SERVICE_UNAVAILABLE": 503,
}

View = Callable[..., HttpResponse]


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.response = error_response(status, code, message)


def _user(request: HttpRequest) -> User:
    """The caller: a bearer token decides; else the session, whose POST and DELETE need X-CSRFToken."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        user = token_user(token=token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if user is None:
            raise _Refused(401, "UNAUTHENTICATED", "the bearer token is invalid, expired or revoked")
        return user
    session_user = getattr(request, "user", None)
    if session_user is None or not session_user.is_authenticated:
        raise _Refused(401, "UNAUTHENTICATED", "authentication required: send Authorization: Bearer <token>")
    if request.method in ("POST", "DELETE"):
        if not request.headers.get("X-CSRFToken"):
            raise _Refused(403, "FORBIDDEN", "a session request must carry X-CSRFToken")
        if CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, None, (), {}) is not None:  # type: ignore[arg-type]
            raise _Refused(403, "FORBIDDEN", "CSRF check failed")
    return session_user  # type: ignore[return-value]


def _route(methods: tuple[str, ...]) -> Callable[[View], View]:
    """One door: method check, direct uploads offered, credentials, and every refusal as JSON."""

    def wrap(view: View) -> View:
        @csrf_exempt
        def handle(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return error_response(405, "BAD_REQUEST", f"{request.method} is not allowed here")
            try:
                if not direct_offered():
                    raise _Refused(404, "NOT_FOUND", "direct-to-bucket uploads are not offered by this server")
                return view(request, _user(request), **kwargs)
            except _Refused as refused:
                return refused.response
            except UploadError as exc:
                logger.info("s3 route %s: %s %s", request.path, exc.code, exc.message)
                return error_response(STATUS_FOR.get(exc.code, 400), exc.code, exc.message)
            except Exception:
                logger.exception("unexpected error on %s", request.path)
                return error_response(503, "INTERNAL_SERVER_ERROR", "Internal server error")

        return handle

    return wrap


def _upload(request: HttpRequest, user: User, upload_id: str) -> FileUpload:
    """The caller's upload named by the route's `uploadId` and `?key=`; 404 unless both are its own."""
    try:
        parsed = uuid.UUID(upload_id)
    except ValueError as exc:
        raise NotFound("no such upload") from exc
    upload = upload_get_for_user(user=user, upload_id=parsed)
    if request.GET.get("key") != upload.storage_key:
        raise NotFound("no such upload")
    return upload


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Refused(400, "BAD_REQUEST", "the body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise _Refused(400, "BAD_REQUEST", "the body must be a JSON object")
    return body


def _location(key: str) -> str:
    base = (settings.S3_PUBLIC_ENDPOINT_URL or f"https://{settings.S3_BUCKET}.s3.amazonaws.com").rstrip("/")
    return f"{base}/{key}" if not settings.S3_PUBLIC_ENDPOINT_URL else f"{base}/{settings.S3_BUCKET}/{key}"


@_route(("POST",))
def multipart_create(request: HttpRequest, user: User) -> HttpResponse:
    body = _json_body(request)
    filename, content_type, metadata = body.get("filename"), body.get("type"), body.get("metadata")
    if not isinstance(filename, str) or not filename:
        raise _Refused(400, "BAD_USER_INPUT", 'the "filename" field is required and must be a non-empty string')
    if content_type is not None and not isinstance(content_type, str):
        raise _Refused(400, "BAD_USER_INPUT", "type must be a string")
    declared = metadata.get("sha256") if isinstance(metadata, dict) else None
    upload = direct_create(
        user=user,
        filename=filename,
        size=None,
        sha256=sha256_check(declared) if isinstance(declared, str) and declared else None,
        content_type=content_type or None,
    )
    return JsonResponse({"key": upload.storage_key, "uploadId": str(upload.id), "bucket": settings.S3_BUCKET})


@_route(("GET", "DELETE"))
def multipart_upload(request: HttpRequest, user: User, upload_id: str) -> HttpResponse:
    upload = _upload(request, user, upload_id)
    if request.method == "DELETE":
        try:
            upload_cancel(user=user, upload_id=upload.id)
        except InvalidState:
            if upload.status != UploadStatus.CANCELLED:
                raise
        return JsonResponse({})
    parts = direct_parts_listed(user=user, upload_id=upload.id)
    return JsonResponse([{"PartNumber": p.part_number, "Size": p.size, "ETag": p.etag} for p in parts], safe=False)


@_route(("GET",))
def multipart_sign(request: HttpRequest, user: User, upload_id: str, part_number: str) -> HttpResponse:
    upload = _upload(request, user, upload_id)
    try:
        number = int(part_number)
    except ValueError as exc:
        raise _Refused(400, "BAD_USER_INPUT", "the part number must be an integer from 1 to 10000") from exc
    (signed,) = direct_sign(user=user, upload_id=upload.id, parts=[PartToSign(part_number=number)])
    return JsonResponse({"url": signed.url, "expires": settings.DIRECT_UPLOAD_URL_TTL, "headers": signed.headers})


@_route(("POST",))
def multipart_complete(request: HttpRequest, user: User, upload_id: str) -> HttpResponse:
    upload = _upload(request, user, upload_id)
    parts = _json_body(request).get("parts")
    if not isinstance(parts, list) or not all(
        isinstance(p, dict) and type(p.get("PartNumber")) is int and isinstance(p.get("ETag"), str) for p in parts
    ):
        raise _Refused(400, "BAD_USER_INPUT", "parts must be an array of {ETag, PartNumber} objects")
    queued = direct_complete(user=user, upload_id=upload.id, parts=[(p["PartNumber"], p["ETag"]) for p in parts])
    return JsonResponse(
        {
            "location": _location(queued.storage_key),
            "key": queued.storage_key,
            "bucket": settings.S3_BUCKET,
            "uploadId": str(queued.id),
            "status": queued.status,
        }
    )


@csrf_exempt
def single_request_params(request: HttpRequest) -> HttpResponse:
    """Uppy's single-request path is not offered: the server would never hear of the upload again."""
    return error_response(
        404, "NOT_FOUND", "single-request uploads are not offered: configure Uppy with shouldUseMultipart: () => true"
    )
