"""Domain errors of the upload service. Each carries the contract's error code (CONTRACT section 4)."""

from __future__ import annotations

import errno


class UploadError(Exception):
    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(UploadError):
    code = "NOT_FOUND"


class BadUserInput(UploadError):
    code = "BAD_USER_INPUT"


class ChecksumMismatch(UploadError):
    code = "CHECKSUM_MISMATCH"


class UnsupportedMediaType(UploadError):
    code = "UNSUPPORTED_MEDIA_TYPE"


class TooManyActiveUploads(UploadError):
    code = "TOO_MANY_ACTIVE_UPLOADS"


class InvalidState(UploadError):
    code = "INVALID_STATE"


class Unauthenticated(UploadError):
    code = "UNAUTHENTICATED"


class ClaimLost(Exception):
    """The transfer no longer owns the upload: it was cancelled, or another run took it.

    Not a contract error (no client ever sees it): the ledger raises it to stop a transfer.
    """


# What a full disk answers a write: no space left, or the disk quota reached. Staging (507 for the
# request) and the local bucket (the transfer fails, naming the disk) both tell it apart this way.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
