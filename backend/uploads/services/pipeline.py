"""Pipelining: the whole parts of a RESUMABLE upload go to the bucket while its client still sends.

CONTRACT section 8, last paragraph (issue 19). The pieces:
- The chunk appender calls `upload_pipeline_nudge_soon` when its committed offset passes a part
  boundary (the request is made on a thread of its own, off the chunk's path). That queues one
  pipeline job unless one is queued and not started yet (`jobqueue.pipeline_job_request`): one
  job per burst of parts, never one per chunk.
- The job clears that request first, then takes the RECEIVING upload's `claim`
  (`upload_pipeline_claim`, refused while another live run holds it), so two runs of one upload
  never overlap; it sends parts 1..N of the N whole parts staging holds and ends: no worker
  waits on a client.
- `upload_pipeline_release` gives the claim back and then looks again: a part that landed while
  the run was ending (after its last look, when a new request could not start a run because this
  one held the claim) is caught here and requests the next run. A request made after the job
  cleared its flag queues a job of its own; so no whole part is left waiting.
- The last byte verifies the upload and moves it to QUEUED (`resumable.resumable_complete`)
  without touching the claim: a pipeline run still sending keeps it, the queued transfer job
  cannot claim meanwhile (`transitions.upload_claim`), and the pipeline run, once released,
  runs the transfer itself. The final transfer sends what is left (the last part) and completes.
A run that dies holding the claim is fenced out by its silent heartbeat: after
UPLOAD_STALE_AFTER_SECONDS the claim counts as free (`transitions.unclaimed`) and the reaper
requests a run (`upload_pipeline_requeue_stale`). A work horse that dies under a live worker is
seen at once: its job's claim is derived from the job id (`pipeline_claim_for`), so the worker
frees exactly that claim and requests the next run (`upload_pipeline_orphaned`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import cache

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from backend.uploads.errors import ClaimLost
from backend.uploads.jobqueue import (
    pipeline_backing_off,
    pipeline_backoff_clear,
    pipeline_backoff_start,
    pipeline_job_request,
    pipeline_job_started,
    transfer_job_timeout,
)
from backend.uploads.models import ConcatRole, FileUpload, UploadMode, UploadStatus
from backend.uploads.selectors import upload_get
from backend.uploads.services.actions import upload_abort_store
from backend.uploads.services.queueing import upload_enqueue
from backend.uploads.services.transitions import unclaimed, upload_transition
from backend.uploads.storage import StorageError

logger = logging.getLogger("backend.uploads.services")

_CLAIM_NAMESPACE = uuid.UUID("6f1c2a52-53b4-4c1e-9d8e-7d1f0b6f4a19")

# Requests waiting for this process's request thread, by upload id (the job timeout each asks for):
# one per upload, whatever the number of parts that arrived meanwhile; at most this many uploads.
_WAITING_AT_MOST = 10_000
_waiting: dict[uuid.UUID, int] = {}
_waiting_lock = threading.Lock()


def pipeline_claim_for(job_id: str) -> uuid.UUID:
    """The claim a pipeline job's runs hold (its pipeline run, then the transfer it may take over).

    Derived from the job id, so the worker that saw the job's work horse die knows which claim
    was that horse's, and can free it without touching a newer run's.
    """
    return uuid.uuid5(_CLAIM_NAMESPACE, job_id)


def pipeline_applies(upload: FileUpload) -> bool:
    """Whether this upload's parts may go out while it is RECEIVING.

    RESUMABLE uploads with their type judged, unless UPLOAD_PIPELINE is off; not tus partial
    uploads (pieces of a final upload that is transferred after its concatenation, which is when
    its bytes first exist together).
    """
    return (
        settings.UPLOAD_PIPELINE
        and upload.mode == UploadMode.RESUMABLE
        and upload.concat_role != ConcatRole.PARTIAL
        and upload.part_size > 0
        and bool(upload.content_type)
    )


def pipeline_whole_parts(upload: FileUpload) -> int:
    """How many parts of `upload`, from part 1, staging holds whole (flushed, offset committed)."""
    if not pipeline_applies(upload):
        return 0
    whole = upload.bytes_received // upload.part_size
    if not upload.length_deferred:
        whole = min(whole, upload.parts_total)
    return whole


def _run_timeout(upload: FileUpload) -> int:
    return transfer_job_timeout(
        size=upload.size, parts_total=upload.parts_total, part_delay_ms=settings.UPLOAD_PART_DELAY_MS
    )


def upload_pipeline_nudge(*, upload: FileUpload) -> bool:
    """New whole parts are in staging: request a pipeline run (debounced). True if one was queued."""
    if not pipeline_applies(upload):
        return False
    return pipeline_job_request(upload_id=upload.id, timeout=_run_timeout(upload))


@cache
def _requests() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline-request")


def upload_pipeline_nudge_soon(*, upload: FileUpload) -> None:
    """`upload_pipeline_nudge` on this process's request thread: the chunk being received (and its
    answer) never waits for Redis. A request lost with the process is made by the reaper
    (`upload_pipeline_requeue_behind`).

    Coalesced: while a request for this upload waits for the thread (Redis slow or hung), a new one
    adds nothing, as the waiting one asks for the parts in by the time it runs. Only ids wait, never
    rows; past _WAITING_AT_MOST uploads a request is dropped (logged) and left to the reaper.
    """
    if not pipeline_applies(upload):
        return
    with _waiting_lock:
        if upload.id in _waiting:
            return
        if len(_waiting) >= _WAITING_AT_MOST:
            logger.warning("upload %s: %d pipeline requests wait already; the reaper will", upload.id, len(_waiting))
            return
        _waiting[upload.id] = _run_timeout(upload)
    _requests().submit(_request_waiting, upload.id)


def _request_waiting(upload_id: uuid.UUID) -> None:
    # Taken off before the request is made: parts arriving from now on wait for a request of their own.
    with _waiting_lock:
        timeout = _waiting.pop(upload_id)
    try:
        pipeline_job_request(upload_id=upload_id, timeout=timeout)
    except Exception:
        logger.warning("upload %s: requesting a pipeline run failed; the reaper will", upload_id, exc_info=True)


def upload_pipeline_started(*, upload_id: uuid.UUID) -> None:
    """A pipeline job starts: parts arriving from now on request a run of their own."""
    pipeline_job_started(upload_id=upload_id)


def upload_pipeline_claim(
    *, upload_id: uuid.UUID, claim: uuid.UUID | None = None
) -> tuple[FileUpload, uuid.UUID] | None:
    """Take a RECEIVING upload for one pipeline run if it has whole parts not sent yet.

    None when it is not RECEIVING, another live run holds it, or nothing is due. Not counted in
    `attempts` and not a state move: the upload stays RECEIVING, and no event is published.
    `claim` is the job's (`pipeline_claim_for`); a fresh one without.
    """
    claim = claim or uuid.uuid4()
    rows = FileUpload.objects.filter(unclaimed(), id=upload_id, status=UploadStatus.RECEIVING)
    if not rows.update(claim=claim, heartbeat_at=timezone.now()):
        return None
    upload = FileUpload.objects.get(id=upload_id)
    if pipeline_whole_parts(upload) <= upload.parts_uploaded:
        # The ledger holds only parts 1..whole, so as many parts as whole ones means all are sent.
        upload_pipeline_release(upload_id=upload_id, claim=claim)
        return None
    return upload, claim


def upload_pipeline_arrived(*, upload_id: uuid.UUID) -> int:
    """The engine's question between rounds: how many whole parts are in now (0 once it moved on)."""
    upload = upload_get(upload_id=upload_id)
    if upload is None or upload.status not in (UploadStatus.RECEIVING, UploadStatus.QUEUED):
        return 0
    return pipeline_whole_parts(upload)


