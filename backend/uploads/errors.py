"""Domain errors of the upload service. Each carries the contract's error code (CONTRACT section 4)."""

from __future__ import annotations

import errno


class UploadError(Exception):
    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # Further `extensions` of the GraphQL error (OFFSET_MISMATCH's `offset`).
        self.extensions: dict[str, object] = {}


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


class UploadTooLarge(UploadError):
    """Over UPLOAD_MAX_BYTES (or past the upload's own length): refused before the bytes are stored."""

    code = "FILE_TOO_LARGE"


class InsufficientStorage(UploadError):
    code = "INSUFFICIENT_STORAGE"


class OffsetMismatch(UploadError):
    """A chunk sent at another offset than the upload's current one, which `offset` gives."""

    code = "OFFSET_MISMATCH"

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(message)
        self.offset = offset
        self.extensions = {"offset": offset}


class UploadLocked(UploadError):
    """Another request, in any server process, is writing to this upload right now."""

    code = "UPLOAD_LOCKED"


class Gone(UploadError):
    """The upload expired, or was cancelled or deleted: it takes no more bytes."""

    code = "GONE"


class ServiceUnavailable(UploadError):
    """A dependency the request needs (Redis, for the upload lock) cannot be reached; try again."""

    code = "SERVICE_UNAVAILABLE"


# What a full disk answers a write: no space left, or the disk quota reached. Staging (507 for the
# request) and the local bucket (the transfer fails, naming the disk) both tell it apart this way.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
