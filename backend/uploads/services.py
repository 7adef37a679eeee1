"""Writes: every change to an upload goes through these functions.

State moves happen in one place, `upload_transition`, as a conditional UPDATE on the expected
current status (and on the transfer's claim where a job is involved). It works the same on
SQLite and PostgreSQL, and two writers racing for one move cannot both win. Every move bumps
`sequence` and publishes the new state after the transaction commits.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import django_rq
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from rq.job import JobStatus

from backend.logs import upload_log_bind
from backend.quotas.services import quota_reserve
from backend.uploads.errors import (
    BadUserInput,
    ChecksumMismatch,
    InvalidState,
    TooManyActiveUploads,
    UnsupportedMediaType,
)
from backend.uploads.metrics import metrics_count
from backend.uploads.models import ACTIVE_STATUSES, TERMINAL_STATUSES, FileUpload, UploadPart, UploadStatus
from backend.uploads.naming import filename_sanitise, storage_key_for
from backend.uploads.parts import part_count, part_size_for
from backend.uploads.progress import progress_publish
from backend.uploads.selectors import upload_active_count, upload_get_for_user
from backend.uploads.signals import upload_finished
from backend.uploads.sniffing import content_type_allowed, content_type_sniff
from backend.uploads.staging import INCOMING, StagedFile, staging_delete, staging_dir, staging_path
from backend.uploads.storage import PartReceipt, Storage, StorageError, TemporaryArea, get_storage

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")

# The state table of CONTRACT section 3: which status each status may move to.
ALLOWED_MOVES: dict[str, frozenset[str]] = {
    UploadStatus.RECEIVING: frozenset({UploadStatus.QUEUED, UploadStatus.FAILED, UploadStatus.CANCELLED}),
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
        )
        file.path.rename(staging_path(upload_id))
        _upload_enqueue(upload)
    # Counted once committed: a batch that is refused later (uploadFiles) rolls this one back too.
    transaction.on_commit(partial(metrics_count, "bytes_received", upload.size))
    logger.info("upload %s accepted: %s, %d bytes", upload.id, upload.filename, upload.size)
    return upload


def _upload_enqueue(upload: FileUpload, *, redelivery: bool = False) -> None:
    """Queue the transfer job once the surrounding transaction commits.

    If Redis cannot take the job (it is down or restarting), the upload stays QUEUED with its
    job missing and the reaper queues it again (`upload_requeue_lost`) once Redis is back: the
    row, not the queue, is the record that the upload is owed a transfer.
    """
    job_id = f"transfer-{upload.id}-{upload.sequence}"
    if redelivery:
        # The lost job keeps its id in RQ's registries; the new one must not share it.
        job_id += f"-{uuid.uuid4().hex[:8]}"
    FileUpload.objects.filter(id=upload.id).update(job_id=job_id)
    timeout = 600 + upload.size // (1024 * 1024) + upload.parts_total * settings.UPLOAD_PART_DELAY_MS // 1000 * 2
    transaction.on_commit(partial(_job_enqueue, upload_id=upload.id, job_id=job_id, timeout=timeout))


def _job_enqueue(*, upload_id: uuid.UUID, job_id: str, timeout: int) -> None:
    from backend.uploads.jobs import upload_transfer

    try:
        django_rq.get_queue("default").enqueue(upload_transfer, str(upload_id), job_id=job_id, job_timeout=timeout)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        logger.warning("upload %s: Redis unreachable, the reaper will queue job %s: %s", upload_id, job_id, exc)


# --- moving through the state table -----------------------------------------------------------


def upload_transition(
    *,
    upload_id: uuid.UUID,
    to: str,
    expected: Iterable[str] | None = None,
    owned_by: uuid.UUID | None = None,
    staged: bool = False,
    part_number: int | None = None,
    **fields: Any,
) -> FileUpload:
    """Move an upload to status `to` if the state table allows it from the status it has now.

    `expected` narrows the statuses the move may start from; `owned_by` requires the row to carry
    that transfer claim; `staged` requires its staged bytes to be kept (the sweep has not expired
    them). Raises InvalidState when no row matched, or ClaimLost with `owned_by`.
    """
    sources = [s for s, targets in ALLOWED_MOVES.items() if to in targets]
    if expected is not None:
        sources = [s for s in sources if s in set(expected)]
    rows = FileUpload.objects.filter(id=upload_id, status__in=sources)
    if owned_by is not None:
        rows = rows.filter(claim=owned_by)
    if staged:
        rows = rows.filter(staged_at__isnull=False)
    with transaction.atomic():
        moved = rows.update(status=to, sequence=F("sequence") + 1, updated_at=timezone.now(), **fields)
        if not moved:
            if owned_by is not None:
                raise ClaimLost(f"upload {upload_id} is no longer this transfer's")
            raise InvalidState(f"an upload in this state cannot become {to}")
        upload = FileUpload.objects.get(id=upload_id)
        transaction.on_commit(lambda: progress_publish(upload, part_number=part_number))
        if to in TERMINAL_STATUSES:
            upload_finished.send(sender=FileUpload, upload=upload)
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


def upload_cancel(*, user: User, upload_id: uuid.UUID) -> FileUpload:
    """QUEUED/UPLOADING -> CANCELLED; INVALID_STATE from any other status.

    From QUEUED the queued job is removed and an open store object kept from an earlier run is
    aborted here. From UPLOADING the running transfer sees the claim gone before its next part and
    aborts the object itself (`jobs._after_stop`): RQ's stop command would SIGKILL it with no
    clean-up. The staged bytes stay, and `staged_at` restarts the UPLOAD_STAGING_TTL clock, so
    `upload_retry` can start over.
    """
    upload = upload_get_for_user(user=user, upload_id=upload_id)
    if upload.status == UploadStatus.RECEIVING:
        from backend.uploads.resumable.services import resumable_cancel

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
    _job_cancel(upload.job_id)
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
            staged_at=timezone.now(),
            **fresh_start,
        )
        _upload_enqueue(upload)
    return upload


def upload_delete(*, user: User, upload_id: uuid.UUID) -> bool:
    """Remove an upload for good; afterwards its id answers NOT_FOUND.

    Cancels it if active, then removes its object, its open store object, its staged bytes, its
    part ledger and its row. A transfer still running stops before its next part and removes what
    it wrote after this (`jobs._after_stop`).
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
        logger.warning(
            "upload %s: transfer silent for %ss, queued again",
            upload_id,
            stale_after_seconds,
            extra={"upload_id": str(upload_id)},
        )
        requeued.append(upload_id)
    return requeued