def upload_pipeline_release(*, upload_id: uuid.UUID, claim: uuid.UUID, look_again: bool = True) -> FileUpload | None:
    """End a pipeline run: give its claim back, then look again and request a run if parts are due.

    Returns the row as it is now (None once deleted); a QUEUED one is the caller's to transfer.
    Without `look_again` (the run failed) the next part to arrive requests the next run.
    """
    FileUpload.objects.filter(id=upload_id, claim=claim).update(claim=None)
    current = upload_get(upload_id=upload_id)
    if (
        look_again
        and current is not None
        and current.status == UploadStatus.RECEIVING
        and pipeline_whole_parts(current) > current.parts_uploaded
    ):
        upload_pipeline_nudge(upload=current)
    return current


def upload_pipeline_sent(*, upload_id: uuid.UUID, claim: uuid.UUID) -> FileUpload | None:
    """A pipeline run sent every part it found: a later failure waits the shortest backoff again."""
    pipeline_backoff_clear(upload_id=upload_id)
    return upload_pipeline_release(upload_id=upload_id, claim=claim)


def upload_pipeline_failed(
    *, upload_id: uuid.UUID, claim: uuid.UUID, error: str, unexpected: bool = False
) -> FileUpload | None:
    """A pipeline run failed (the store refused its parts): not the upload's failure, and no next run now.

    The reaper asks for the next one after a backoff (UPLOAD_PIPELINE_BACKOFF_SECONDS, doubling with
    each failure in a row up to UPLOAD_PIPELINE_BACKOFF_MAX_SECONDS), set before the claim is given
    back so the reaper never sees the upload free without it; a new part arriving asks at once. One
    log line per failed run; a traceback only for an `unexpected` error (a bug, not an outage).
    """
    delay = pipeline_backoff_start(
        upload_id=upload_id,
        first=settings.UPLOAD_PIPELINE_BACKOFF_SECONDS,
        cap=settings.UPLOAD_PIPELINE_BACKOFF_MAX_SECONDS,
    )
    log = logger.error if unexpected else logger.warning
    message = "upload %s: sending parts while receiving failed: %s; the reaper asks again in %.0f s"
    log(message, upload_id, error, delay, exc_info=unexpected)
    return upload_pipeline_release(upload_id=upload_id, claim=claim, look_again=False)


