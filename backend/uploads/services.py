"""Writes: every change to an upload goes through these functions.

State moves happen in one place, `upload_transition`, as a conditional UPDATE on the expected
current status (and on the transfer's claim where a job is involved). It works the same on
SQLite and PostgreSQL, and two writers racing for one move cannot both win. Every move bumps
`sequence` and publishes the new state after the transaction commits.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import django_rq
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from backend.uploads.errors import (
    BadUserInput,
    ChecksumMismatch,
    InvalidState,
    TooManyActiveUploads,
    UnsupportedMediaType,
)
from backend.uploads.models import ACTIVE_STATUSES, FileUpload, UploadPart, UploadStatus
from backend.uploads.naming import filename_sanitise, storage_key_for
from backend.uploads.parts import part_count, part_size_for
from backend.uploads.progress import progress_publish
from backend.uploads.selectors import upload_get_for_user
from backend.uploads.sniffing import content_type_allowed, content_type_sniff
from backend.uploads.staging import StagedFile, staging_delete, staging_path
from backend.uploads.storage import PartReceipt, get_storage

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")

# The state table of CONTRACT section 3: which status each status may move to.
ALLOWED_MOVES: dict[str, frozenset[str]] = {
    UploadStatus.QUEUED: frozenset({UploadStatus.UPLOADING, UploadStatus.CANCELLED}),
    UploadStatus.UPLOADING: frozenset(
        {UploadStatus.COMPLETED, UploadStatus.FAILED, UploadStatus.CANCELLED, UploadStatus.QUEUED}
    ),
    UploadStatus.COMPLETED: frozenset(),
    UploadStatus.FAILED: frozenset({UploadStatus.QUEUED}),
    UploadStatus.CANCELLED: frozenset({UploadStatus.QUEUED}),
}


class ClaimLost(Exception):
    """The transfer no longer owns the upload: it was cancelled, or another run took it."""


# --- creating ---------------------------------------------------------------------------------


def upload_create(*, user: AbstractBaseUser, file: StagedFile, sha256: str | None) -> FileUpload:
    """Accept a staged file: validate it, create the row, queue the transfer after commit.

    On any refusal the staged bytes are left in `incoming/` for the caller's clean-up, so nothing
    of a refused upload remains.
    """
    if sha256 is not None:
        if not SHA256_RE.match(sha256):
            raise BadUserInput("sha256 must be 64 hexadecimal digits")
        if sha256.lower() != file.sha256:
            raise ChecksumMismatch(f"sha256 of the bytes received is {file.sha256}, not {sha256.lower()}")
    content_type = content_type_sniff(file.head)
    if not content_type_allowed(content_type, settings.UPLOAD_ALLOWED_TYPES):
        raise UnsupportedMediaType(f"content type {content_type} is not allowed here")

    storage = get_storage()
    part_size = part_size_for(size=file.size, requested=settings.UPLOAD_PART_SIZE, minimum=storage.min_part_size)
    upload_id = uuid.uuid4()
    with transaction.atomic():
        active = FileUpload.objects.filter(owner=user, status__in=ACTIVE_STATUSES).count()
        if active >= settings.UPLOAD_MAX_ACTIVE_PER_USER:
            raise TooManyActiveUploads(f"you already have {active} uploads queued or uploading")
        upload = FileUpload.objects.create(
            id=upload_id,
            owner=user,
            filename=filename_sanitise(file.name),
            content_type=content_type,
            size=file.size,
            sha256=file.sha256,
            status=UploadStatus.QUEUED,
            part_size=part_size,
            parts_total=part_count(size=file.size, part_size=part_size),
            storage_backend=storage.name,
            storage_key=storage_key_for(upload_id),
            sequence=1,
            staged_at=timezone.now(),
        )
        file.path.rename(staging_path(upload_id))
        try:
            _upload_enqueue(upload)
        except Exception:
            staging_path(upload_id).rename(file.path)
            raise
    logger.info("upload %s accepted: %s, %d bytes", upload.id, upload.filename, upload.size)
    return upload


def _upload_enqueue(upload: FileUpload) -> None:
    """Queue the transfer job once the surrounding transaction commits."""
    from backend.uploads.jobs import upload_transfer

    job_id = f"transfer-{upload.id}-{upload.sequence}"
    FileUpload.objects.filter(id=upload.id).update(job_id=job_id)
    timeout = 600 + upload.size // (1024 * 1024) + upload.parts_total * settings.UPLOAD_PART_DELAY_MS // 1000 * 2
    django_rq.get_queue("default").enqueue(upload_transfer, str(upload.id), job_id=job_id, job_timeout=timeout)


# --- moving through the state table -----------------------------------------------------------


def upload_transition(
    *,
    upload_id: uuid.UUID,
    to: str,
    expected: Iterable[str] | None = None,
    owned_by: uuid.UUID | None = None,
    part_number: int | None = None,
    **fields: Any,
) -> FileUpload:
    """Move an upload to status `to` if the state table allows it from the status it has now.

    `expected` narrows the statuses the move may start from; `owned_by` requires the row to carry
    that transfer claim. Raises InvalidState when no row matched, or ClaimLost with `owned_by`.
    """
    sources = [s for s, targets in ALLOWED_MOVES.items() if to in targets]
    if expected is not None:
        sources = [s for s in sources if s in set(expected)]
    rows = FileUpload.objects.filter(id=upload_id, status__in=sources)
    if owned_by is not None:
        rows = rows.filter(claim=owned_by)
    with transaction.atomic():
        moved = rows.update(status=to, sequence=F("sequence") + 1, updated_at=timezone.now(), **fields)
        if not moved:
            if owned_by is not None:
                raise ClaimLost(f"upload {upload_id} is no longer this transfer's")
            raise InvalidState(f"an upload in this state cannot become {to}")
        upload = FileUpload.objects.get(id=upload_id)
        transaction.on_commit(lambda: progress_publish(upload, part_number=part_number))
    return upload


def upload_claim(*, upload_id: uuid.UUID) -> tuple[FileUpload, uuid.UUID] | None:
    """Take a QUEUED upload for one transfer run; None if it is not QUEUED (cancelled, taken)."""
    claim = uuid.uuid4()
    try:
        upload = upload_transition(
            upload_id=upload_id,
            to=UploadStatus.UPLOADING,
            expected=[UploadStatus.QUEUED],
            claim=claim,
            attempts=F("attempts") + 1,
            heartbeat_at=timezone.now(),
            error=None,
        )
    except InvalidState:
        return None
    return upload, claim


def upload_set_storage_handle(*, upload_id: uuid.UUID, claim: uuid.UUID, handle: str) -> None:
    if not FileUpload.objects.filter(id=upload_id, claim=claim, status=UploadStatus.UPLOADING).update(
        storage_upload_id=handle, updated_at=timezone.now()
    ):
        raise ClaimLost(f"upload {upload_id} is no longer this transfer's")


def upload_record_part(*, upload_id: uuid.UUID, claim: uuid.UUID, receipt: PartReceipt) -> FileUpload:
    """Add a confirmed part to the ledger and the counters, then publish. Idempotent per part."""
    with transaction.atomic():
        owned = FileUpload.objects.filter(id=upload_id, claim=claim, status=UploadStatus.UPLOADING)
        try:
            with transaction.atomic():
                UploadPart.objects.create(
                    upload_id=upload_id,
                    part_number=receipt.part_number,
                    size=receipt.size,
                    etag=receipt.etag,
                    checksum=receipt.checksum,
                )
        except IntegrityError:
            UploadPart.objects.filter(upload_id=upload_id, part_number=receipt.part_number).update(
                etag=receipt.etag, checksum=receipt.checksum
            )
            counters: dict[str, Any] = {}
        else:
            counters = {"bytes_uploaded": F("bytes_uploaded") + receipt.size, "parts_uploaded": F("parts_uploaded") + 1}
        now = timezone.now()
        if not owned.update(sequence=F("sequence") + 1, updated_at=now, heartbeat_at=now, **counters):
            raise ClaimLost(f"upload {upload_id} is no longer this transfer's")
        upload = FileUpload.objects.get(id=upload_id)
        transaction.on_commit(lambda: progress_publish(upload, part_number=receipt.part_number))
    return upload


def upload_heartbeat(*, upload_id: uuid.UUID, claim: uuid.UUID) -> bool:
    """Tell the reaper this transfer is alive; False if the claim is gone (stop transferring)."""
    return bool(
        FileUpload.objects.filter(id=upload_id, claim=claim, status=UploadStatus.UPLOADING).update(
            heartbeat_at=timezone.now()
        )
    )


def upload_complete(*, upload_id: uuid.UUID, claim: uuid.UUID) -> FileUpload:
    upload = upload_transition(
        upload_id=upload_id,
        to=UploadStatus.COMPLETED,
        owned_by=claim,
        completed_at=timezone.now(),
        staged_at=None,
        error=None,
    )
    staging_delete(upload.id)
    logger.info("upload %s completed", upload.id)
    return upload


def upload_fail(*, upload_id: uuid.UUID, claim: uuid.UUID, error: str) -> FileUpload:
    upload = upload_transition(
        upload_id=upload_id, to=UploadStatus.FAILED, owned_by=claim, error=error[:2000], staged_at=timezone.now()
    )
    logger.warning("upload %s failed: %s", upload.id, error)
    return upload


def upload_release(*, upload_id: uuid.UUID, claim: uuid.UUID) -> FileUpload:
    """Give a transfer back to the queue (the worker is stopping): UPLOADING -> QUEUED, re-enqueued."""
    with transaction.atomic():
        upload = upload_transition(upload_id=upload_id, to=UploadStatus.QUEUED, owned_by=claim, claim=None)
        _upload_enqueue(upload)
    return upload


# --- what a client asks for -------------------------------------------------------------------


def upload_cancel(*, user: AbstractBaseUser, upload_id: uuid.UUID) -> FileUpload:
    """QUEUED/UPLOADING -> CANCELLED. A running transfer notices before its next part and aborts."""
    upload = upload_get_for_user(user=user, upload_id=upload_id)
    was_queued = upload.status == UploadStatus.QUEUED
    upload = upload_transition(
        upload_id=upload.id, to=UploadStatus.CANCELLED, expected=ACTIVE_STATUSES, staged_at=timezone.now()
    )
    if was_queued:
        _job_cancel(upload.job_id)
        if upload.storage_upload_id:
            upload_abort_store(upload=upload)
    return upload


def upload_retry(*, user: AbstractBaseUser, upload_id: uuid.UUID) -> FileUpload:
    """FAILED -> QUEUED resuming from confirmed parts; CANCELLED -> QUEUED starting over from 0."""
    upload = upload_get_for_user(user=user, upload_id=upload_id)
    if upload.status not in (UploadStatus.FAILED, UploadStatus.CANCELLED):
        raise InvalidState(f"a {upload.status} upload cannot be retried")
    if not staging_path(upload.id).exists():
        raise InvalidState("the staged bytes of this upload are gone; send the file again")
    fresh_start: dict[str, Any] = {}
    with transaction.atomic():
        if upload.status == UploadStatus.CANCELLED:
            UploadPart.objects.filter(upload_id=upload.id).delete()
            fresh_start = {"bytes_uploaded": 0, "parts_uploaded": 0, "storage_upload_id": None}
        upload = upload_transition(
            upload_id=upload.id,
            to=UploadStatus.QUEUED,
            expected=[upload.status],
            error=None,
            staged_at=timezone.now(),
            **fresh_start,
        )
        _upload_enqueue(upload)
    return upload


def upload_delete(*, user: AbstractBaseUser, upload_id: uuid.UUID) -> bool:
    """Cancel if active, then remove the object, the open multipart upload, staged bytes and row."""
    upload = upload_get_for_user(user=user, upload_id=upload_id)
    if upload.status in ACTIVE_STATUSES:
        try:
            upload = upload_cancel(user=user, upload_id=upload.id)
        except InvalidState:
            upload = upload_get_for_user(user=user, upload_id=upload_id)
    storage = get_storage()
    if upload.storage_upload_id:
        upload_abort_store(upload=upload)
    if upload.status == UploadStatus.COMPLETED:
        storage.delete_object(key=upload.storage_key)
    staging_delete(upload.id)
    FileUpload.objects.filter(id=upload.id).delete()
    logger.info("upload %s deleted", upload.id)
    return True


def upload_abort_store(*, upload: FileUpload) -> None:
    """Abort the store's open multipart upload of `upload` and forget it and its ledger."""
    if upload.storage_upload_id:
        get_storage().abort(key=upload.storage_key, handle=upload.storage_upload_id)
    UploadPart.objects.filter(upload_id=upload.id).delete()
    FileUpload.objects.filter(id=upload.id, storage_upload_id=upload.storage_upload_id).update(storage_upload_id=None)


