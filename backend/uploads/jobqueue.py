"""The queue: every use of RQ / django-rq by the service layer, and nothing else.

Jobs are named by dotted path (`TRANSFER_JOB`), so the services that queue them never import the
job module: the import graph keeps pointing down (README, "Architecture"). Job ids, job timeouts
and queue names are decided here. A Redis that cannot take a job is logged, never raised: the
upload row, not the queue, is the record that an upload is owed a transfer, and the reaper queues
it again (`services.upload_requeue_lost`).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

import django_rq
import redis
from rq.job import JobStatus

logger = logging.getLogger(__name__)

# The queue transfers go to; the periodic jobs have their own (`worker.MAINTENANCE_QUEUE`).
TRANSFER_QUEUE = "default"
# What RQ runs for one transfer: `backend.uploads.jobs.upload_transfer(upload_id)`.
TRANSFER_JOB = "backend.uploads.jobs.upload_transfer"

# A connection error or timeout talking to Redis: the one definition of "Redis is unreachable".
REDIS_UNREACHABLE: tuple[type[Exception], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

# Statuses of a job RQ still means to run although it is not in the queue's list.
_PENDING = (
    JobStatus.CREATED,
    JobStatus.DEFERRED,
    JobStatus.SCHEDULED,
    JobStatus.RATE_LIMITED,
    JobStatus.READY_TO_ENQUEUE,
)


def transfer_job_id(*, upload_id: uuid.UUID, sequence: int, redelivery: bool = False) -> str:
    """The id of the job for one transfer of `upload_id` queued at `sequence`.

    A redelivery (the earlier job was lost) gets a fresh suffix: the lost job keeps its id in RQ's
    registries, and the new one must not share it.
    """
    job_id = f"transfer-{upload_id}-{sequence}"
    if redelivery:
        job_id += f"-{uuid.uuid4().hex[:8]}"
    return job_id


def transfer_job_timeout(*, size: int, parts_total: int, part_delay_ms: int) -> int:
    """Seconds RQ lets one transfer run: ten minutes plus a second per MiB (RQ's 180 s default is too short)."""
    return 600 + size // (1024 * 1024) + parts_total * part_delay_ms // 1000 * 2


def transfer_job_enqueue(*, upload_id: uuid.UUID, job_id: str, timeout: int) -> None:
    """Put the transfer job on the queue now; while Redis is unreachable, log it and leave it to the reaper."""
    try:
        django_rq.get_queue(TRANSFER_QUEUE).enqueue(TRANSFER_JOB, str(upload_id), job_id=job_id, job_timeout=timeout)
    except REDIS_UNREACHABLE as exc:
        logger.warning("upload %s: Redis unreachable, the reaper will queue job %s: %s", upload_id, job_id, exc)


def transfer_job_cancel(job_id: str | None) -> None:
    """Remove a queued job; any failure is logged (the claim check at job start refuses it anyway)."""
    if not job_id:
        return
    try:
        job = django_rq.get_queue(TRANSFER_QUEUE).fetch_job(job_id)
        if job is not None:
            job.cancel()
    except Exception:
        # The claim check at job start already refuses a cancelled upload; this only tidies the queue.
        logger.warning("could not remove queued job %s", job_id, exc_info=True)


class TransferJobs:
    """A look at the transfer queue for the reaper: which job ids RQ will never run."""

    def __init__(self) -> None:
        self.queue: Any = django_rq.get_queue(TRANSFER_QUEUE)
        self.waiting = set(self.queue.get_job_ids())

    def lost(self, *, job_id: str | None, cutoff: datetime) -> bool:
        """Whether RQ will never run `job_id`: not waiting, not scheduled, not started after `cutoff`."""
        if not job_id:
            return True
        if job_id in self.waiting:
            return False
        job = self.queue.fetch_job(job_id)
        if job is None:
            return True
        status = job.get_status(refresh=False)
        if status == JobStatus.STARTED:
            # A live run claims the upload within moments of starting.
            return job.started_at is None or job.started_at < cutoff
        # QUEUED yet not in the queue: taken by a worker that died before starting it.
        return status not in _PENDING