def upload_pipeline_stopped(*, upload_id: uuid.UUID, claim: uuid.UUID) -> FileUpload | None:
    """Tidy up after a pipeline run that stopped early, as the row now says why.

    Cancelled, expired or refused (FAILED) meanwhile with an open store object: it is aborted
    (the mover aborted it too; a part still in flight then may have re-created nothing on S3,
    but aborting again is what AbortMultipartUpload's race asks). Deleted: the delete aborted the
    object it knew, and one opened after that was aborted when its handle was refused. Still
    ours (the worker is stopping): released, and the next run requested for another worker.
    """
    current = upload_get(upload_id=upload_id)
    if current is None:
        return None
    if current.status in (UploadStatus.CANCELLED, UploadStatus.FAILED) and current.storage_upload_id:
        upload_abort_store(upload=current)
        logger.info("upload %s ended while its parts were sent; open object aborted", upload_id)
        return current
    return upload_pipeline_release(upload_id=upload_id, claim=claim)


def upload_pipeline_abort(*, upload: FileUpload) -> None:
    """The upload ended while receiving (cancelled, expired, refused): abort the object its parts went to.

    A pipeline run still sending finds its claim gone and aborts it again (`upload_pipeline_stopped`);
    one that opens the object after this is refused its handle and aborts it. A store error is
    logged: the row keeps the handle, and the sweep aborts it later.
    """
    if not upload.storage_upload_id:
        return
    try:
        upload_abort_store(upload=upload)
    except StorageError:
        logger.warning("upload %s: aborting its open object failed; the sweep retries", upload.id, exc_info=True)


