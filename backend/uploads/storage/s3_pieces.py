"""The pure pieces of the S3 backend: error classification, checksums, ETags, metadata, file names.

No client and no state: each is a function of its arguments (unit-tested in tests/unit/test_s3_pieces.py).
Every store error becomes an `S3StorageError`: retryable for 5xx, throttling, connection errors and
timeouts; not for refusals (403, a missing bucket, a bad request), whose message names the cause.
"""

from __future__ import annotations

import base64
import hashlib
import unicodedata
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, IncompleteReadError

from backend.uploads.storage import StorageError

_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_RETRYABLE_CODES = frozenset(
    {
        # botocore's transient and throttling codes (botocore/retries/standard.py)
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        # The bytes changed on the way: sending them again may well work.
        "BadDigest",
        "XAmzContentSHA256Mismatch",
        "IncompleteBody",
    }
)
_ACCESS_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "403"}
)


class S3StorageError(StorageError):
    """A StorageError that keeps the store's error code (e.g. NoSuchUpload) for the callers here."""

    def __init__(self, message: str, *, retryable: bool, code: str = "", spent: bool = False) -> None:
        super().__init__(message, retryable=retryable, spent=spent)
        self.code = code


def s3_error_retryable(*, code: str, status: int) -> bool:
    """Whether an S3 error answer may go away if the same request is sent again."""
    return status in _RETRYABLE_STATUS or code in _RETRYABLE_CODES


def part_checksum(*, algorithm: str, data: bytes) -> tuple[str, str] | None:
    """(boto3 parameter, base64 value) of `data`'s checksum under `algorithm`; None for NONE."""
    if algorithm == "SHA256":
        return "ChecksumSHA256", base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
    if algorithm == "CRC32":
        return "ChecksumCRC32", base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode("ascii")
    if algorithm == "NONE":
        return None
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def receipt_checksum_param(checksum: str) -> dict[str, str]:
    """The Complete-list entry for a receipt checksum recorded as "<ALGORITHM>:<base64>"."""
    algorithm, sep, value = checksum.partition(":")
    if not sep or algorithm not in ("SHA256", "CRC32") or not value:
        return {}
    return {f"Checksum{algorithm}": value}


def composite_checksum(*, part_checksums: list[str]) -> str | None:
    """The checksum S3 reports for an object assembled from parts carrying these receipt checksums
    ("<ALGORITHM>:<base64>"): the algorithm over the parts' binary digests joined, base64, "-N"
    (S3's COMPOSITE type). None when a part has no checksum or they are not all of one algorithm."""
    algorithms = {checksum.partition(":")[0] for checksum in part_checksums}
    if not part_checksums or len(algorithms) != 1 or any(not receipt_checksum_param(c) for c in part_checksums):
        return None
    digests = b"".join(base64.b64decode(checksum.partition(":")[2]) for checksum in part_checksums)
    combined = part_checksum(algorithm=algorithms.pop(), data=digests)
    return f"{combined[1]}-{len(part_checksums)}" if combined is not None else None


def etag_md5(etag: str) -> str:
    """An ETag as the bare lowercase hex digest it carries (quotes removed)."""
    return etag.strip().strip('"').lower()


def multipart_etag(*, part_etags: list[str]) -> str:
    """The ETag S3 gives an object assembled from parts with these MD5 ETags: md5(md5s)-N."""
    digest = hashlib.md5(b"".join(bytes.fromhex(etag_md5(e)) for e in part_etags), usedforsecurity=False)
    return f"{digest.hexdigest()}-{len(part_etags)}"


def metadata_encode(metadata: dict[str, str]) -> dict[str, str]:
    """User metadata as S3 can carry it: HTTP header values, so non-ASCII is percent-encoded (UTF-8).

    Printable ASCII other than "%" stays as it is, so ASCII names read plainly and `unquote`
    gives back the original.
    """
    safe = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
    return {key.lower(): quote(value, safe=safe) for key, value in metadata.items()}


def metadata_decode(metadata: dict[str, str]) -> dict[str, str]:
    """The inverse of `metadata_encode`."""
    return {key: unquote(value) for key, value in metadata.items()}


def content_disposition(*, filename: str) -> str:
    """`attachment` naming `filename` safely: an ASCII fallback and the exact UTF-8 name (RFC 6266)."""
    folded = unicodedata.normalize("NFKD", filename)
    fallback = "".join(
        ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\%;' else "_" for ch in folded if not unicodedata.combining(ch)
    )
    fallback = fallback.strip() or "download"
    exact = quote(filename, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}"


def s3_call(operation: str, call: Callable[[], dict[str, Any]], *, bucket: str) -> dict[str, Any]:
    """Run one client call on `bucket`, turning every botocore failure into an S3StorageError."""
    try:
        return call()
    except ClientError as exc:
        raise s3_client_error(operation, exc, bucket=bucket) from exc
    except (ConnectionError, HTTPClientError, IncompleteReadError) as exc:
        raise S3StorageError(
            f"{operation}: no answer from the store: {exc}", retryable=True, code=type(exc).__name__
        ) from exc
    except BotoCoreError as exc:
        raise S3StorageError(f"{operation}: {exc}", retryable=False, code=type(exc).__name__) from exc


def s3_client_error(operation: str, exc: ClientError, *, bucket: str) -> S3StorageError:
    """The StorageError for an error answer, its message naming the cause."""
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(error.get("Code") or status)
    message = str(error.get("Message") or "")
    # A HEAD answer has no body: then botocore gives the status as the code.
    text = f"{operation}: the store answered {status}" + (f" {code}" if code != str(status) else "")
    text += f": {message}" if message else ""
    if code == "NoSuchBucket" or (operation == "HeadBucket" and status == 404):
        text += f" (bucket {bucket!r} does not exist; `manage.py s3_setup --create-bucket` creates it)"
    elif code in _ACCESS_CODES:
        text += f" (access to bucket {bucket!r} refused: check the credentials and the bucket policy)"
    elif code == "NoSuchUpload":
        text += " (the multipart upload was aborted, completed, or expired by the bucket's lifecycle rule)"
    # NoSuchUpload: no call on that upload id can succeed again (StorageError.spent).
    spent = code == "NoSuchUpload"
    return S3StorageError(text, retryable=s3_error_retryable(code=code, status=status), code=code, spent=spent)
