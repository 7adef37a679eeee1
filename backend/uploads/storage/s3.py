"""The S3 bucket (AWS, MinIO, R2, Ceph, moto), through boto3's low-level multipart API.

An open object is an S3 multipart upload; its handle is the UploadId. Each part carries the
configured checksum (`S3_CHECKSUM_ALGORITHM`), and the ETag the store answers is compared with the
part's MD5 (S3, MinIO, R2 and moto return MD5 ETags for parts not encrypted with KMS), so bytes
corrupted on the way fail the attempt even where the store does not verify checksums. Complete
is built from the recorded receipts and followed by a HeadObject that checks the size (and, with
MD5 ETags, that the object is exactly those parts).

Every store error becomes a StorageError: retryable for 5xx, throttling, connection errors and
timeouts; not for refusals (403, a missing bucket, a bad request), whose message names the cause.
The client is injected (see `s3_client.py`); `S3API` lists every call this module makes on it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Protocol
from urllib.parse import quote, unquote

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, IncompleteReadError
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from backend.uploads.parts import S3_MIN_PART_SIZE, backoff_delay
from backend.uploads.storage import PartReceipt, PresignedPut, StorageError, storage_call_with_retries

logger = logging.getLogger(__name__)

CHECKSUM_ALGORITHMS = ("SHA256", "CRC32", "NONE")
SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse")
# With SSE-KMS the ETag is not the MD5 of the bytes; there the store's checksum check stands alone.
_KMS_MODES = ("aws:kms", "aws:kms:dsse")
_MD5_HEX = re.compile(r"[0-9a-f]{32}")
LIST_PAGE_SIZE = 1000
# SigV4 presigned URLs cannot outlive a week.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# Rounds of abort-then-list before giving up on parts that keep arriving.
ABORT_ROUNDS = 5

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


class S3Presigner(Protocol):
    """The one call made on the client for the public endpoint (no request is sent)."""

    def generate_presigned_url(self, ClientMethod: str, Params: dict[str, Any], ExpiresIn: int) -> str: ...


class S3API(S3Presigner, Protocol):
    """The calls this backend makes on a boto3 S3 client (keyword arguments as boto3 names them)."""

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]: ...
    def upload_part(self, **kwargs: Any) -> dict[str, Any]: ...
    def list_parts(self, **kwargs: Any) -> dict[str, Any]: ...
    def complete_multipart_upload(self, **kwargs: Any) -> dict[str, Any]: ...
    def abort_multipart_upload(self, **kwargs: Any) -> dict[str, Any]: ...
    def put_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def head_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def delete_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def head_bucket(self, **kwargs: Any) -> dict[str, Any]: ...


class S3StorageError(StorageError):
    """A StorageError that keeps the store's error code (e.g. NoSuchUpload) for the callers here."""

    def __init__(self, message: str, *, retryable: bool, code: str = "") -> None:
        super().__init__(message, retryable=retryable)
        self.code = code


# --- pure pieces -------------------------------------------------------------------------------


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


# --- the backend -------------------------------------------------------------------------------


