"""Upload actions: what a client asks for (create, cancel, retry, delete), and the clean-up after a stop.

Each validates, moves the state through `transitions.upload_transition`, and queues the transfer
through `queueing.upload_enqueue` once the transaction commits.
"""

from __future__ import annotations

import logging
import re
import uuid
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from backend.logs import upload_log_bind
from backend.quotas.services import quota_reserve
from backend.uploads.errors import (
    BadUserInput,
    ChecksumMismatch,
    InvalidState,
    TooManyActiveUploads,
    UnsupportedMediaType,
)
from backend.uploads.jobqueue import transfer_job_cancel, transfer_job_id
from backend.uploads.metrics import metrics_count
from backend.uploads.models import ACTIVE_STATUSES, FileUpload, UploadMode, UploadPart, UploadStatus
from backend.uploads.naming import filename_sanitise, storage_key_for
from backend.uploads.parts import part_count, part_size_for
from backend.uploads.selectors import upload_active_count, upload_get, upload_get_for_user
from backend.uploads.services.queueing import upload_enqueue
from backend.uploads.services.transitions import upload_release, upload_transition
from backend.uploads.sniffing import content_type_allowed, content_type_sniff
from backend.uploads.staging import StagedFile, staging_delete, staging_path
from backend.uploads.storage import StorageError, get_storage

logger = logging.getLogger("backend.uploads.services")

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def upload_create(*, user: User, file: StagedFile, sha256: str | None) -> FileUpload:
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
    upload_log_bind(upload_id)
    with transaction.atomic():
        active = upload_active_count(user=user)
        if active >= settings.UPLOAD_MAX_ACTIVE_PER_USER:
            raise TooManyActiveUploads(f"you already have {active} uploads receiving, queued or uploading")
        quota_reserve(user=user, size=file.size)
        upload = FileUpload.objects.create(
            id=upload_id,
            owner=user,
            filename=filename_sanitise(file.name),
            content_type=content_type,
            size=file.size,
            sha256=file.sha256,
            status=UploadStatus.QUEUED,
            bytes_received=file.size,
            part_size=part_size,
            parts_total=part_count(size=file.size, part_size=part_size),
            storage_backend=storage.name,
            storage_key=storage_key_for(upload_id),
            sequence=1,
            staged_at=timezone.now(),
            job_id=transfer_job_id(upload_id=upload_id, sequence=1),
        )
        file.path.rename(staging_path(upload_id))
        upload_enqueue(upload)
    # Counted once committed: a batch refused at a later file (uploadFiles) rolls this one back too.
    transaction.on_commit(partial(metrics_count, "bytes_received", upload.size))
    logger.info("upload %s accepted: %s, %d bytes", upload.id, upload.filename, upload.size)
    return upload


def upload_cancel(*, user: User, upload_id: uuid.UUID) -> FileUpload:
    """QUEUED/UPLOADING -> CANCELLED; INVALID_STATE from any other status.

    From QUEUED the queued job is removed and an open store object kept from an earlier run is
    aborted here. From UPLOADING the running transfer sees the claim gone before its next part and
    aborts the object itself (`upload_transfer_stopped`): RQ's stop command would SIGKILL it with no
    clean-up. The staged bytes stay, and `staged_at` restarts the UPLOAD_STAGING_TTL clock, so
    `upload_retry` can start over.
    """
    upload = upload_get_for_user(user=user, upload_id=upload_id)
    if upload.status == UploadStatus.RECEIVING and upload.mode == UploadMode.DIRECT:
        from backend.uploads.services.direct import direct_cancel

        try:
            return direct_cancel(upload=upload)
        except InvalidState:
            pass  # every part came in meanwhile: cancel it as QUEUED
    elif upload.status == UploadStatus.RECEIVING:
        from backend.uploads.services.resumable import resumable_cancel

        try:
            return resumable_cancel(upload=upload)
        except InvalidState:
            pass  # every byte came in meanwhile: cancel it as QUEUED
    now = timezone.now()
    # One source status at a time, so we know which move won if a worker claims it meanwhile.
    try:
        upload = upload_transition(
            upload_id=upload.id, to=UploadStatus.CANCELLED, expected=[UploadStatus.QUEUED], staged_at=now
        )
    except InvalidState:
        return upload_transition(
            upload_id=upload.id, to=UploadStatus.CANCELLED, expected=[UploadStatus.UPLOADING], staged_at=now
        )
    transfer_job_cancel(upload.job_id)
    if upload.storage_upload_id:
        try:
            upload_abort_store(upload=upload)
        except StorageError:
            # The cancel stands; retry, delete or the sweep abort the object later (the row keeps its handle).
            logger.warning("upload %s cancelled; aborting its open object failed", upload.id, exc_info=True)
    return upload


