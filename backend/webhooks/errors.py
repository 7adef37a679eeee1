from __future__ import annotations

from backend.uploads.errors import UploadError


class TooManyWebhooks(UploadError):
    code = "BAD_USER_INPUT"
