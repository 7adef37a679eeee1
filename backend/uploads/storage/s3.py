"""The S3 bucket (AWS, MinIO, R2, Ceph, moto), through boto3's low-level multipart API.

An open object is an S3 multipart upload; its handle is the UploadId. Each part carries the
configured checksum (`S3_CHECKSUM_ALGORITHM`), which the store verifies (AWS and MinIO refuse a part
whose bytes do not match it, BadDigest, and the part is sent again). Complete is built from the
recorded receipts and followed by a HeadObject that checks the size, that the object is exactly
those parts (MD5 ETags) and that the checksum the store computed for it is the one the parts sent
make (`composite_checksum`): bytes corrupted on the way to a store that verifies nothing but keeps
what it got (moto) never make a COMPLETED object; that object is removed and the error is `spent`,
so the transfer starts the object over. Each part names its checksum algorithm, so a store that
knows checksums answers the part with one (moto echoes it without verifying). A part whose answer
carries none (a store that knows no checksums) is checked by its MD5 against its ETag right then,
while its bytes are in memory, and only an object whose parts were all checked so (by this
process: `put_part`, `listed_part_verified`) is trusted when its checksum cannot be checked (the
store reports none, or a part has none). Otherwise it is refused: not spent if the store answers
part checksums (a configuration the next object meets too: S3_VERIFY_PART_ETAG=true is the fix),
spent if the parts were put by another process, whose checks this one does not know of.
With `verify_part_etags` (S3_VERIFY_PART_ETAG, off by default), or without a part checksum,
every part carries its MD5 (Content-MD5) and is checked so, at about 1.5 CPU seconds per GiB
(S3, MinIO, R2 and moto return MD5 ETags for parts not encrypted with KMS). NoSuchUpload is
`spent` too: the multipart upload is gone.

Every store error becomes a StorageError: retryable for 5xx, throttling, connection errors and
timeouts; not for refusals (403, a missing bucket, a bad request), whose message names the cause.
The client is injected (see `s3_client.py`); `S3API` lists every call this module makes on it. The
error mapping and the other pure pieces are in `s3_pieces.py`; bucket set-up is `s3_bucket.py`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError
from django.core.exceptions import ImproperlyConfigured
from tenacity import RetryCallState

from backend.retries import RetryPolicy
from backend.uploads.parts import S3_MIN_PART_SIZE
from backend.uploads.storage import PartReceipt, PresignedPut, storage_call_with_retries
from backend.uploads.storage.s3_pieces import (
    S3StorageError,
    composite_checksum,
    content_disposition,
    etag_md5,
    metadata_decode,
    metadata_encode,
    multipart_etag,
    part_checksum,
    receipt_checksum_param,
    s3_call,
    s3_client_error,
    s3_error_retryable,
)

# The pure pieces live in s3_pieces.py; their names stay importable from here.
__all__ = [
    "S3API",
    "S3Presigner",
    "S3Storage",
    "S3StorageError",
    "composite_checksum",
    "content_disposition",
    "etag_md5",
    "metadata_decode",
    "metadata_encode",
    "multipart_etag",
    "part_checksum",
    "receipt_checksum_param",
    "s3_call",
    "s3_client_error",
    "s3_error_retryable",
]

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
# The ListParts page that finds one part (`part_listed`): S3 starts a page after PartNumberMarker,
# moto reads the marker as a position in its sorted list. A page of this many, ending at the part,
# holds it on both while fewer lower parts are still missing (in flight); otherwise the caller lists all.
PART_LISTED_WINDOW = 8


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


@dataclass(frozen=True)
class _Problem:
    """Why an assembled object is refused; `restartable`: a new object of the same parts may pass
    (its bytes are shown not to be the parts sent, or were checked by another process only)."""

    message: str
    restartable: bool


class _PartsStillListed(Exception):
    """An abort round ended with parts still listed (one in flight landed late): another round is due."""


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
        retry: RetryPolicy | None = None,
        verify_part_etags: bool = False,
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
        # For the calls the transfer engine does not retry itself (abort, delete, their listings).
        self.retry = retry if retry is not None else RetryPolicy()
        self.etags_are_md5 = sse not in _KMS_MODES
        # Each part's MD5, sent and compared with its ETag: asked for, or the only digest a part has.
        # Otherwise a part is checked by its MD5 only when the store's answer carries no checksum.
        self.part_md5 = verify_part_etags or checksum_algorithm == "NONE"
        # The parts of each open object this process checked by their MD5 (`put_part`): the only
        # ones an object whose checksum the store does not report can be trusted with.
        self._md5_checked: dict[str, set[int]] = {}
        # Whether the store's part answers carry a checksum, as the last part this process put
        # found (None: none put yet). Telling "the store reports no object checksum" (a
        # configuration problem) from "this process did not see the parts go up".
        self._answers_checksums: bool | None = None
        self._lock = threading.Lock()

    # -- core ---------------------------------------------------------------------------------

    def start(self, *, key: str, content_type: str, metadata: dict[str, str]) -> str:
        params = {**self._object_params(key=key, content_type=content_type, metadata=metadata)}
        if self.checksum_algorithm != "NONE":
            params["ChecksumAlgorithm"] = self.checksum_algorithm
        response = self._call("CreateMultipartUpload", lambda: self.client.create_multipart_upload(**params))
        return str(response["UploadId"])

    def put_part(self, *, key: str, handle: str, part_number: int, offset: int, data: bytes) -> PartReceipt:
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "UploadId": handle,
            "PartNumber": part_number,
            "Body": data,
        }
        # Given the checksum, botocore sends it as it is and hashes nothing itself. Naming the
        # algorithm too (x-amz-sdk-checksum-algorithm) makes a store that knows checksums answer one.
        checksum = part_checksum(algorithm=self.checksum_algorithm, data=data)
        if checksum is not None:
            params[checksum[0]] = checksum[1]
            params["ChecksumAlgorithm"] = self.checksum_algorithm
        md5 = hashlib.md5(data, usedforsecurity=False) if self.part_md5 else None
        if md5 is not None:
            params["ContentMD5"] = base64.b64encode(md5.digest()).decode("ascii")
        what = f"UploadPart (part {part_number})"
        response = self._call(what, lambda: self.client.upload_part(**params))
        etag = str(response.get("ETag", ""))
        answered = response.get(checksum[0]) if checksum is not None else None
        if checksum is not None and answered not in (None, checksum[1]):
            raise S3StorageError(
                f"{what}: the store's {checksum[0]} {answered} is not that of the bytes sent ({checksum[1]})",
                retryable=True,
                code="ChecksumMismatch",
            )
        if checksum is not None:
            self._answers_checksums = answered is not None
        if md5 is None and answered is None and self.etags_are_md5:
            # The store said nothing of the checksum: it may know none, and then nothing but the
            # ETag vouches for these bytes. Check it now, while they are in memory.
            md5 = hashlib.md5(data, usedforsecurity=False)
        if md5 is not None and self.etags_are_md5 and etag_md5(etag) != md5.hexdigest():
            raise S3StorageError(
                f"{what}: the store's ETag {etag} is not the MD5 of the bytes sent ({md5.hexdigest()}); "
                "the part was corrupted on the way",
                retryable=True,
                code="ETagMismatch",
            )
        with self._lock:
            checked = self._md5_checked.setdefault(handle, set())
            if md5 is not None and self.etags_are_md5:
                checked.add(part_number)
            else:
                checked.discard(part_number)  # a part put again replaces the one checked before
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

    def listed_part_verified(self, *, handle: str, receipt: PartReceipt, data: bytes) -> PartReceipt | None:
        """`receipt` (a part only the store's listing knows of) with this part's checksum, if its
        listed ETag is the MD5 of `data` (the staged bytes of that part) and its listed checksum, if
        any, is theirs; else None (send the part again). With SSE-KMS no ETag is an MD5: None."""
        if not self.etags_are_md5:
            return None
        if etag_md5(receipt.etag) != hashlib.md5(data, usedforsecurity=False).hexdigest():
            return None
        checksum = part_checksum(algorithm=self.checksum_algorithm, data=data)
        ours = f"{self.checksum_algorithm}:{checksum[1]}" if checksum is not None else ""
        if receipt.checksum and receipt.checksum != ours:
            return None
        with self._lock:
            self._md5_checked.setdefault(handle, set()).add(receipt.part_number)
        return replace(receipt, checksum=ours)

    def complete(self, *, key: str, handle: str, parts: list[PartReceipt], size: int, unseen: bool = False) -> None:
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
            # gone and the object is there, made of exactly these parts. Otherwise NoSuchUpload
            # is spent: the upload was aborted or expired behind the service's back.
            assembled = exc.code == "NoSuchUpload" and self._is_assembled(
                key=key, handle=handle, parts=ordered, size=size, unseen=unseen
            )
            if not assembled:
                raise
            self._forget(handle)
            return
        head = self._head(key=key)
        problem = self._assembly_problem(head=head, handle=handle, parts=ordered, size=size, unseen=unseen)
        self._forget(handle)
        if problem:
            # Nothing but the whole, right object may stay at the key. Only an object shown to hold
            # other bytes is spent (the transfer may start it over: a part was corrupted on the
            # way, and sending it again can help). An object that cannot be verified is refused for
            # good: the store's configuration would make every new object fail the same way.
            self._call("DeleteObject", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))
            raise S3StorageError(
                f"CompleteMultipartUpload: {problem.message}; the object was removed",
                retryable=False,
                spent=problem.restartable,
            )

    def direct_complete(self, *, key: str, handle: str, parts: list[PartReceipt], size: int) -> None:
        """`complete` for a client's parts (DIRECT), whose bytes this server never saw: a part without
        a checksum (the client sent none) is no reason to refuse the object, which the caller checks
        by reading it back against the sha256 the client declared, if any (CONTRACT section 9)."""
        self.complete(key=key, handle=handle, parts=parts, size=size, unseen=True)

    def abort(self, *, key: str, handle: str) -> None:
        """Abort, then list again until the store lists nothing: a part in flight may land late."""

        def still_listed(state: RetryCallState) -> None:
            logger.info(
                "abort of %s: %s after round %d",
                handle,
                state.outcome and state.outcome.exception(),
                state.attempt_number,
            )

        rounds = replace(self.retry, attempts=ABORT_ROUNDS).retrying(
            retry_on=_PartsStillListed, before_sleep=still_listed
        )
        self._forget(handle)
        try:
            rounds(self._abort_round, key=key, handle=handle)
        except _PartsStillListed as exc:
            raise S3StorageError(
                f"AbortMultipartUpload: parts of {handle} are still listed after {ABORT_ROUNDS} rounds", retryable=True
            ) from exc

    def _abort_round(self, *, key: str, handle: str) -> None:
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
        if remaining:
            raise _PartsStillListed(f"{len(remaining)} parts still listed")

    def put_object(self, *, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> PartReceipt:
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
        etag = str(response.get("ETag", ""))
        if self.etags_are_md5 and etag_md5(etag) != md5.hexdigest():
            raise S3StorageError(
                f"PutObject: the store's ETag {etag} is not the MD5 of the bytes sent ({md5.hexdigest()})",
                retryable=True,
                code="ETagMismatch",
            )
        return PartReceipt(
            part_number=1,
            size=len(data),
            etag=etag,
            checksum=f"{self.checksum_algorithm}:{checksum[1]}" if checksum is not None else "",
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

    def part_listed(self, *, key: str, handle: str, part_number: int) -> PartReceipt | None:
        """One small ListParts page ending at `part_number` (O(1) per confirmation, not O(parts)); None if
        the part is not on it (not put, or, on a store that reads the marker as a position, too many
        lower parts missing)."""
        window = min(part_number, PART_LISTED_WINDOW)
        page = self._call(
            "ListParts",
            lambda: self.client.list_parts(
                Bucket=self.bucket, Key=key, UploadId=handle, MaxParts=window, PartNumberMarker=part_number - window
            ),
        )
        for part in page.get("Parts", []):
            if int(part["PartNumber"]) == part_number:
                return self._listed_receipt(part)
        return None

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

    def _head(self, *, key: str) -> dict[str, Any]:
        """HeadObject, with the object's checksum (ChecksumMode)."""
        return self._call(
            "HeadObject", lambda: self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        )

    def _forget(self, handle: str) -> None:
        with self._lock:
            self._md5_checked.pop(handle, None)

    def _assembly_problem(
        self, *, head: dict[str, Any], handle: str, parts: list[PartReceipt], size: int, unseen: bool
    ) -> _Problem | None:
        """Why the object HeadObject describes is not (or cannot be shown to be) the one `parts` make."""
        if int(head.get("ContentLength", -1)) != size:
            why = f"the assembled object is {head.get('ContentLength')} bytes, expected {size}"
            return _Problem(why, restartable=True)
        if self.etags_are_md5 and all(_MD5_HEX.fullmatch(etag_md5(p.etag)) for p in parts):
            expected = multipart_etag(part_etags=[p.etag for p in parts])
            if etag_md5(str(head.get("ETag", ""))) != expected:
                return _Problem(
                    f"the assembled object's ETag {head.get('ETag')} is not that of its parts ({expected})",
                    restartable=True,
                )
        return self._checksum_problem(head=head, handle=handle, parts=parts, unseen=unseen)

    def _checksum_problem(
        self, *, head: dict[str, Any], handle: str, parts: list[PartReceipt], unseen: bool
    ) -> _Problem | None:
        """Why the checksum the store reports for the object is not the one the parts sent make.

        For the parts not checked by their MD5 this is the one check of the bytes a store that
        verifies no checksum kept. So when it cannot be made (a part has no checksum, or the store
        reports none for the object), the object is trusted only if every part's bytes were
        checked against its ETag: each part carried its MD5 (`part_md5`), or this process checked
        it (`put_part`, `listed_part_verified`). `unseen`: a client's parts (DIRECT), checked by
        their caller instead.
        """
        expected = composite_checksum(part_checksums=[p.checksum for p in parts])
        reported = head.get(f"Checksum{self.checksum_algorithm}")
        if head.get("ChecksumType") == "FULL_OBJECT":
            return None  # a checksum of the whole object's bytes, which this service never computed
        if expected is None or reported is None:
            with self._lock:
                checked = set(self._md5_checked.get(handle, ()))
            if unseen or self.part_md5 or all(p.part_number in checked for p in parts):
                return None  # each part's bytes were checked against its ETag
            why = (
                "some of its parts have no checksum to check it with"
                if expected is None
                else "the store reports none for the assembled object"
            )
            if self._answers_checksums:
                # The store answers part checksums without reporting the object's: every new
                # object would be refused the same way. A configuration problem, not spent.
                return _Problem(
                    f"the {self.checksum_algorithm} checksum of the object cannot be verified ({why}), and not"
                    " every part was checked by its MD5; for a store that reports no object checksum set"
                    " S3_VERIFY_PART_ETAG=true",
                    restartable=False,
                )
            # The parts were put by another process (an earlier run, a pipelined round), whose MD5
            # checks this one does not know of: a new object, each part checked as it goes up, passes.
            return _Problem(
                f"the {self.checksum_algorithm} checksum of the object cannot be verified ({why}), and its parts"
                " were not checked by their MD5 in this process (an earlier run sent them)",
                restartable=True,
            )
        # Stores write the part count after the digest ("-N") or not; the digest is what counts.
        if str(reported).partition("-")[0] != expected.partition("-")[0]:
            return _Problem(
                f"the store's {self.checksum_algorithm} checksum of the assembled object, {reported}, is not"
                f" that of the parts sent ({expected}): a part was corrupted on the way",
                restartable=True,
            )
        return None

    def _is_assembled(self, *, key: str, handle: str, parts: list[PartReceipt], size: int, unseen: bool) -> bool:
        try:
            head = self._head(key=key)
        except S3StorageError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return self._assembly_problem(head=head, handle=handle, parts=parts, size=size, unseen=unseen) is None

    def _with_retries(self, call: Callable[[], Any]) -> Any:
        """For the calls the transfer engine does not retry (abort, delete): a few tries, with backoff."""
        return storage_call_with_retries(call, retry=self.retry)

    def _call(self, operation: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return s3_call(operation, call, bucket=self.bucket)
