"""Queueing a transfer: record the job id on the row, hand the job to the queue after commit.

What the queue is (RQ), how jobs are named and how long they may run is `backend.uploads.jobqueue`'s
business; this module decides only when an upload is owed a job.
"""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import transaction

from backend.uploads.jobqueue import transfer_job_enqueue, transfer_job_id, transfer_job_timeout
from backend.uploads.models import FileUpload, UploadMode


def upload_runs_in_process(upload: FileUpload) -> bool:
    """Whether the worker runs this upload's transfer in its own process, without forking a work horse:
    one plain put of at most UPLOAD_IN_PROCESS_MAX_BYTES (README, "Small files in the worker process").
    A DIRECT upload's completion reads the object back, however small its parts: always a horse."""
    return (
        upload.mode != UploadMode.DIRECT
        and upload.parts_total <= 1
        and upload.size <= settings.UPLOAD_IN_PROCESS_MAX_BYTES
    )


def upload_enqueue(upload: FileUpload, *, redelivery: bool = False) -> None:
    """Queue the transfer job once the surrounding transaction commits.

    The job id is recorded on the row (unless the row was created with it: `upload_create`).
    If Redis cannot take the job (it is down or restarting), the upload stays QUEUED with its
    job missing and the reaper queues it again (`upload_requeue_lost`) once Redis is back: the
    row, not the queue, is the record that the upload is owed a transfer.
    """
    job_id = transfer_job_id(upload_id=upload.id, sequence=upload.sequence, redelivery=redelivery)
    if upload.job_id != job_id:  # a new row may carry it already (upload_create): no second write
        FileUpload.objects.filter(id=upload.id).update(job_id=job_id)
        upload.job_id = job_id
    timeout = transfer_job_timeout(
        size=upload.size, parts_total=upload.parts_total, part_delay_ms=settings.UPLOAD_PART_DELAY_MS
    )
    job = partial(
        transfer_job_enqueue,
        upload_id=upload.id,
        job_id=job_id,
        timeout=timeout,
        in_process=upload_runs_in_process(upload),
    )
    transaction.on_commit(job)