def upload_pipeline_orphaned(*, upload_id: uuid.UUID, job_id: str, cause: str) -> bool:
    """The work horse running pipeline job `job_id` died under a live worker: free the claim it held
    and request what comes next at once, instead of after the stale window. False if that claim
    is not on the row (the horse died before claiming, or a newer run holds the upload).

    RECEIVING: the next pipeline run is requested. QUEUED (the last byte came while it sent) or
    UPLOADING (it had taken the transfer over): the transfer is queued again.
    """
    claim = pipeline_claim_for(job_id)
    row = FileUpload.objects.filter(id=upload_id, claim=claim).first()
    if row is None:
        return False
    if row.status == UploadStatus.UPLOADING:
        try:
            row = upload_transition(upload_id=upload_id, to=UploadStatus.QUEUED, owned_by=claim, claim=None)
        except ClaimLost:
            return False
    elif not FileUpload.objects.filter(id=upload_id, claim=claim, status=row.status).update(claim=None):
        return False
    logger.warning("upload %s: the work horse of pipeline job %s died (%s); claim freed", upload_id, job_id, cause)
    current = upload_get(upload_id=upload_id)
    if current is not None and current.status == UploadStatus.RECEIVING:
        upload_pipeline_nudge(upload=current)
    elif current is not None and current.status == UploadStatus.QUEUED:
        upload_enqueue(current, redelivery=True)
    return True


def upload_pipeline_requeue_stale(*, stale_after_seconds: float) -> list[uuid.UUID]:
    """Free the claims of pipeline runs silent too long (a SIGKILLed worker) and request new runs.

    A QUEUED upload so freed gets its transfer job again (the one queued at its last byte found
    the claim held and left it to the run that died). Then `upload_pipeline_requeue_behind`.
    """
    freed = _requeue_silent(stale_after_seconds=stale_after_seconds)
    upload_pipeline_requeue_behind()
    return freed


def upload_pipeline_requeue_behind() -> list[uuid.UUID]:
    """Request a run for every RECEIVING upload with whole parts unsent that no run holds.

    What is left there: a run that failed (it asks for no next run itself, or a store that
    refuses every part would be asked again at once, in a loop), or a request Redis lost. The
    reaper calls this every few seconds: while the client sends nothing new, that is when the
    parts go. An upload whose last run failed is skipped until its backoff ends
    (`upload_pipeline_failed`), so a store outage costs one run per upload per backoff, not one
    per reaper tick. Requests are debounced as the appender's are. The uploads requested for.
    """
    if not settings.UPLOAD_PIPELINE:
        return []
    behind = (
        FileUpload.objects.filter(
            status=UploadStatus.RECEIVING,
            mode=UploadMode.RESUMABLE,
            claim__isnull=True,
            part_size__gt=0,
            bytes_received__gte=(F("parts_uploaded") + 1) * F("part_size"),
        )
        .exclude(concat_role=ConcatRole.PARTIAL)
        .exclude(content_type="")
    )
    due = [upload for upload in behind if pipeline_whole_parts(upload) > upload.parts_uploaded]
    waiting = pipeline_backing_off([upload.id for upload in due])
    requested = []
    for upload in due:
        if upload.id not in waiting and upload_pipeline_nudge(upload=upload):
            requested.append(upload.id)
    return requested


def _requeue_silent(*, stale_after_seconds: float) -> list[uuid.UUID]:
    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    freed = []
    silent = FileUpload.objects.filter(
        status__in=[UploadStatus.RECEIVING, UploadStatus.QUEUED], claim__isnull=False, heartbeat_at__lt=cutoff
    ).values_list("id", "claim")
    for upload_id, claim in silent:
        if not FileUpload.objects.filter(id=upload_id, claim=claim, heartbeat_at__lt=cutoff).update(claim=None):
            continue
        logger.warning("upload %s: pipeline run silent for %ss, claim freed", upload_id, stale_after_seconds)
        current = upload_get(upload_id=upload_id)
        if current is not None and current.status == UploadStatus.RECEIVING:
            upload_pipeline_nudge(upload=current)
        elif current is not None and current.status == UploadStatus.QUEUED:
            upload_enqueue(current, redelivery=True)
        freed.append(upload_id)
    return freed
