from __future__ import annotations

from backend.uploads.errors import UploadError


class QuotaExceeded(UploadError):
    """The upload would take its owner past their quota (CONTRACT sections 4 and 10)."""

    code = "QUOTA_EXCEEDED"
