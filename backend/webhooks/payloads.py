"""The body of a delivery: `{"type": "upload.completed", "timestamp": ..., "data": {...the FileUpload fields...}}`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.parts import progress_fraction
from backend.uploads.selectors import upload_download_url
from backend.webhooks.models import EVENT_TYPE, WebhookEvent


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def upload_fields(upload: FileUpload) -> dict[str, Any]:
    """The upload as the API's FileUpload type names its fields (camelCase, byte counts as numbers).

    `downloadUrl` is made when the event happens (null when this process cannot make an absolute
    one: the local backend without PUBLIC_BASE_URL); it expires after DOWNLOAD_URL_TTL like any
    other, so a receiver that needs it later asks `upload(id)` for a fresh one.
    """
    fields: dict[str, Any] = {
        "id": str(upload.id),
        "filename": upload.filename,
        "contentType": upload.content_type,
        "size": upload.size,
        "sha256": upload.sha256 or None,
        "status": upload.status,
        "bytesUploaded": upload.bytes_uploaded,
        "partsUploaded": upload.parts_uploaded,
        "partsTotal": upload.parts_total,
        "progress": progress_fraction(
            bytes_uploaded=upload.bytes_uploaded,
            size=upload.size,
            completed=upload.status == UploadStatus.COMPLETED,
        ),
        "attempts": upload.attempts,
        "error": upload.error,
        "storageBackend": upload.storage_backend,
        "storageKey": upload.storage_key,
        "downloadUrl": None,
        "createdAt": _iso(upload.created_at),
        "updatedAt": _iso(upload.updated_at),
        "completedAt": _iso(upload.completed_at),
        "partSize": upload.part_size,
    }
    # Fields later upload modes add to the model (mode, bytesReceived, expiresAt) go out when present.
    for attribute, name in (("mode", "mode"), ("bytes_received", "bytesReceived"), ("expires_at", "expiresAt")):
        if hasattr(upload, attribute):
            value = getattr(upload, attribute)
            fields[name] = _iso(value) if isinstance(value, datetime) else value
    try:
        url = upload_download_url(upload=upload, base_url=None)
    except Exception:
        url = None  # a store that cannot presign right now: the event still goes
    fields["downloadUrl"] = url if url and url.startswith(("http://", "https://")) else None
    return fields


def event_body(*, event: WebhookEvent, upload: FileUpload, at: datetime) -> str:
    """The exact JSON text every attempt of this delivery sends and signs (compact, stable)."""
    document = {"type": EVENT_TYPE[event], "timestamp": at.isoformat(), "data": upload_fields(upload)}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)
