"""An ASGI middleware that refuses oversized or unframed uploads before Django reads the body.

Django's ASGI handler spools the whole body before any upload handler runs, so the size limit
must be enforced here, from Content-Length (CONTRACT section 4).
"""

from __future__ import annotations

import shutil
from typing import Any

from django.conf import settings

from backend.http_errors import error_body

ENVELOPE_ALLOWANCE = 1024 * 1024

Scope = dict[str, Any]


class RequestLimits:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            refusal = self._refusal(scope)
            if refusal is not None:
                status, code, message = refusal
                await _respond(send, status, code, message)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope["headers"]}
        if not headers.get("content-type", "").lower().startswith("multipart/"):
            return None
        length = headers.get("content-length")
        if length is None:
            return 411, "LENGTH_REQUIRED", "a multipart upload needs a Content-Length header"
        if not length.isdigit():
            return 400, "BAD_REQUEST", "Content-Length is not a number"
        if int(length) > settings.UPLOAD_MAX_BYTES + ENVELOPE_ALLOWANCE:
            return 413, "FILE_TOO_LARGE", f"uploads are limited to {settings.UPLOAD_MAX_BYTES} bytes"
        settings.UPLOAD_STAGING_DIR.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(settings.UPLOAD_STAGING_DIR).free < settings.UPLOAD_STAGING_MIN_FREE_BYTES:
            return 507, "INSUFFICIENT_STORAGE", "the server is short of staging space; try again later"
        return None


async def _respond(send: Any, status: int, code: str, message: str) -> None:
    body = error_body(code, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
