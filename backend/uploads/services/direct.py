"""Writes of direct uploads: creating one, signing its parts, cancelling and expiring it.

A DIRECT upload is RECEIVING while the client puts its parts into the bucket's multipart upload,
opened here at creation (`storage_upload_id`). The server never sees the bytes: it signs each
part's URL, checks each part the client reports in the bucket before it enters the ledger
(`ledger.py`), and once every part is in queues the worker that completes and verifies the object
(`finishing.py`). Cancelling or expiring it aborts the multipart upload.

Two kinds of client: one that declares the size (GraphQL `createUpload`: the part size and count
are the server's, each part may carry its SHA-256), and Uppy's `@uppy/aws-s3` through the
Companion routes, which tells neither size nor checksums. The second is `length_deferred`: its
`size` column holds the quota it reserved so far (it grows as parts are signed), while the API
reports its size as 0 until completion fixes it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from backend.logs import upload_log_bind
from backend.quotas.services import quota_reserve
from backend.uploads.errors import (
    BadUserInput,
    InvalidState,
    ServiceUnavailable,
    TooManyActiveUploads,
    UploadTooLarge,
)
from backend.uploads.models import FileUpload, UploadMode, UploadStatus
from backend.uploads.naming import filename_sanitise, storage_key_for
from backend.uploads.parts import MAX_PARTS, S3_MIN_PART_SIZE, part_count, part_size_for
from backend.uploads.progress import progress_publish
from backend.uploads.selectors import upload_active_count, upload_get_for_user
from backend.uploads.services.actions import SHA256_RE, upload_abort_store
from backend.uploads.services.resumable import EXPIRED, receiving_expires_at
from backend.uploads.services.transitions import upload_transition
from backend.uploads.storage import (
    DirectUploads,
    Storage,
    StorageError,
    get_capabilities,
    get_storage,
    storage_call_with_retries,
    storage_retry_policy,
)

logger = logging.getLogger(__name__)

DEFAULT_NAME = "upload"
DEFAULT_TYPE = "application/octet-stream"
# Parts one signUploadParts call may ask for.
MAX_SIGN_BATCH = 1000


class DirectStore(Storage, DirectUploads):
    """The store of direct uploads: the core plus presigning (S3)."""


@dataclass(frozen=True)
class PartToSign:
    part_number: int
    sha256: str | None = None  # base64 of the part's SHA-256 digest


@dataclass(frozen=True)
class SignedPart:
    part_number: int
    url: str
    headers: dict[str, str]
    expires_at: datetime


def direct_offered() -> bool:
    """Whether this server takes direct uploads: DIRECT_UPLOADS and a store that presigns parts."""
    return bool(settings.DIRECT_UPLOADS) and get_capabilities().direct is not None


def direct_store() -> DirectStore:
    if not direct_offered():
        raise BadUserInput("direct-to-bucket uploads are not offered by this server (S3 and DIRECT_UPLOADS only)")
    return cast(DirectStore, get_storage())


def part_checksums_wanted(upload: FileUpload) -> bool:
    """Whether every part of `upload` carries a SHA-256 the bucket checks (a client that declared its size)."""
    return settings.S3_CHECKSUM_ALGORITHM == "SHA256" and not upload.length_deferred


# --- creating ---------------------------------------------------------------------------------


def direct_create(
    *,
    user: User,
    filename: str | None,
    size: int | None,
    sha256: str | None = None,
    content_type: str | None = None,
) -> FileUpload:
    """A new DIRECT upload, RECEIVING, with the bucket's multipart upload open.

    `size` None (Uppy) defers the length to completion. Refused before anything is opened when over
    UPLOAD_MAX_BYTES, over the active-upload cap or over the quota. An empty file opens nothing: it
    is stored with one plain put when completed.
    """
    store = direct_store()
    expected = sha256_check(sha256)
    if size is not None and size < 0:
        raise BadUserInput("size must not be negative")
    if size is not None and size > settings.UPLOAD_MAX_BYTES:
        raise UploadTooLarge(f"uploads are limited to {settings.UPLOAD_MAX_BYTES} bytes")
    active = upload_active_count(user=user)
    if active >= settings.UPLOAD_MAX_ACTIVE_PER_USER:
        raise TooManyActiveUploads(f"you already have {active} uploads receiving, queued or uploading")
    upload_id = uuid.uuid4()
    upload_log_bind(upload_id)
    key = storage_key_for(upload_id)
    name = filename_sanitise(filename or DEFAULT_NAME)
    part_size = part_size_for(size=size or 0, requested=settings.UPLOAD_PART_SIZE, minimum=store.min_part_size)
    row = FileUpload(
        id=upload_id,
        owner=user,
        filename=name,
        content_type="",
        size=size or 0,
        length_deferred=size is None,
        sha256=None,
        expected_sha256=expected,
        status=UploadStatus.RECEIVING,
        mode=UploadMode.DIRECT,
        bytes_received=0,
        part_size=part_size if size is not None else 0,
        parts_total=part_count(size=size, part_size=part_size) if size is not None else 0,
        storage_backend=store.name,
        storage_key=key,
        sequence=1,
        expires_at=receiving_expires_at(),
    )
    if size != 0:
        row.storage_upload_id = store_call(
            lambda: store.direct_start(
                key=key,
                content_type=content_type or DEFAULT_TYPE,
                metadata={"filename": name},
                part_checksums=part_checksums_wanted(row),
            )
        )
    try:
        with transaction.atomic():
            quota_reserve(user=user, size=row.size)
            row.save(force_insert=True)
            transaction.on_commit(lambda: progress_publish(row))
    except BaseException:
        # Refused (quota) or not recorded: the multipart upload no row names must not stay open.
        if row.storage_upload_id:
            store.abort(key=key, handle=row.storage_upload_id)
        raise
    logger.info("upload %s created: direct, %s bytes", row.id, "deferred" if size is None else size)
    return row


# --- signing ----------------------------------------------------------------------------------


def direct_receiving_get(*, user: User, upload_id: uuid.UUID) -> FileUpload:
    """The caller's DIRECT upload, still RECEIVING; one past its expiry expires now (INVALID_STATE)."""
    upload = upload_get_for_user(user=user, upload_id=upload_id)
    if upload.mode != UploadMode.DIRECT:
        raise BadUserInput("this is not a direct upload (createUpload with mode DIRECT)")
    if upload.status != UploadStatus.RECEIVING:
        raise InvalidState(f"a {upload.status} upload takes no more parts")
    if upload.expires_at is not None and upload.expires_at < timezone.now():
        direct_expire(upload=upload)
        raise InvalidState("this upload expired: no part arrived for UPLOAD_RECEIVING_TTL seconds")
    return upload


