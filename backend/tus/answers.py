"""What the tus routes answer: the domain errors mapped to HTTP in one table, CORS, the common headers."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from backend.http_errors import error_body
from backend.tus.protocol import CHECKSUM_ALGORITHMS, EXTENSIONS, VERSION, HeaderError
from backend.uploads import errors
from backend.uploads.resumable.checksums import ChecksumUnknown
from backend.uploads.services.chunks import ChunkChecksumMismatch

# (HTTP status, contract code) per domain error; the first match wins (subclasses first).
STATUS_FOR: list[tuple[type[Exception], int, str]] = [
    (ChunkChecksumMismatch, 460, "CHECKSUM_MISMATCH"),
    (errors.ChecksumMismatch, 460, "CHECKSUM_MISMATCH"),
    (errors.OffsetMismatch, 409, "OFFSET_MISMATCH"),
    (errors.UploadLocked, 423, "UPLOAD_LOCKED"),
    (errors.Gone, 410, "GONE"),
    (errors.NotFound, 404, "NOT_FOUND"),
    (errors.UploadTooLarge, 413, "FILE_TOO_LARGE"),
    (errors.TooManyActiveUploads, 429, "TOO_MANY_ACTIVE_UPLOADS"),
    (errors.InsufficientStorage, 507, "INSUFFICIENT_STORAGE"),
    (errors.UnsupportedMediaType, 415, "UNSUPPORTED_MEDIA_TYPE"),
    (errors.InvalidState, 409, "INVALID_STATE"),
    (errors.Unauthenticated, 401, "UNAUTHENTICATED"),
    (errors.ServiceUnavailable, 503, "SERVICE_UNAVAILABLE"),
    (errors.BadUserInput, 400, "BAD_REQUEST"),
    (HeaderError, 400, "BAD_REQUEST"),
    (ChecksumUnknown, 400, "BAD_REQUEST"),
]
# Domain errors the table does not name but that carry a contract code (a quota refusal, later).
STATUS_FOR_CODE = {"QUOTA_EXCEEDED": 413}

# What a browser client must be allowed to send and to read (tusd's defaults).
ALLOW_HEADERS = (
    "Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Offset, Upload-Metadata, "
    "Upload-Defer-Length, Upload-Concat, Upload-Checksum, X-HTTP-Method-Override, X-Requested-With"
)
EXPOSE_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Expires, Upload-Metadata, Upload-Defer-Length, "
    "Upload-Concat, Tus-Version, Tus-Resumable, Tus-Max-Size, Tus-Extension, Tus-Checksum-Algorithm"
)
ALLOW_METHODS = "POST, HEAD, PATCH, DELETE, OPTIONS"


class Answer:
    """One HTTP answer: status, headers (the tus ones always), an optional JSON error body."""

    def __init__(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.status = status
        self.headers = {"Tus-Resumable": VERSION, "Cache-Control": "no-store", **(headers or {})}
        self.body = body

    @classmethod
    def refusal(cls, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, error_body(code, message))

    @classmethod
    def for_error(cls, exc: Exception) -> Answer | None:
        """The answer for an expected error; None for one the table does not know (a bug)."""
        for kind, status, code in STATUS_FOR:
            if isinstance(exc, kind):
                headers: dict[str, str] = {}
                if isinstance(exc, errors.OffsetMismatch):
                    headers["Upload-Offset"] = str(exc.offset)
                return cls.refusal(status, code, getattr(exc, "message", str(exc)), headers)
        if isinstance(exc, errors.UploadError) and exc.code in STATUS_FOR_CODE:
            return cls.refusal(STATUS_FOR_CODE[exc.code], exc.code, exc.message)
        return None

    def asgi_headers(self, *, origin: str | None, head: bool) -> list[tuple[bytes, bytes]]:
        headers = dict(self.headers)
        headers.update(cors_headers(origin, preflight=False))
        if not head:
            headers["Content-Length"] = str(len(self.body))
        return [(k.lower().encode("latin1"), v.encode("latin1")) for k, v in headers.items()]


def capabilities() -> dict[str, str]:
    """What OPTIONS answers (and 412 too: Tus-Version)."""
    return {
        "Tus-Version": VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(settings.UPLOAD_MAX_BYTES),
        "Tus-Checksum-Algorithm": CHECKSUM_ALGORITHMS,
    }


def cors_headers(origin: str | None, *, preflight: bool) -> dict[str, str]:
    """CORS for an origin in CORS_ALLOWED_ORIGINS (bearer tokens: no credentials mode needed)."""
    if not origin or origin not in settings.CORS_ALLOWED_ORIGINS:
        return {}
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin", "Access-Control-Expose-Headers": EXPOSE_HEADERS}
    if preflight:
        headers |= {
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": "86400",
        }
    return headers


def asgi_send_args(answer: Answer, *, origin: str | None, head: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    headers = answer.asgi_headers(origin=origin, head=head)
    start = {"type": "http.response.start", "status": answer.status, "headers": headers}
    body = {"type": "http.response.body", "body": b"" if head else answer.body}
    return start, body