def upload_requeue_lost(*, stale_after_seconds: float) -> list[uuid.UUID]:
    """Queue again every upload QUEUED longer than `stale_after_seconds` whose job is gone.

    A worker SIGKILLed after taking a job from the queue and before its run claimed the upload
    leaves the row QUEUED and the job stranded (RQ reports it only after its own maintenance, and
    does not retry it); so does a reaper killed between its commit and its enqueue. A job still
    waiting in the queue, scheduled, or started a moment ago is left alone. A second job for an
    upload that was not lost after all is harmless: only a run that claims the QUEUED row
    transfers, the other finds nothing to do.
    """
    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    candidates = list(FileUpload.objects.filter(status=UploadStatus.QUEUED, updated_at__lt=cutoff))
    if not candidates:
        return []
    queue = django_rq.get_queue("default")
    waiting = set(queue.get_job_ids())
    requeued = []
    for upload in candidates:
        if upload.job_id in waiting or not _job_lost(queue=queue, job_id=upload.job_id, cutoff=cutoff):
            continue
        with transaction.atomic():
            if not FileUpload.objects.filter(id=upload.id, status=UploadStatus.QUEUED, job_id=upload.job_id).exists():
                continue  # claimed, cancelled or queued again since we looked
            _upload_enqueue(upload, redelivery=True)
        logger.warning(
            "upload %s: its queued job %s was lost; queued again",
            upload.id,
            upload.job_id,
            extra={"upload_id": str(upload.id)},
        )
        requeued.append(upload.id)
    return requeued


def _job_lost(*, queue: Any, job_id: str | None, cutoff: datetime) -> bool:
    """Whether RQ will never run `job_id` (it is not in the queue's list: that was checked first)."""
    if not job_id:
        return True
    job = queue.fetch_job(job_id)
    if job is None:
        return True
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        # A live run claims the upload within moments of starting.
        return job.started_at is None or job.started_at < cutoff
    # QUEUED yet not in the queue: taken by a worker that died before starting it.
    return status not in (
        JobStatus.CREATED,
        JobStatus.DEFERRED,
        JobStatus.SCHEDULED,
        JobStatus.RATE_LIMITED,
        JobStatus.READY_TO_ENQUEUE,
    )