def part_number_check(upload: FileUpload, number: int) -> None:
    """BAD_USER_INPUT unless `number` is a part of `upload`: 1..partsTotal, or 1..10,000 while the size is unknown."""
    highest = MAX_PARTS if upload.length_deferred else upload.parts_total
    if not 1 <= number <= highest:
        raise BadUserInput(f"part number {number} is outside 1..{highest}")


def _checksum_check(value: str | None, *, number: int) -> str:
    if not value:
        raise BadUserInput(f"part {number}: sha256 (base64 of the part's SHA-256 digest) is required here")
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadUserInput(f"part {number}: sha256 must be base64") from exc
    if len(digest) != 32:
        raise BadUserInput(f"part {number}: sha256 must be the base64 of a 32-byte digest")
    return base64.b64encode(digest).decode("ascii")


def direct_sign(*, user: User, upload_id: uuid.UUID, parts: list[PartToSign]) -> list[SignedPart]:
    """Presigned PUT URLs for `parts`, each with the headers to send and its expiry.

    With checksums (S3_CHECKSUM_ALGORITHM SHA256 and a declared size) each part's SHA-256 is
    signed in, so the bucket refuses other bytes. For an upload of unknown size (Uppy) the quota is
    reserved as parts are signed (each part counted at the largest part size seen, at least 5 MiB)
    and parts the bucket already holds enter the ledger, so its progress is published part by part.
    """
    store = direct_store()
    upload = direct_receiving_get(user=user, upload_id=upload_id)
    if not parts:
        raise BadUserInput("parts must name at least one part")
    if len(parts) > MAX_SIGN_BATCH:
        raise BadUserInput(f"at most {MAX_SIGN_BATCH} parts can be signed at once")
    with_checksum = part_checksums_wanted(upload)
    checksums = {}
    for part in parts:
        part_number_check(upload, part.part_number)
        checksums[part.part_number] = _checksum_check(part.sha256, number=part.part_number) if with_checksum else None
    if upload.length_deferred:
        _reserve_for_parts(store=store, upload=upload, highest=max(checksums))
    ttl = settings.DIRECT_UPLOAD_URL_TTL
    signed_at = timezone.now()
    signed = []
    for part in parts:
        put = store.presign_part(
            key=upload.storage_key,
            handle=str(upload.storage_upload_id),
            part_number=part.part_number,
            ttl=ttl,
            checksum=checksums[part.part_number],
        )
        signed.append(
            SignedPart(
                part_number=part.part_number,
                url=put.url,
                headers=put.headers,
                expires_at=signed_at + timedelta(seconds=ttl),
            )
        )
    FileUpload.objects.filter(id=upload.id, status=UploadStatus.RECEIVING).update(expires_at=receiving_expires_at())
    return signed


