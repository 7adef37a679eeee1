"""RQ jobs. They take ids, load rows, call the transfer engine, and keep the books on failure.

RQ finds them by dotted path (`backend.uploads.jobqueue`): nothing in the service layer imports
this module. A job is a door onto the services like a resolver is: the writes it needs (claim,
ledger, complete, fail, the clean-up after a stop) are services; the reads are selectors.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from types import TracebackType
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection

from backend.logs import upload_log_context
from backend.uploads import services
from backend.uploads.errors import ClaimLost
from backend.uploads.finishing import FinishSpec, direct_finish
from backend.uploads.jobqueue import current_job_id
from backend.uploads.metrics import metrics_add, metrics_observe_transfer
from backend.uploads.models import FileUpload, UploadMode, UploadStatus
from backend.uploads.progress import progress_publisher
from backend.uploads.selectors import upload_get, upload_is_claimed_by, upload_parts_list
from backend.uploads.staging import staging_path
from backend.uploads.storage import PartReceipt, StorageError, get_capabilities, storage_retry_policy
from backend.uploads.transfer import (
    TransferFailed,
    TransferSettings,
    TransferSpec,
    TransferStopped,
    stop_requested,
    transfer_arrived_parts,
    transfer_upload,
)

logger = logging.getLogger(__name__)


class TransferLease:
    """The heartbeat of one claimed run, kept from a thread of its own.

    Every UPLOAD_HEARTBEAT_SECONDS it touches the row's `heartbeat_at` (on the claim), whatever the
    transfer is doing meanwhile: a part slower than the stale window, a store assembling a large
    object in `complete`, a ledger write waiting for a lock. So a live run is never taken for dead,
    and the heartbeat stops exactly when the process running the transfer dies. Once the claim is
    gone (the reaper gave the upload to another run, a cancel, a delete) `held` turns False and the
    run's stop check stops it before its next part.
    """

    def __init__(self, *, upload_id: uuid.UUID, claim: uuid.UUID, every: float) -> None:
        self.upload_id = upload_id
        self.claim = claim
        self.every = max(0.1, every)
        self.held = True
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._beat,), name=f"lease-{upload_id}", daemon=True
        )

    def __enter__(self) -> TransferLease:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        try:
            while not self._done.wait(self.every):
                try:
                    if not services.upload_heartbeat(upload_id=self.upload_id, claim=self.claim):
                        self.held = False
                        return
                except Exception:
                    # A database hiccup: the next beat tries again; silence long enough is the reaper's call.
                    logger.warning("upload %s: heartbeat not written", self.upload_id, exc_info=True)
        finally:
            connection.close()  # this thread's own connection


class UploadLedger:
    """The engine's `Ledger` for one claimed run: the upload row and its parts, through the services."""

    def __init__(self, *, upload_id: uuid.UUID, claim: uuid.UUID, lease: TransferLease) -> None:
        self.upload_id = upload_id
        self.claim = claim
        self.lease = lease

    def parts(self) -> list[PartReceipt]:
        return upload_parts_list(upload_id=self.upload_id)

    def record_part(self, receipt: PartReceipt) -> None:
        services.upload_record_part(upload_id=self.upload_id, claim=self.claim, receipt=receipt)

    def set_storage_handle(self, handle: str) -> None:
        services.upload_set_storage_handle(upload_id=self.upload_id, claim=self.claim, handle=handle)

    def start_over(self, handle: str) -> None:
        services.upload_start_over(upload_id=self.upload_id, claim=self.claim, handle=handle)

    def heartbeat(self) -> bool:
        # The lease's thread writes the heartbeat on its own clock; the engine only asks whether it holds.
        return self.lease.held

    def should_stop(self) -> bool:
        """The engine's stop check: the worker is stopping, or the run no longer owns the upload."""
        return (
            stop_requested.is_set()
            or not self.lease.held
            or not upload_is_claimed_by(upload_id=self.upload_id, claim=self.claim)
        )


def transfer_spec(upload: FileUpload) -> TransferSpec:
    # An object opened while its bytes were still arriving (pipelining) carries the declared sha256,
    # which is verified before the object is completed; without one, none (the API has the digest).
    sha256 = upload.sha256 or upload.expected_sha256 or ""
    return TransferSpec(
        upload_id=upload.id,
        key=upload.storage_key,
        size=upload.size,
        part_size=upload.part_size,
        parts_total=upload.parts_total,
        content_type=upload.content_type,
        metadata={"sha256": sha256, "filename": upload.filename},
        handle=upload.storage_upload_id,
    )