class S3Storage:
    """Storage on an S3 bucket. Thread-safe: parts of one object go up from several threads."""

    name = "s3"
    min_part_size = S3_MIN_PART_SIZE

    def __init__(
        self,
        *,
        client: S3API,
        bucket: str,
        presigner: S3Presigner | None = None,
        checksum_algorithm: str = "SHA256",
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        storage_class: str | None = None,
        list_page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        if checksum_algorithm not in CHECKSUM_ALGORITHMS:
            raise ImproperlyConfigured(f"S3_CHECKSUM_ALGORITHM must be one of {', '.join(CHECKSUM_ALGORITHMS)}")
        if sse is not None and sse not in SSE_MODES:
            raise ImproperlyConfigured(f"S3_SSE must be one of {', '.join(SSE_MODES)}")
        if sse_kms_key_id and sse not in _KMS_MODES:
            raise ImproperlyConfigured("S3_SSE_KMS_KEY_ID needs S3_SSE=aws:kms (or aws:kms:dsse)")
        self.client = client
        self.presigner = presigner if presigner is not None else client
        self.bucket = bucket
        self.checksum_algorithm = checksum_algorithm
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
        self.storage_class = storage_class
        self.list_page_size = list_page_size
        self.etags_are_md5 = sse not in _KMS_MODES

    # -- core ---------------------------------------------------------------------------------

    def start(self, *, key: str, content_type: str, metadata: dict[str, str]) -> str:
        params = {**self._object_params(key=key, content_type=content_type, metadata=metadata)}
        if self.checksum_algorithm != "NONE":
            params["ChecksumAlgorithm"] = self.checksum_algorithm
        response = self._call("CreateMultipartUpload", lambda: self.client.create_multipart_upload(**params))
        return str(response["UploadId"])

    def put_part(self, *, key: str, handle: str, part_number: int, offset: int, data: bytes) -> PartReceipt:
        md5 = hashlib.md5(data, usedforsecurity=False)
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "UploadId": handle,
            "PartNumber": part_number,
            "Body": data,
        }
        checksum = part_checksum(algorithm=self.checksum_algorithm, data=data)
        if checksum is not None:
            params[checksum[0]] = checksum[1]
        # The MD5 is computed anyway (for the ETag check): the store verifies it too (BadDigest),
        # and with it botocore does not hash the body again to sign it over HTTPS.
        params["ContentMD5"] = base64.b64encode(md5.digest()).decode("ascii")
        what = f"UploadPart (part {part_number})"
        response = self._call(what, lambda: self.client.upload_part(**params))
        etag = str(response.get("ETag", ""))
        if self.etags_are_md5 and etag_md5(etag) != md5.hexdigest():
            raise S3StorageError(
                f"{what}: the store's ETag {etag} is not the MD5 of the bytes sent ({md5.hexdigest()}); "
                "the part was corrupted on the way",
                retryable=True,
                code="ETagMismatch",
            )
        if checksum is not None and response.get(checksum[0]) not in (None, checksum[1]):
            raise S3StorageError(
                f"{what}: the store's {checksum[0]} {response[checksum[0]]} is not that of the bytes sent "
                f"({checksum[1]})",
                retryable=True,
                code="ChecksumMismatch",
            )
        return PartReceipt(
            part_number=part_number,
            size=len(data),
            etag=etag,
            checksum=f"{self.checksum_algorithm}:{checksum[1]}" if checksum is not None else "",
        )

    def list_parts(self, *, key: str, handle: str) -> list[PartReceipt]:
        """Every page of ListParts. Raises a non-retryable StorageError if the upload is gone."""
        receipts = []
        marker = 0
        while True:
            call = partial(
                self.client.list_parts,
                Bucket=self.bucket,
                Key=key,
                UploadId=handle,
                MaxParts=self.list_page_size,
                PartNumberMarker=marker,
            )
            page = self._call("ListParts", call)
            for part in page.get("Parts", []):
                receipts.append(self._listed_receipt(part))
            if not page.get("IsTruncated"):
                break
            next_marker = int(page.get("NextPartNumberMarker") or 0)
            if next_marker <= marker:
                raise S3StorageError("ListParts: the store paginated without moving forward", retryable=True)
            marker = next_marker
        return sorted(receipts, key=lambda r: r.part_number)

    def complete(self, *, key: str, handle: str, parts: list[PartReceipt], size: int) -> None:
        ordered = sorted(parts, key=lambda p: p.part_number)
        listing = [{"PartNumber": p.part_number, "ETag": p.etag, **receipt_checksum_param(p.checksum)} for p in ordered]
        try:
            self._call(
                "CompleteMultipartUpload",
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=handle, MultipartUpload={"Parts": listing}
                ),
            )
        except S3StorageError as exc:
            # An earlier Complete may have succeeded with its answer lost: then the upload id is
            # gone and the object is there, made of exactly these parts.
            if exc.code != "NoSuchUpload" or not self._is_assembled(key=key, parts=ordered, size=size):
                raise
            return
        head = self._call("HeadObject", lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        problem = self._assembly_problem(head=head, parts=ordered, size=size)
        if problem:
            # Nothing but the whole, right object may stay at the key.
            self._call("DeleteObject", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))
            raise S3StorageError(f"CompleteMultipartUpload: {problem}; the object was removed", retryable=False)

    def abort(self, *, key: str, handle: str) -> None:
        """Abort, then list again until the store lists nothing: a part in flight may land late."""
        for round_number in range(1, ABORT_ROUNDS + 1):
            try:
                self._with_retries(
                    lambda: self._call(
                        "AbortMultipartUpload",
                        lambda: self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=handle),
                    )
                )
            except S3StorageError as exc:
                if exc.code != "NoSuchUpload":
                    raise
            try:
                remaining = self._with_retries(lambda: self.list_parts(key=key, handle=handle))
            except S3StorageError as exc:
                if exc.code == "NoSuchUpload":
                    return
                raise
            if not remaining:
                return
            logger.info("abort of %s: %d parts still listed after round %d", handle, len(remaining), round_number)
            time.sleep(backoff_delay(attempt=round_number))
        raise S3StorageError(
            f"AbortMultipartUpload: parts of {handle} are still listed after {ABORT_ROUNDS} rounds", retryable=True
        )

    def put_object(self, *, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        params: dict[str, Any] = {
            **self._object_params(key=key, content_type=content_type, metadata=metadata),
            "Body": data,
        }
        md5 = hashlib.md5(data, usedforsecurity=False)
        checksum = part_checksum(algorithm=self.checksum_algorithm, data=data)
        if checksum is not None:
            params[checksum[0]] = checksum[1]
        params["ContentMD5"] = base64.b64encode(md5.digest()).decode("ascii")
        response = self._call("PutObject", lambda: self.client.put_object(**params))
        if self.etags_are_md5 and etag_md5(str(response.get("ETag", ""))) != md5.hexdigest():
            raise S3StorageError(
                f"PutObject: the store's ETag {response.get('ETag')} is not the MD5 of the bytes sent", retryable=True
            )

    def delete_object(self, *, key: str) -> None:
        self._with_retries(
            lambda: self._call("DeleteObject", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))
        )

    def check(self) -> None:
        self._call("HeadBucket", lambda: self.client.head_bucket(Bucket=self.bucket))

    # -- presigned downloads ------------------------------------------------------------------

    def download_url(self, *, key: str, filename: str, ttl: int, base_url: str | None) -> str:
        """A presigned GET on the public endpoint; `base_url` (the API's own address) is not used."""
        return self.presigner.generate_presigned_url(
            ClientMethod="get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentDisposition": content_disposition(filename=filename),
            },
            ExpiresIn=max(1, min(ttl, MAX_PRESIGN_SECONDS)),
        )

    # -- direct uploads (clients put the parts) ------------------------------------------------

    def direct_start(self, *, key: str, content_type: str, metadata: dict[str, str], part_checksums: bool) -> str:
        """An S3 multipart upload for a client's parts; with a checksum algorithm only if every part has one."""
        params = {**self._object_params(key=key, content_type=content_type, metadata=metadata)}
        if part_checksums and self.checksum_algorithm == "SHA256":
            params["ChecksumAlgorithm"] = "SHA256"
        response = self._call("CreateMultipartUpload", lambda: self.client.create_multipart_upload(**params))
        return str(response["UploadId"])

    def presign_part(self, *, key: str, handle: str, part_number: int, ttl: int, checksum: str | None) -> PresignedPut:
        """A presigned UploadPart on the public endpoint; a checksum is a signed header the client must send."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": handle, "PartNumber": part_number}
        headers = {}
        if checksum is not None:
            params["ChecksumSHA256"] = checksum
            headers["x-amz-checksum-sha256"] = checksum
        url = self.presigner.generate_presigned_url(
            ClientMethod="upload_part", Params=params, ExpiresIn=max(1, min(ttl, MAX_PRESIGN_SECONDS))
        )
        return PresignedPut(url=url, headers=headers)

    def object_read(self, *, key: str, length: int | None = None, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if length is not None:
            if length <= 0:
                return
            params["Range"] = f"bytes=0-{length - 1}"
        response = self._call("GetObject", lambda: self.client.get_object(**params))
        body = response["Body"]
        try:
            while True:
                try:
                    chunk = body.read(chunk_size)
                except (BotoCoreError, OSError) as exc:
                    raise S3StorageError(f"GetObject: the store stopped sending: {exc}", retryable=True) from exc
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    # -- internals ----------------------------------------------------------------------------

    def _object_params(self, *, key: str, content_type: str, metadata: dict[str, str]) -> dict[str, Any]:
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "ContentType": content_type,
            "Metadata": metadata_encode(metadata),
        }
        if self.sse:
            params["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id:
            params["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.storage_class:
            params["StorageClass"] = self.storage_class
        return params

    def _listed_receipt(self, part: dict[str, Any]) -> PartReceipt:
        checksum = ""
        if self.checksum_algorithm != "NONE" and part.get(f"Checksum{self.checksum_algorithm}"):
            checksum = f"{self.checksum_algorithm}:{part[f'Checksum{self.checksum_algorithm}']}"
        return PartReceipt(
            part_number=int(part["PartNumber"]), size=int(part["Size"]), etag=str(part["ETag"]), checksum=checksum
        )

    def _assembly_problem(self, *, head: dict[str, Any], parts: list[PartReceipt], size: int) -> str:
        """Why the object HeadObject describes is not the one `parts` make, or "" if it is."""
        if int(head.get("ContentLength", -1)) != size:
            return f"the assembled object is {head.get('ContentLength')} bytes, expected {size}"
        if self.etags_are_md5 and all(_MD5_HEX.fullmatch(etag_md5(p.etag)) for p in parts):
            expected = multipart_etag(part_etags=[p.etag for p in parts])
            if etag_md5(str(head.get("ETag", ""))) != expected:
                return f"the assembled object's ETag {head.get('ETag')} is not that of its parts ({expected})"
        return ""

    def _is_assembled(self, *, key: str, parts: list[PartReceipt], size: int) -> bool:
        try:
            head = self._call("HeadObject", lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except S3StorageError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return not self._assembly_problem(head=head, parts=parts, size=size)

    def _with_retries(self, call: Callable[[], Any]) -> Any:
        """For the calls the transfer engine does not retry (abort, delete): a few tries, with backoff."""
        return storage_call_with_retries(call, attempts=settings.UPLOAD_PART_RETRIES)

    def _call(self, operation: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return s3_call(operation, call, bucket=self.bucket)


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
    return S3StorageError(text, retryable=s3_error_retryable(code=code, status=status), code=code)


def s3_storage_from_settings() -> S3Storage:
    """The S3 backend as settings describe it, with clients from `s3_client`."""
    from backend.uploads.storage.s3_client import s3_clients_from_settings

    client, presigner = s3_clients_from_settings()
    return S3Storage(
        client=client,
        presigner=presigner,
        bucket=settings.S3_BUCKET,
        checksum_algorithm=settings.S3_CHECKSUM_ALGORITHM,
        sse=settings.S3_SSE,
        sse_kms_key_id=settings.S3_SSE_KMS_KEY_ID,
        storage_class=settings.S3_STORAGE_CLASS,
    )