def _job_cancel(job_id: str | None) -> None:
    if not job_id:
        return
    try:
        job = django_rq.get_queue("default").fetch_job(job_id)
        if job is not None:
            job.cancel()
    except Exception:
        # The claim check at job start already refuses a cancelled upload; this only tidies the queue.
        logger.warning("could not remove queued job %s", job_id, exc_info=True)


# --- periodic upkeep --------------------------------------------------------------------------


def upload_requeue_stale(*, stale_after_seconds: float) -> list[uuid.UUID]:
    """Give back to the queue every UPLOADING upload whose transfer has been silent too long.

    The conditional move on the old claim fences the silent run: if it wakes up, its next
    ledger write finds the claim gone and it stops.
    """
    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    requeued = []
    for upload_id, claim in FileUpload.objects.filter(
        status=UploadStatus.UPLOADING, heartbeat_at__lt=cutoff
    ).values_list("id", "claim"):
        try:
            with transaction.atomic():
                upload = upload_transition(upload_id=upload_id, to=UploadStatus.QUEUED, owned_by=claim, claim=None)
                _upload_enqueue(upload)
        except ClaimLost:
            continue
        logger.warning("upload %s: transfer silent for %ss, queued again", upload_id, stale_after_seconds)
        requeued.append(upload_id)
    return requeued