# --- sweeping ---------------------------------------------------------------------------------

# A file this young may belong to a request still writing it, or to an upload whose row is not
# committed yet (staged bytes are renamed into place inside the creating transaction).
SWEEP_GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class SweepItem:
    """One thing the sweep removed (or, in a dry run, would remove), and why it may go."""

    kind: str  # "staged", "incoming", "store-temporary" or "open-object"
    target: str  # a path, a temporary entry's name, or an open object's handle
    reason: str
    size: int  # bytes it frees, when known (0 otherwise)


@dataclass
class SweepReport:
    dry_run: bool
    items: list[SweepItem] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(item.size for item in self.items)


def upload_sweep(
    *, dry_run: bool = False, ttl_seconds: float | None = None, grace_seconds: float = SWEEP_GRACE_SECONDS
) -> SweepReport:
    """Remove what no upload needs any more, so the disks stay flat; report every item.

    - FAILED/CANCELLED uploads kept longer than `ttl_seconds` (UPLOAD_STAGING_TTL) expire: their
      staged bytes go, the open store object the row names is aborted (by its key and handle, which
      works on any backend) and any object at its key is deleted; `retryUpload` then answers
      INVALID_STATE. The expiry is a conditional update, so a retry that wins keeps its bytes.
    - Staged bytes of COMPLETED uploads that remain (a worker died between the two steps).
    - Staged files and `incoming/` files no row explains, older than `grace_seconds`.
    - Entries of the store's temporary area (if it has one) that no row's handle names, older
      than `grace_seconds`.
    With `dry_run` nothing changes. A store error on one item is logged and the sweep goes on.
    """
    ttl = settings.UPLOAD_STAGING_TTL if ttl_seconds is None else ttl_seconds
    report = SweepReport(dry_run=dry_run)
    _sweep_receiving(report=report, dry_run=dry_run)
    storage = get_storage()
    expired = _sweep_expired(
        report=report, storage=storage, cutoff=timezone.now() - timedelta(seconds=ttl), dry_run=dry_run
    )
    _sweep_staging(report=report, grace_seconds=grace_seconds, dry_run=dry_run, already=expired)
    _sweep_incoming(report=report, grace_seconds=grace_seconds, dry_run=dry_run)
    if isinstance(storage, TemporaryArea):
        _sweep_store_temporary(report=report, storage=storage, grace_seconds=grace_seconds, dry_run=dry_run)
    logger.info("sweep%s: %d items, %d bytes", " (dry run)" if dry_run else "", len(report.items), report.freed_bytes)
    return report


def _sweep_receiving(*, report: SweepReport, dry_run: bool) -> None:
    """RECEIVING uploads with no new byte for UPLOAD_RECEIVING_TTL: FAILED "expired", bytes removed."""
    from backend.uploads.resumable.services import resumable_expire

    due = FileUpload.objects.filter(status=UploadStatus.RECEIVING, expires_at__lt=timezone.now())
    for upload in due:
        size = _size_of(staging_path(upload.id))
        if dry_run or resumable_expire(upload=upload):
            reason = f"upload {upload.id} expired while receiving"
            report.items.append(SweepItem(kind="staged", target=str(staging_path(upload.id)), reason=reason, size=size))


def _sweep_expired(*, report: SweepReport, storage: Storage, cutoff: datetime, dry_run: bool) -> set[uuid.UUID]:
    """Expire FAILED/CANCELLED uploads kept past the TTL (and finish expiries a store error cut short)."""
    kept = (UploadStatus.FAILED, UploadStatus.CANCELLED)
    due = Q(staged_at__lt=cutoff) | Q(staged_at__isnull=True, storage_upload_id__isnull=False)
    expired = set()
    for upload in FileUpload.objects.filter(due, status__in=kept):
        if not dry_run and not FileUpload.objects.filter(
            Q(staged_at__lt=cutoff) | Q(staged_at__isnull=True), id=upload.id, status=upload.status
        ).update(staged_at=None):
            continue  # retried since we read it: the bytes are needed again
        expired.add(upload.id)
        path = staging_path(upload.id)
        if path.exists():
            item = SweepItem(
                kind="staged",
                target=str(path),
                reason=f"{upload.status} upload {upload.id} kept past UPLOAD_STAGING_TTL",
                size=_size_of(path),
            )
            _sweep_remove(report, item, dry_run, partial(path.unlink, missing_ok=True))
        if upload.storage_upload_id:
            item = SweepItem(
                kind="open-object",
                target=upload.storage_upload_id,
                reason=f"open object of expired {upload.status} upload {upload.id} at {upload.storage_key}",
                size=0,
            )
            _sweep_remove(report, item, dry_run, partial(upload_abort_store, upload=upload))
        if not dry_run:
            # A transfer whose complete() beat its cancel or failure left an object no one will fetch.
            _sweep_call(partial(storage.delete_object, key=upload.storage_key))
    return expired


