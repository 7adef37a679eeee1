"""What the worker does for a DIRECT upload: complete the object from the ledger and verify it.

The job (`jobs.upload_transfer`) has claimed the upload (QUEUED -> UPLOADING); this completes the
bucket's multipart upload with the parts the ledger recorded, checks the object's size (and, with
MD5 ETags, that it is exactly those parts: `S3Storage.complete`), sniffs its first bytes for the
content type, and when the client declared a sha256 reads the whole object back, streamed in 1 MiB
chunks, and compares. Any refusal removes the object and fails the transfer with the contract's
code first in the error (`CHECKSUM_MISMATCH: ...`). Run again after a crash it finds the object
already complete (`complete` accepts NoSuchUpload when the object is the right one) and verifies
again.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings

from backend.uploads import services
from backend.uploads.models import FileUpload, UploadPart, UploadStatus
from backend.uploads.sniffing import SNIFF_BYTES, content_type_allowed, content_type_sniff
from backend.uploads.storage import DirectUploads, PartReceipt, Storage, StorageError, storage_call_with_retries
from backend.uploads.transfer import TransferFailed, TransferStopped

logger = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
T = TypeVar("T")


def direct_finish(*, upload: FileUpload, claim: uuid.UUID, storage: Storage) -> None:
    """Complete and verify `upload`'s object; raises TransferFailed (object removed) or TransferStopped."""
    if not isinstance(storage, DirectUploads):
        raise TransferFailed("this server's store takes no direct uploads (STORAGE_BACKEND is not s3)")
    if upload.size == 0:
        _call(lambda: storage.put_object(key=upload.storage_key, data=b"", content_type="application/octet-stream", metadata={}))
    else:
        receipts = [
            PartReceipt(part_number=p.part_number, size=p.size, etag=p.etag, checksum=p.checksum)
            for p in UploadPart.objects.filter(upload_id=upload.id).order_by("part_number")
        ]
        if [r.part_number for r in receipts] != list(range(1, upload.parts_total + 1)):
            raise TransferFailed("the part ledger is incomplete")
        handle = str(upload.storage_upload_id or "")
        _call(lambda: storage.complete(key=upload.storage_key, handle=handle, parts=receipts, size=upload.size))
    head = b"".join(_call(lambda: list(storage.object_read(key=upload.storage_key, length=SNIFF_BYTES))))
    content_type = content_type_sniff(head)
    if not content_type_allowed(content_type, settings.UPLOAD_ALLOWED_TYPES):
        _reject(upload, storage, f"UNSUPPORTED_MEDIA_TYPE: content type {content_type} is not allowed here")
    fields: dict[str, object] = {"content_type": content_type}
    if upload.expected_sha256:
        digest = _object_sha256(upload=upload, claim=claim, storage=storage)
        if digest != upload.expected_sha256:
            _reject(
                upload,
                storage,
                f"CHECKSUM_MISMATCH: sha256 of the object in the bucket is {digest}, not {upload.expected_sha256}",
            )
        fields["sha256"] = digest
    elif upload.size == 0:
        fields["sha256"] = hashlib.sha256(b"").hexdigest()
    if not FileUpload.objects.filter(id=upload.id, claim=claim, status=UploadStatus.UPLOADING).update(**fields):
        raise services.ClaimLost(f"upload {upload.id} is no longer this transfer's")


def _object_sha256(*, upload: FileUpload, claim: uuid.UUID, storage: DirectUploads) -> str:
    """The object's sha256, read back in chunks (memory stays at one chunk), heartbeating as it goes."""
    beat_every = settings.UPLOAD_HEARTBEAT_SECONDS
    last_beat = time.monotonic()
    attempts = max(1, settings.UPLOAD_PART_RETRIES)
    for attempt in range(1, attempts + 1):
        digest = hashlib.sha256()
        try:
            for chunk in storage.object_read(key=upload.storage_key, chunk_size=READ_CHUNK):
                digest.update(chunk)
                if time.monotonic() - last_beat >= beat_every:
                    last_beat = time.monotonic()
                    if not services.upload_heartbeat(upload_id=upload.id, claim=claim):
                        raise TransferStopped("the upload was taken from this run while it was read back")
        except StorageError as exc:
            if not exc.retryable or attempt == attempts:
                raise TransferFailed(f"reading the object back failed: {exc}") from exc
            logger.info("upload %s: reading back failed (attempt %d): %s", upload.id, attempt, exc)
            continue
        return digest.hexdigest()
    raise AssertionError("unreachable")


def _reject(upload: FileUpload, storage: Storage, error: str) -> None:
    """The object is not what the client declared: remove it, and fail the transfer saying why."""
    try:
        storage.delete_object(key=upload.storage_key)
    except StorageError:
        logger.warning("upload %s: removing the refused object failed; the sweep removes it", upload.id)
    raise TransferFailed(error)


def _call(call: Callable[[], T]) -> T:
    try:
        return storage_call_with_retries(call, attempts=settings.UPLOAD_PART_RETRIES)
    except StorageError as exc:
        raise TransferFailed(str(exc)) from exc