def transfer_settings() -> TransferSettings:
    return TransferSettings(
        concurrency=settings.UPLOAD_PART_CONCURRENCY,
        heartbeat_seconds=settings.UPLOAD_HEARTBEAT_SECONDS,
        retry=storage_retry_policy(),
        part_delay_ms=settings.UPLOAD_PART_DELAY_MS,
    )


def upload_transfer(upload_id: str) -> None:
    """Copy one upload into the bucket. Safe to run twice: only the run holding the claim works."""
    with upload_log_context(upload_id):
        _upload_transfer(upload_id)


def _upload_transfer(upload_id: str, claim: uuid.UUID | None = None) -> None:
    # A forked work horse inherits the parent's database connections; never share them.
    close_old_connections()
    # The claim's event goes through the job's publisher too: outside it, one event costs a new
    # event loop and a new Redis connection.
    with progress_publisher():
        claimed = services.upload_claim(upload_id=uuid.UUID(upload_id), claim=claim)
        if claimed is None:
            logger.info("upload %s is not queued any more; nothing to do", upload_id)
            return
        upload, claim = claimed
        store = get_capabilities()
        started = time.monotonic()
        try:
            with TransferLease(upload_id=upload.id, claim=claim, every=settings.UPLOAD_HEARTBEAT_SECONDS) as lease:
                ledger = UploadLedger(upload_id=upload.id, claim=claim, lease=lease)
                last_part: PartReceipt | None = None
                if upload.mode == UploadMode.DIRECT:
                    found = _direct_finish(upload=upload, ledger=ledger)
                else:
                    last_part = transfer_upload(
                        spec=transfer_spec(upload),
                        source=staging_path(upload.id),
                        storage=store.core,
                        part_from_file=store.part_from_file,
                        ledger=ledger,
                        should_stop=ledger.should_stop,
                        config=transfer_settings(),
                        count=metrics_add,
                    )
                    found = {}
                services.upload_complete(upload_id=upload.id, claim=claim, last_part=last_part, **found)
            metrics_observe_transfer(seconds=time.monotonic() - started, outcome="completed")
        except TransferFailed as exc:
            _fail_or_stop(upload=upload, claim=claim, error=str(exc), started=started)
        except (TransferStopped, ClaimLost):
            _after_stop(upload=upload, claim=claim)
        except Exception as exc:
            logger.exception("upload %s: unexpected error in the transfer", upload.id)
            _fail_or_stop(upload=upload, claim=claim, error=f"internal error: {type(exc).__name__}", started=started)


def upload_pipeline(upload_id: str) -> None:
    """Send the whole parts a RECEIVING upload has so far, then end: never wait for the client.

    Queued (debounced) by the chunk appender as parts arrive (`services.upload_pipeline_nudge`).
    If the last byte came meanwhile (the upload is QUEUED), the transfer runs here at once.
    """
    with upload_log_context(upload_id):
        _upload_pipeline(uuid.UUID(upload_id))


def _upload_pipeline(upload_id: uuid.UUID) -> None:
    close_old_connections()
    services.upload_pipeline_started(upload_id=upload_id)
    # The claim this job's runs hold is derived from its id: if this horse dies, its worker frees
    # exactly that claim (`upload_pipeline_orphaned`).
    job_id = current_job_id()
    claim = services.pipeline_claim_for(job_id) if job_id is not None else None
    with progress_publisher():
        claimed = services.upload_pipeline_claim(upload_id=upload_id, claim=claim)
        current = _pipeline_run(*claimed) if claimed is not None else upload_get(upload_id=upload_id)
    if current is not None and current.status == UploadStatus.QUEUED:
        # The queued transfer job found the claim held; or it has not started yet and will find nothing.
        _upload_transfer(str(upload_id), claim=claim)