def upload_retry(*, user: User, upload_id: uuid.UUID) -> FileUpload:
    """FAILED -> QUEUED resuming from the confirmed parts; CANCELLED -> QUEUED starting over from 0.

    INVALID_STATE from any other status, and once the staged bytes are gone (the sweep expired
    them after UPLOAD_STAGING_TTL): then the client must send the file again. Starting over aborts
    the old store object if the cancel could not (its worker died first), so the new transfer owes
    nothing to the old one.
    """
    upload = upload_get_for_user(user=user, upload_id=upload_id)
    if upload.status not in (UploadStatus.FAILED, UploadStatus.CANCELLED):
        raise InvalidState(f"a {upload.status} upload cannot be retried")
    if upload.staged_at is None or not staging_path(upload.id).exists():
        raise InvalidState("the staged bytes of this upload are gone; send the file again")
    starting_over = upload.status == UploadStatus.CANCELLED
    if starting_over and upload.storage_upload_id:
        upload_abort_store(upload=upload)
    fresh_start: dict[str, Any] = {}
    with transaction.atomic():
        # A FAILED or CANCELLED upload holds no quota; becoming active again takes its size back.
        quota_reserve(user=user, size=upload.size)
        if starting_over:
            UploadPart.objects.filter(upload_id=upload.id).delete()
            fresh_start = {"bytes_uploaded": 0, "parts_uploaded": 0, "storage_upload_id": None}
        # `staged` fences the sweep: it expires a row only while it is still FAILED/CANCELLED.
        upload = upload_transition(
            upload_id=upload.id,
            to=UploadStatus.QUEUED,
            expected=[upload.status],
            staged=True,
            error=None,
            claim=None,
            staged_at=timezone.now(),
            **fresh_start,
        )
        upload_enqueue(upload)
    return upload


def upload_delete(*, user: User, upload_id: uuid.UUID) -> bool:
    """Remove an upload for good; afterwards its id answers NOT_FOUND.

    Cancels it if active, then removes its object, its open store object, its staged bytes, its
    part ledger and its row. A transfer still running stops before its next part and removes what
    it wrote after this (`upload_transfer_stopped`).
    """
    upload = upload_get_for_user(user=user, upload_id=upload_id)
    if upload.status in ACTIVE_STATUSES:
        try:
            upload = upload_cancel(user=user, upload_id=upload.id)
        except InvalidState:
            # It reached a terminal status meanwhile; delete that.
            upload = upload_get_for_user(user=user, upload_id=upload_id)
    storage = get_storage()
    if upload.storage_upload_id:
        storage.abort(key=upload.storage_key, handle=upload.storage_upload_id)
    # Whatever the status: a transfer whose complete() beat a cancel leaves an object behind.
    storage.delete_object(key=upload.storage_key)
    staging_delete(upload.id)
    FileUpload.objects.filter(id=upload.id).delete()
    logger.info("upload %s deleted", upload.id)
    return True


def upload_abort_store(*, upload: FileUpload) -> None:
    """Abort the open store object (multipart upload) `upload` names, and forget it and its ledger.

    Idempotent. The ledger goes only while the row still names that object, so a late abort of an
    old object never erases the ledger of a newer transfer.
    """
    handle = upload.storage_upload_id
    if not handle:
        return
    get_storage().abort(key=upload.storage_key, handle=handle)
    with transaction.atomic():
        if FileUpload.objects.filter(id=upload.id, storage_upload_id=handle).update(storage_upload_id=None):
            UploadPart.objects.filter(upload_id=upload.id).delete()


def upload_transfer_stopped(*, upload: FileUpload, claim: uuid.UUID, worker_stopping: bool) -> None:
    """Tidy up after a transfer that stopped early, as the row now says why it stopped.

    `upload` is the row as that run claimed it. Deleted meanwhile: the run's complete() may have
    landed after the delete removed the object, and no one else writes this key (it is the
    deleted upload's own), so the object goes. Cancelled with an open store object: it is
    aborted, and an object its complete() finished just before the cancel is removed. Still this
    run's while the worker is stopping: it goes back to the queue, where another worker resumes it
    from the confirmed parts.
    """
    current = upload_get(upload_id=upload.id)
    if current is None:
        get_storage().delete_object(key=upload.storage_key)
        logger.info("upload %s deleted while transferring; its object is removed", upload.id)
    elif current.status == UploadStatus.CANCELLED:
        if current.storage_upload_id:
            upload_abort_store(upload=current)
        # The cancel may have landed while this run's complete() was under way: the store then
        # holds the whole object although the upload is CANCELLED. While the row says CANCELLED no
        # other run writes this key (a retry moves it to QUEUED first), so the object goes.
        get_storage().delete_object(key=upload.storage_key)
        logger.info("upload %s cancelled; its open or just-completed object is removed", upload.id)
    elif worker_stopping and current.status == UploadStatus.UPLOADING and current.claim == claim:
        upload_release(upload_id=upload.id, claim=claim)
        logger.info("upload %s given back to the queue: the worker is stopping", upload.id)