def _reserve_for_parts(*, store: DirectStore, upload: FileUpload, highest: int) -> None:
    """An upload of unknown size: record the parts the bucket holds, and reserve quota up to part `highest`."""
    from backend.uploads.services.direct_parts import ledger_take_listed

    listed = store_call(lambda: store.list_parts(key=upload.storage_key, handle=str(upload.storage_upload_id)))
    ledger_take_listed(upload=upload, listed=listed)
    largest = max([S3_MIN_PART_SIZE, *(r.size for r in listed)])
    estimate = highest * largest
    if estimate > settings.UPLOAD_MAX_BYTES:
        raise UploadTooLarge(
            f"part {highest} would take this upload past {settings.UPLOAD_MAX_BYTES} bytes (parts of {largest} bytes)"
        )
    with transaction.atomic():
        current = FileUpload.objects.filter(id=upload.id).values_list("size", flat=True).first() or 0
        if estimate <= current:
            return
        quota_reserve(user=upload.owner, size=estimate - current)
        FileUpload.objects.filter(id=upload.id, status=UploadStatus.RECEIVING, length_deferred=True).update(
            size=estimate
        )


# --- cancelling and expiring ------------------------------------------------------------------


def direct_cancel(*, upload: FileUpload) -> FileUpload:
    """RECEIVING -> CANCELLED, and the bucket's multipart upload aborted with every part in it."""
    cancelled = upload_transition(
        upload_id=upload.id, to=UploadStatus.CANCELLED, expected=[UploadStatus.RECEIVING], expires_at=None
    )
    _abort_quietly(cancelled, why="cancelled")
    logger.info("upload %s cancelled while receiving; its multipart upload is aborted", upload.id)
    return cancelled


def direct_expire(*, upload: FileUpload) -> bool:
    """RECEIVING past `expires_at` -> FAILED ("expired"), its multipart upload aborted; False if it moved on."""
    if not FileUpload.objects.filter(
        id=upload.id, status=UploadStatus.RECEIVING, expires_at__lt=timezone.now()
    ).exists():
        return False
    try:
        expired = upload_transition(
            upload_id=upload.id,
            to=UploadStatus.FAILED,
            expected=[UploadStatus.RECEIVING],
            error=EXPIRED,
            expires_at=None,
        )
    except InvalidState:
        return False
    _abort_quietly(expired, why="expired")
    logger.info("upload %s expired while receiving; its multipart upload is aborted", upload.id)
    return True


def direct_refuse(*, upload: FileUpload, error: Exception, **fields: Any) -> None:
    """RECEIVING -> FAILED naming `error` (its code first), the multipart upload aborted: nothing is kept."""
    code = getattr(error, "code", "INTERNAL_SERVER_ERROR")
    try:
        failed = upload_transition(
            upload_id=upload.id,
            to=UploadStatus.FAILED,
            expected=[UploadStatus.RECEIVING],
            error=f"{code}: {error}"[:2000],
            expires_at=None,
            **fields,
        )
    except InvalidState:
        return
    _abort_quietly(failed, why="refused")


def _abort_quietly(upload: FileUpload, *, why: str) -> None:
    """Abort the open multipart upload; on a store error the row keeps its handle for the sweep."""
    try:
        upload_abort_store(upload=upload)
    except StorageError:
        logger.warning("upload %s %s; aborting its multipart upload failed (the sweep retries)", upload.id, why)


def store_call(call: Any) -> Any:
    """A store call, a retryable failure tried again with backoff; SERVICE_UNAVAILABLE if the bucket fails."""
    try:
        return storage_call_with_retries(call, retry=storage_retry_policy())
    except StorageError as exc:
        logger.warning("direct upload: the bucket failed: %s", exc)
        raise ServiceUnavailable(f"the bucket did not answer as expected; try again ({exc})") from exc


def sha256_check(sha256: str | None) -> str | None:
    """A declared whole-file sha256 as lowercase hex; BAD_USER_INPUT unless it is 64 hex digits."""
    if sha256 is None:
        return None
    if not SHA256_RE.match(sha256):
        raise BadUserInput("sha256 must be 64 hexadecimal digits")
    return sha256.lower()