def _pipeline_run(upload: FileUpload, claim: uuid.UUID) -> FileUpload | None:
    store = get_capabilities()
    try:
        with TransferLease(upload_id=upload.id, claim=claim, every=settings.UPLOAD_HEARTBEAT_SECONDS) as lease:
            ledger = UploadLedger(upload_id=upload.id, claim=claim, lease=lease)
            sent = transfer_arrived_parts(
                spec=transfer_spec(upload),
                source=staging_path(upload.id),
                storage=store.core,
                part_from_file=store.part_from_file,
                ledger=ledger,
                should_stop=ledger.should_stop,
                config=transfer_settings(),
                arrived=lambda: services.upload_pipeline_arrived(upload_id=upload.id),
                count=metrics_add,
            )
        logger.info("upload %s: %d parts sent while receiving", upload.id, sent)
    except (TransferStopped, ClaimLost):
        return services.upload_pipeline_stopped(upload_id=upload.id, claim=claim)
    except (TransferFailed, StorageError) as exc:
        # Not the upload's failure: the transfer after its last byte tries these parts again,
        # with the whole retry policy, and fails the upload only then. A store down: one line.
        return services.upload_pipeline_failed(upload_id=upload.id, claim=claim, error=str(exc))
    except Exception as exc:
        error = f"unexpected error: {type(exc).__name__}"
        return services.upload_pipeline_failed(upload_id=upload.id, claim=claim, error=error, unexpected=True)
    return services.upload_pipeline_sent(upload_id=upload.id, claim=claim)


def _direct_finish(*, upload: FileUpload, ledger: UploadLedger) -> dict[str, Any]:
    """A DIRECT upload: its client put the parts; complete the object and verify it (`finishing`)."""
    spec = FinishSpec(
        upload_id=upload.id,
        key=upload.storage_key,
        handle=upload.storage_upload_id,
        size=upload.size,
        parts_total=upload.parts_total,
        expected_sha256=upload.expected_sha256,
        allowed_types=settings.UPLOAD_ALLOWED_TYPES,
    )
    store = get_capabilities()
    finished = direct_finish(
        spec=spec,
        parts=ledger.parts(),
        storage=store.core,
        direct=store.direct,
        heartbeat=ledger.heartbeat,
        heartbeat_seconds=settings.UPLOAD_HEARTBEAT_SECONDS,
        retry=storage_retry_policy(),
    )
    return {"content_type": finished.content_type, "sha256": finished.sha256}


def _fail_or_stop(*, upload: FileUpload, claim: uuid.UUID, error: str, started: float) -> None:
    """Record the failure; if the run lost the upload meanwhile (cancelled, deleted), clean up instead."""
    try:
        services.upload_fail(upload_id=upload.id, claim=claim, error=error)
    except ClaimLost:
        _after_stop(upload=upload, claim=claim)
    else:
        metrics_observe_transfer(seconds=time.monotonic() - started, outcome="failed")


def _after_stop(*, upload: FileUpload, claim: uuid.UUID) -> None:
    services.upload_transfer_stopped(upload=upload, claim=claim, worker_stopping=stop_requested.is_set())


def upload_transfer_orphaned(*, job_id: str, upload_id: str, cause: str) -> None:
    """The work horse running `job_id` died under a live worker (SIGKILL, out of memory, a crash):
    give its upload back to the queue now rather than after the stale window."""
    close_old_connections()
    with upload_log_context(upload_id):
        services.upload_requeue_orphaned(upload_id=uuid.UUID(upload_id), job_id=job_id, cause=cause)


def upload_pipeline_orphaned(*, job_id: str, upload_id: str, cause: str) -> None:
    """The work horse running pipeline job `job_id` died under a live worker: free its claim and
    request what comes next now rather than after the stale window."""
    close_old_connections()
    with upload_log_context(upload_id):
        services.upload_pipeline_orphaned(upload_id=uuid.UUID(upload_id), job_id=job_id, cause=cause)


def uploads_reap() -> None:
    """Queue again the transfers whose worker went silent (SIGKILL, lost machine), and lost jobs."""
    close_old_connections()
    services.upload_requeue_stale(stale_after_seconds=settings.UPLOAD_STALE_AFTER_SECONDS)
    services.upload_pipeline_requeue_stale(stale_after_seconds=settings.UPLOAD_STALE_AFTER_SECONDS)
    services.upload_requeue_lost(stale_after_seconds=settings.UPLOAD_STALE_AFTER_SECONDS)


def uploads_sweep() -> None:
    """Remove staged bytes, temporary files and open store objects no upload needs (the sweep)."""
    close_old_connections()
    services.upload_sweep()
