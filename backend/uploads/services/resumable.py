"""Writes of resumable uploads: creating, concatenating, completing, cancelling and expiring them.

An upload that arrives in chunks (a tus PATCH, an `uploadChunk`) is RECEIVING while its bytes come
in, appended to `staging/<id>` (`chunks.ChunkAppend`). When the last byte is in it is verified
(size, the declared sha256, the content type) and moves to QUEUED, or FAILED; a tus DELETE or
`cancelUpload` makes it CANCELLED and removes its bytes; one with no new byte for
`UPLOAD_RECEIVING_TTL` expires (FAILED "expired", bytes removed) when the sweep or the next
request finds it. Partial uploads (tus concatenation) are pieces: RECEIVING until a final upload
takes them (`concatenation`), never transferred, not counted as active, not listed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from backend.logs import upload_log_bind
from backend.quotas.services import quota_reserve
from backend.uploads import services
from backend.uploads.errors import (
    BadUserInput,
    ChecksumMismatch,
    Gone,
    InsufficientStorage,
    InvalidState,
    TooManyActiveUploads,
    UnsupportedMediaType,
    UploadTooLarge,
)
from backend.uploads.metrics import metrics_count
from backend.uploads.models import ConcatRole, FileUpload, UploadMode, UploadStatus
from backend.uploads.naming import filename_sanitise, storage_key_for
from backend.uploads.parts import part_count, part_size_for
from backend.uploads.progress import progress_publish
from backend.uploads.resumable.hashing import running_hash_forget
from backend.uploads.selectors import upload_active_count, upload_get_for_user
from backend.uploads.sniffing import SNIFF_BYTES, content_type_allowed, content_type_sniff
from backend.uploads.staging import staging_delete, staging_path, staging_short_of_space
from backend.uploads.storage import get_storage

logger = logging.getLogger(__name__)

EXPIRED = "expired: no byte arrived for UPLOAD_RECEIVING_TTL seconds"
DEFAULT_NAME = "upload"


def receiving_expires_at() -> datetime:
    return timezone.now() + timedelta(seconds=settings.UPLOAD_RECEIVING_TTL)


def sizing(size: int | None) -> dict[str, int]:
    """Part size and count. A deferred length (None) is sized for the largest upload allowed, so the
    part size is fixed from the first byte (whole parts are sent while the bytes arrive, issue 19)
    and any length set later fits in 10,000 parts; its count stays 0 until the length is known."""
    sized_for = settings.UPLOAD_MAX_BYTES if size is None else size
    part_size = part_size_for(size=sized_for, requested=settings.UPLOAD_PART_SIZE, minimum=get_storage().min_part_size)
    return {"part_size": part_size, "parts_total": part_count(size=size or 0, part_size=part_size)}


def check_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    if not services.SHA256_RE.match(sha256):
        raise BadUserInput("sha256 must be 64 hexadecimal digits")
    return sha256.lower()


def check_room(*, user: User, size: int | None, counted: bool) -> None:
    """The refusals due before any byte is stored: size, staging space, active uploads (and quota)."""
    if size is not None and size < 0:
        raise BadUserInput("the length must not be negative")
    if size is not None and size > settings.UPLOAD_MAX_BYTES:
        raise UploadTooLarge(f"uploads are limited to {settings.UPLOAD_MAX_BYTES} bytes")
    if staging_short_of_space() is not None:
        raise InsufficientStorage("the server is short of staging space; try again later")
    if counted:
        active = upload_active_count(user=user)
        if active >= settings.UPLOAD_MAX_ACTIVE_PER_USER:
            raise TooManyActiveUploads(f"you already have {active} uploads receiving, queued or uploading")


# --- creating ---------------------------------------------------------------------------------


def resumable_create(
    *,
    user: User,
    filename: str | None,
    size: int | None,
    sha256: str | None = None,
    partial: bool = False,
    tus_metadata: str = "",
    concat_header: str = "",
) -> FileUpload:
    """A new RESUMABLE upload, RECEIVING, with an empty staged file; `size` None defers the length.

    Refused before anything is stored when over UPLOAD_MAX_BYTES, short of staging space or over
    the active-upload cap (partial uploads are not counted). An empty file is complete at once.
    """
    expected = check_sha256(sha256)
    check_room(user=user, size=size, counted=not partial)
    upload_id = uuid.uuid4()
    upload_log_bind(upload_id)
    known = size if size is not None else 0
    with transaction.atomic():
        # A deferred length reserves nothing yet: its size is reserved when it becomes known.
        quota_reserve(user=user, size=known)
        upload = FileUpload.objects.create(
            id=upload_id,
            owner=user,
            filename=filename_sanitise(filename or DEFAULT_NAME) if filename or not partial else DEFAULT_NAME,
            content_type="",
            size=known,
            length_deferred=size is None,
            sha256=None,
            expected_sha256=expected,
            status=UploadStatus.RECEIVING,
            mode=UploadMode.RESUMABLE,
            bytes_received=0,
            storage_backend=get_storage().name,
            storage_key=storage_key_for(upload_id),
            sequence=1,
            expires_at=receiving_expires_at(),
            concat_role=ConcatRole.PARTIAL if partial else ConcatRole.NONE,
            concat_header=concat_header,
            tus_metadata=tus_metadata,
            **sizing(size),
        )
        path = staging_path(upload_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        transaction.on_commit(lambda: progress_publish(upload))
    logger.info("upload %s created: resumable, %s bytes", upload.id, "deferred" if size is None else size)
    if size == 0 and not partial:
        return resumable_complete(upload=upload, digest=hashlib.sha256(), head=b"")
    return upload


def resumable_set_length(*, upload: FileUpload, size: int) -> FileUpload:
    """Fix a deferred length (tus: the Upload-Length of a later PATCH). Once set it never changes."""
    if not upload.length_deferred:
        if size != upload.size:
            raise BadUserInput(f"the length of this upload is {upload.size} and cannot change")
        return upload
    if size < upload.bytes_received:
        raise BadUserInput(f"the length {size} is below the {upload.bytes_received} bytes already received")
    if size > settings.UPLOAD_MAX_BYTES:
        raise UploadTooLarge(f"uploads are limited to {settings.UPLOAD_MAX_BYTES} bytes")
    # The part size was fixed at creation (parts may be in the bucket already); only the count is new.
    fields = {"size": size, "length_deferred": False, "parts_total": part_count(size=size, part_size=upload.part_size)}
    with transaction.atomic():
        quota_reserve(user=upload.owner, size=size)
        rows = FileUpload.objects.filter(id=upload.id, length_deferred=True, status=UploadStatus.RECEIVING)
        if not rows.update(**fields):
            raise InvalidState("the length of this upload was set meanwhile")
    for name, value in fields.items():
        setattr(upload, name, value)
    return upload


# --- completing -------------------------------------------------------------------------------


def resumable_judge_type(*, upload: FileUpload, head: bytes) -> str:
    """Sniff the first bytes; an upload of a type outside UPLOAD_ALLOWED_TYPES ends FAILED at once."""
    content_type = content_type_sniff(head[:SNIFF_BYTES])
    if not content_type_allowed(content_type, settings.UPLOAD_ALLOWED_TYPES):
        message = f"content type {content_type} is not allowed here"
        _fail_receiving(upload=upload, error=f"UNSUPPORTED_MEDIA_TYPE: {message}", content_type=content_type)
        raise UnsupportedMediaType(message)
    FileUpload.objects.filter(id=upload.id).update(content_type=content_type)
    upload.content_type = content_type
    return content_type


def resumable_complete(*, upload: FileUpload, digest: object, head: bytes) -> FileUpload:
    """Every byte is in: verify it (declared sha256, content type) and queue it, or end it FAILED.

    `digest` is the running sha256 of all the bytes (hashlib object), so nothing is read again.
    """
    sha256 = digest.hexdigest()  # type: ignore[attr-defined]
    if not upload.content_type:
        resumable_judge_type(upload=upload, head=head)
    if upload.expected_sha256 and upload.expected_sha256 != sha256:
        message = f"sha256 of the bytes received is {sha256}, not {upload.expected_sha256}"
        _fail_receiving(upload=upload, error=f"CHECKSUM_MISMATCH: {message}", sha256=sha256)
        raise ChecksumMismatch(message)
    running_hash_forget(upload.id)
    with transaction.atomic():
        queued = services.upload_transition(
            upload_id=upload.id,
            to=UploadStatus.QUEUED,
            expected=[UploadStatus.RECEIVING],
            sha256=sha256,
            bytes_received=upload.size,
            staged_at=timezone.now(),
            expires_at=None,
            content_type=upload.content_type,
        )
        services.upload_enqueue(queued)
    metrics_count("bytes_received", queued.size)
    logger.info("upload %s received whole: %s, %d bytes", queued.id, queued.filename, queued.size)
    return queued


def _fail_receiving(*, upload: FileUpload, error: str, **fields: Any) -> None:
    """RECEIVING -> FAILED with its bytes removed (a refused upload keeps nothing)."""
    running_hash_forget(upload.id)
    # Cancelled or expired meanwhile: its bytes go all the same.
    with contextlib.suppress(InvalidState):
        failed = services.upload_transition(
            upload_id=upload.id,
            to=UploadStatus.FAILED,
            expected=[UploadStatus.RECEIVING],
            error=error,
            staged_at=None,
            expires_at=None,
            **fields,
        )
        services.upload_pipeline_abort(upload=failed)
    staging_delete(upload.id)
    logger.info("upload %s failed while receiving: %s", upload.id, error)


# --- cancelling, terminating, expiring --------------------------------------------------------


def resumable_cancel(*, upload: FileUpload) -> FileUpload:
    """RECEIVING -> CANCELLED; the bytes received so far are removed (there is nothing to retry).

    A writer still appending finds the move at its next checkpoint and stops.
    """
    cancelled = services.upload_transition(
        upload_id=upload.id,
        to=UploadStatus.CANCELLED,
        expected=[UploadStatus.RECEIVING],
        staged_at=None,
        expires_at=None,
    )
    running_hash_forget(upload.id)
    staging_delete(upload.id)
    services.upload_pipeline_abort(upload=cancelled)
    logger.info("upload %s cancelled while receiving", upload.id)
    return cancelled


def resumable_gone(upload: FileUpload) -> bool:
    """Whether the upload takes no more requests: cancelled, expired, or failed before its transfer."""
    if upload.status == UploadStatus.CANCELLED:
        return True
    return upload.status == UploadStatus.FAILED and upload.attempts == 0


def resumable_get_for_user(*, user: User, upload_id: uuid.UUID, only: tuple[str, ...] = ()) -> FileUpload:
    """The caller's upload (partial ones included) for a tus request; one past its expiry expires now.

    `only`: the columns to read, as for `upload_get_for_user` (status and expires_at are needed here).
    """
    upload = upload_get_for_user(user=user, upload_id=upload_id, only=only)
    if upload.status == UploadStatus.RECEIVING and upload.expires_at is not None and upload.expires_at < timezone.now():
        resumable_expire(upload=upload)
        raise Gone("this upload expired")
    return upload


def resumable_terminate(*, user: User, upload_id: uuid.UUID) -> None:
    """tus DELETE: the upload CANCELLED and its bytes removed; GONE if that already happened.

    A finished upload (COMPLETED, or FAILED in its transfer) cannot be cancelled: it is deleted
    instead (object, staged bytes and row), as `deleteUpload` does.
    """
    upload = resumable_get_for_user(user=user, upload_id=upload_id)
    if resumable_gone(upload):
        raise Gone("this upload was cancelled or has expired")
    if upload.status == UploadStatus.RECEIVING:
        try:
            resumable_cancel(upload=upload)
            return
        except InvalidState:
            upload = upload_get_for_user(user=user, upload_id=upload_id)
    if upload.status in (UploadStatus.QUEUED, UploadStatus.UPLOADING):
        try:
            services.upload_cancel(user=user, upload_id=upload.id)
        except InvalidState:
            pass
        else:
            FileUpload.objects.filter(id=upload.id).update(staged_at=None)
            staging_delete(upload.id)
            return
    services.upload_delete(user=user, upload_id=upload.id)


def resumable_expire(*, upload: FileUpload) -> bool:
    """RECEIVING past `expires_at` -> FAILED ("expired"), its bytes removed; False if it moved on."""
    moved = FileUpload.objects.filter(id=upload.id, status=UploadStatus.RECEIVING, expires_at__lt=timezone.now())
    if not moved.exists():
        return False
    try:
        services.upload_transition(
            upload_id=upload.id,
            to=UploadStatus.FAILED,
            expected=[UploadStatus.RECEIVING],
            error=EXPIRED,
            staged_at=None,
            expires_at=None,
        )
    except InvalidState:
        return False
    running_hash_forget(upload.id)
    staging_delete(upload.id)
    current = FileUpload.objects.filter(id=upload.id).first()
    if current is not None:
        services.upload_pipeline_abort(upload=current)
    logger.info("upload %s expired while receiving; its bytes are removed", upload.id)
    return True


def resumable_expire_due() -> list[FileUpload]:
    """Expire every RECEIVING upload past its `expires_at` (the sweep calls this); the ones expired."""
    due = FileUpload.objects.filter(status=UploadStatus.RECEIVING, expires_at__lt=timezone.now())
    return [upload for upload in due if resumable_expire(upload=upload)]
