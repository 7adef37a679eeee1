"""The queue: every use of RQ / django-rq by the service layer, and nothing else.

Jobs are named by dotted path (`TRANSFER_JOB`), so the services that queue them never import the
job module: the import graph keeps pointing down (README, "Architecture"). Job ids, job timeouts
and queue names are decided here. A Redis that cannot take a job is logged, never raised: the
upload row, not the queue, is the record that an upload is owed a transfer, and the reaper queues
it again (`services.upload_requeue_lost`).

One Redis client per process serves every call here (`_connection`): `django_rq.get_connection`
and `get_queue` build a new client, and so a new TCP connection, on every call, which cost a tus
PATCH several milliseconds at each part boundary (the pipeline request). redis-py's pool notices a
fork and opens fresh connections in the child, so work horses share nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from functools import cache
from typing import Any

import django_rq
from rq import get_current_job
from rq.intermediate_queue import IntermediateQueue
from rq.job import JobStatus
from rq.utils import now as rq_now

from backend.redis_errors import REDIS_UNREACHABLE

logger = logging.getLogger(__name__)

# The queue transfers go to; the periodic jobs have their own (`worker.MAINTENANCE_QUEUE`).
TRANSFER_QUEUE = "default"
# What RQ runs for one transfer: `backend.uploads.jobs.upload_transfer(upload_id)`.
TRANSFER_JOB = "backend.uploads.jobs.upload_transfer"
# What RQ runs to send the whole parts a RECEIVING upload has so far (issue 19, pipelining).
PIPELINE_JOB = "backend.uploads.jobs.upload_pipeline"
# The job meta flag of a transfer the worker runs in its own process, without a work horse.
IN_PROCESS = "in_process"
# A pipeline request older than this whose job never started (lost with a SIGKILLed worker, or a
# Redis that forgot it) no longer holds back the next one.
PIPELINE_REQUEST_TTL_SECONDS = 120

# How long a job may sit between the queue and a worker's started registry before it counts as lost.
IN_TRANSIT_GRACE_SECONDS = 5.0

# Statuses of a job RQ still means to run although it is not in the queue's list.
_PENDING = (
    JobStatus.CREATED,
    JobStatus.DEFERRED,
    JobStatus.SCHEDULED,
    JobStatus.RATE_LIMITED,
    JobStatus.READY_TO_ENQUEUE,
)


@cache
def _connection() -> Any:
    return django_rq.get_connection(TRANSFER_QUEUE)


def _queue() -> Any:
    return django_rq.get_queue(TRANSFER_QUEUE, connection=_connection())


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


def transfer_job_enqueue(*, upload_id: uuid.UUID, job_id: str, timeout: int, in_process: bool = False) -> None:
    """Put the transfer job on the queue now; while Redis is unreachable, log it and leave it to the reaper.

    `in_process`: the worker runs it in its own process rather than in a forked work horse
    (`job_runs_in_process`).
    """
    meta = {IN_PROCESS: True} if in_process else None
    try:
        _queue().enqueue(TRANSFER_JOB, str(upload_id), job_id=job_id, job_timeout=timeout, meta=meta)
    except REDIS_UNREACHABLE as exc:
        logger.warning("upload %s: Redis unreachable, the reaper will queue job %s: %s", upload_id, job_id, exc)


def job_runs_in_process(job: Any) -> bool:
    """Whether the worker runs `job` (an RQ job it dequeued) in its own process."""
    return bool(job.meta.get(IN_PROCESS))


def transfer_job_cancel(job_id: str | None) -> None:
    """Remove a queued job; any failure is logged (the claim check at job start refuses it anyway)."""
    if not job_id:
        return
    try:
        job = _queue().fetch_job(job_id)
        if job is not None:
            job.cancel()
    except Exception:
        # The claim check at job start already refuses a cancelled upload; this only tidies the queue.
        logger.warning("could not remove queued job %s", job_id, exc_info=True)


def _pipeline_flag(upload_id: uuid.UUID) -> str:
    return f"uploads:pipeline-requested:{upload_id}"


def pipeline_job_request(*, upload_id: uuid.UUID, timeout: int) -> bool:
    """Queue one pipeline run for `upload_id` unless one is queued and not started yet (debounce).

    The flag is set with SET NX and cleared by the job as it starts (`pipeline_job_started`),
    before it reads the upload: a part that lands after that clearing requests a new run. A
    flag older than PIPELINE_REQUEST_TTL_SECONDS is taken over (its job was lost). Redis
    unreachable: logged; the move out of RECEIVING queues the transfer anyway. True if queued.
    """
    flag = _pipeline_flag(upload_id)
    try:
        connection = _connection()
        now = time.time()
        # One round trip: the SET NX and a read of the flag (ours if the SET took).
        with connection.pipeline(transaction=False) as both:
            both.set(flag, str(now), nx=True, ex=PIPELINE_REQUEST_TTL_SECONDS * 2)
            both.get(flag)
            took, raw = both.execute()
        if not took:
            if raw is not None and now - float(raw) < PIPELINE_REQUEST_TTL_SECONDS:
                return False
            connection.set(flag, str(now), ex=PIPELINE_REQUEST_TTL_SECONDS * 2)
        job_id = f"pipeline-{upload_id}-{uuid.uuid4().hex[:8]}"
        _queue().enqueue(PIPELINE_JOB, str(upload_id), job_id=job_id, job_timeout=timeout)
    except REDIS_UNREACHABLE as exc:
        logger.warning("upload %s: Redis unreachable, no pipeline run queued: %s", upload_id, exc)
        return False
    return True


def _pipeline_failures(upload_id: uuid.UUID) -> str:
    return f"uploads:pipeline-failures:{upload_id}"


def _pipeline_backoff(upload_id: uuid.UUID) -> str:
    return f"uploads:pipeline-backoff:{upload_id}"


def pipeline_backoff_start(*, upload_id: uuid.UUID, first: float, cap: float) -> float:
    """A pipeline run of `upload_id` failed: the reaper asks for none before the delay returned.

    `first` seconds after one failure, doubling with each failure in a row, at most `cap`. The
    count of failures outlives the longest wait (twice `cap`), so a store down for an hour is
    asked every `cap` seconds. Redis unreachable: logged, 0 (no run can be queued meanwhile anyway).
    """
    failures_key = _pipeline_failures(upload_id)
    try:
        connection = _connection()
        failures = int(connection.incr(failures_key))
        delay = min(cap, first * 2 ** min(failures - 1, 32))
        with connection.pipeline(transaction=False) as both:
            both.expire(failures_key, max(1, int(2 * cap)))
            both.set(_pipeline_backoff(upload_id), str(failures), px=max(1, int(delay * 1000)))
            both.execute()
    except REDIS_UNREACHABLE as exc:
        logger.warning("upload %s: Redis unreachable, no pipeline backoff set: %s", upload_id, exc)
        return 0.0
    return delay


def pipeline_backoff_clear(*, upload_id: uuid.UUID) -> None:
    """A pipeline run sent its parts: the next failure waits `first` seconds again."""
    try:
        _connection().delete(_pipeline_failures(upload_id), _pipeline_backoff(upload_id))
    except REDIS_UNREACHABLE as exc:
        logger.warning("upload %s: Redis unreachable, pipeline backoff not cleared: %s", upload_id, exc)


def pipeline_backing_off(upload_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `upload_ids` wait after a failed run (`pipeline_backoff_start`): one round trip.

    Redis unreachable: none (a request then fails and is logged, as any other).
    """
    if not upload_ids:
        return set()
    try:
        with _connection().pipeline(transaction=False) as each:
            for upload_id in upload_ids:
                each.exists(_pipeline_backoff(upload_id))
            found = each.execute()
    except REDIS_UNREACHABLE as exc:
        logger.warning("Redis unreachable, pipeline backoffs not read: %s", exc)
        return set()
    return {upload_id for upload_id, waits in zip(upload_ids, found, strict=True) if waits}


