"""Queueing a transfer: record the job id on the row, hand the job to the queue after commit.

What the queue is (RQ), how jobs are named and how long they may run is `backend.uploads.jobqueue`'s
business; this module decides only when an upload is owed a job.
"""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import transaction

from backend.uploads.jobqueue import transfer_job_enqueue, transfer_job_id, transfer_job_timeout
from backend.uploads.models import FileUpload


def upload_enqueue(upload: FileUpload, *, redelivery: bool = False) -> None:
    """Queue the transfer job once the surrounding transaction commits.

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
    transaction.on_commit(partial(transfer_job_enqueue, upload_id=upload.id, job_id=job_id, timeout=timeout))
