"""Periodic upkeep (the reaper): give back to the queue the transfers whose worker went silent, and lost jobs."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from backend.uploads.errors import ClaimLost
from backend.uploads.jobqueue import TransferJobs
from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.services.queueing import upload_enqueue
from backend.uploads.services.transitions import upload_transition

logger = logging.getLogger("backend.uploads.services")


def upload_requeue_stale(*, stale_after_seconds: float) -> list[uuid.UUID]:
    """Give back to the queue every UPLOADING upload whose transfer has been silent too long.

    The conditional move on the old claim fences the silent run: if it wakes up, its next
    ledger write finds the claim gone and it stops.
    """
    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    requeued = []
    for upload_id, claim, heartbeat_at in FileUpload.objects.filter(
        status=UploadStatus.UPLOADING, heartbeat_at__lt=cutoff
    ).values_list("id", "claim", "heartbeat_at"):
        try:
            with transaction.atomic():
                upload = upload_transition(upload_id=upload_id, to=UploadStatus.QUEUED, owned_by=claim, claim=None)
                upload_enqueue(upload)
        except ClaimLost:
            continue
        silent = (timezone.now() - heartbeat_at).total_seconds() if heartbeat_at else float("inf")
        logger.warning(
            "upload %s: transfer silent for %.1f s (stale after %g s), queued again",
            upload_id,
            silent,
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
    jobs = TransferJobs()
    requeued = []
    for upload in candidates:
        why = jobs.lost(job_id=upload.job_id, cutoff=cutoff)
        if why is None:
            continue
        with transaction.atomic():
            if not FileUpload.objects.filter(id=upload.id, status=UploadStatus.QUEUED, job_id=upload.job_id).exists():
                continue  # claimed, cancelled or queued again since we looked
            upload_enqueue(upload, redelivery=True)
        logger.warning("upload %s: %s; queued again", upload.id, why, extra={"upload_id": str(upload.id)})
        requeued.append(upload.id)
    return requeued


def upload_requeue_orphaned(*, upload_id: uuid.UUID, job_id: str, cause: str) -> bool:
    """Give the upload of a job whose work horse died back to the queue at once; False if it is not
    that job's any more (completed, failed, cancelled, or already queued again by the reaper).

    Called by the worker that saw its horse die (`cause` says how), which knows the job but not
    the run's claim: the move is conditional on the row still naming this job, so it can only take
    the upload from the dead run, never from a newer one.
    """
    with transaction.atomic():
        row = FileUpload.objects.filter(
            id=upload_id, job_id=job_id, status__in=[UploadStatus.UPLOADING, UploadStatus.QUEUED]
        ).first()
        if row is None:
            return False
        if row.status == UploadStatus.UPLOADING:
            try:
                row = upload_transition(upload_id=upload_id, to=UploadStatus.QUEUED, owned_by=row.claim, claim=None)
            except ClaimLost:
                return False
        upload_enqueue(row, redelivery=True)
    logger.warning(
        "upload %s: the work horse running job %s died (%s); queued again",
        upload_id,
        job_id,
        cause,
        extra={"upload_id": str(upload_id)},
    )
    return True