def current_job_id() -> str | None:
    """The id of the RQ job this code runs in (None outside a job: a test calling a job function)."""
    job = get_current_job()
    return job.id if job is not None else None


def pipeline_job_started(*, upload_id: uuid.UUID) -> None:
    """The pipeline job has started: a part arriving from now on requests another run."""
    try:
        _connection().delete(_pipeline_flag(upload_id))
    except REDIS_UNREACHABLE as exc:
        logger.warning("upload %s: Redis unreachable, pipeline request not cleared: %s", upload_id, exc)


class TransferJobs:
    """A look at the transfer queue for the reaper: which job ids RQ will never run, and why.

    RQ hands a job to a worker in two steps: its dequeue moves the id from the queue's list to an
    intermediate list (BLMOVE), then, moments later, into the started registry with the status
    STARTED. A job seen between the two is in transit, not lost: it counts as lost only once it has
    stayed there IN_TRANSIT_GRACE_SECONDS (its worker died taking it). The lists are read in the
    order a job moves through them (waiting, in transit, then the job's own status), so a job that
    moves on while we look is always seen at one of its stages.
    """

    def __init__(self) -> None:
        self.queue: Any = django_rq.get_queue(TRANSFER_QUEUE)
        self.waiting = set(self.queue.get_job_ids())
        self.in_transit = IntermediateQueue(self.queue.key, self.queue.connection)
        self.moving = set(self.in_transit.get_job_ids())

    def lost(self, *, job_id: str | None, cutoff: datetime) -> str | None:
        """Why RQ will never run `job_id`; None while it still may (waiting, in transit, scheduled,
        or started after `cutoff`)."""
        if not job_id:
            return "the upload names no job"
        if job_id in self.waiting:
            return None
        if job_id in self.moving:
            # RQ's own first sighting, which its intermediate-queue clean-up goes by too.
            self.in_transit.set_first_seen(job_id)
            first_seen = self.in_transit.get_first_seen(job_id)
            in_transit = (rq_now() - first_seen).total_seconds() if first_seen else 0.0
            if in_transit < IN_TRANSIT_GRACE_SECONDS:
                return None
            return (
                f"job {job_id} was taken from the queue by a worker that never started it"
                f" (in transit {in_transit:.0f} s)"
            )
        job = self.queue.fetch_job(job_id)
        if job is None:
            return f"job {job_id} is gone from Redis"
        status = job.get_status(refresh=False)
        if status == JobStatus.STARTED:
            # A live run claims the upload within moments of starting.
            if job.started_at is not None and job.started_at >= cutoff:
                return None
            return f"job {job_id} started but no run claimed the upload (its worker died before the claim)"
        if status in _PENDING:
            return None
        if status == JobStatus.QUEUED:
            return f"job {job_id} is queued in no queue (a worker took it and died)"
        return f"job {job_id} ended {status} without a run claiming the upload"