def _sweep_staging(*, report: SweepReport, grace_seconds: float, dry_run: bool, already: set[uuid.UUID]) -> None:
    """Staged files of COMPLETED or expired uploads, and old ones of no upload at all."""
    directory = staging_dir()
    if not directory.is_dir():
        return
    found: dict[uuid.UUID, Path] = {}
    for path in directory.iterdir():
        try:
            upload_id = uuid.UUID(path.name)
        except ValueError:
            continue  # only files named by upload id are staged bytes; incoming/ is swept on its own
        if upload_id not in already and path.is_file():
            found[upload_id] = path
    rows: dict[uuid.UUID, tuple[str | None, datetime | None]] = {}
    ids = list(found)
    for start in range(0, len(ids), 500):
        batch = FileUpload.objects.filter(id__in=ids[start : start + 500])
        for row_id, row_status, row_staged_at in batch.values_list("id", "status", "staged_at"):
            rows[row_id] = (row_status, row_staged_at)
    for upload_id, path in found.items():
        status, staged_at = rows.get(upload_id, (None, None))
        if status is None:
            if _age_of(path) < grace_seconds:
                continue
            reason = "no upload row"
        elif status == UploadStatus.COMPLETED:
            reason = f"upload {upload_id} is COMPLETED"
        elif status in (UploadStatus.FAILED, UploadStatus.CANCELLED) and staged_at is None:
            reason = f"{status} upload {upload_id} expired"
        else:
            continue
        item = SweepItem(kind="staged", target=str(path), reason=reason, size=_size_of(path))
        _sweep_remove(report, item, dry_run, partial(path.unlink, missing_ok=True))


def _sweep_incoming(*, report: SweepReport, grace_seconds: float, dry_run: bool) -> None:
    """Files a request left in incoming/ (it died before it could discard them)."""
    directory = staging_dir() / INCOMING
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.is_file() and _age_of(path) >= grace_seconds:
            item = SweepItem(
                kind="incoming",
                target=str(path),
                reason=f"left by a request over {int(grace_seconds)}s ago",
                size=_size_of(path),
            )
            _sweep_remove(report, item, dry_run, partial(path.unlink, missing_ok=True))


def _sweep_store_temporary(*, report: SweepReport, storage: TemporaryArea, grace_seconds: float, dry_run: bool) -> None:
    """Entries of the store's temporary area that no row's handle names (their transfer is gone)."""
    entries = storage.temporary_entries()
    handles = [e.handle for e in entries if e.handle]
    known: set[str | None] = set()
    for start in range(0, len(handles), 500):
        batch = FileUpload.objects.filter(storage_upload_id__in=handles[start : start + 500])
        known |= set(batch.values_list("storage_upload_id", flat=True))
    now = time.time()
    for entry in entries:
        if entry.handle in known or now - entry.modified < grace_seconds:
            continue
        item = SweepItem(
            kind="store-temporary",
            target=entry.name,
            reason="open object no upload names" if entry.handle else "temporary file of no upload",
            size=entry.size,
        )
        _sweep_remove(report, item, dry_run, partial(storage.temporary_remove, name=entry.name))


def _sweep_remove(report: SweepReport, item: SweepItem, dry_run: bool, remove: Callable[[], object]) -> None:
    """Report `item`, and remove it unless this is a dry run (a failure is logged, not raised)."""
    if dry_run or _sweep_call(remove):
        report.items.append(item)


def _sweep_call(call: Callable[[], object]) -> bool:
    try:
        call()
    except (StorageError, OSError):
        logger.warning("sweep: a removal failed; the next sweep tries again", exc_info=True)
        return False
    return True


def _age_of(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
