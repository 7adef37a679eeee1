"""RQ jobs. They take ids, load rows, call the transfer engine, and keep the books on failure."""

from __future__ import annotations

import logging
import time
import uuid

from django.conf import settings
from django.db import close_old_connections

from backend.logs import upload_log_context
from backend.uploads import services
from backend.uploads.metrics import metrics_observe_transfer
from backend.uploads.direct.finishing import direct_finish
from backend.uploads.models import FileUpload, UploadMode, UploadStatus
from backend.uploads.progress import progress_publisher
from backend.uploads.storage import get_storage
from backend.uploads.transfer import TransferFailed, TransferStopped, stop_requested, transfer_upload

logger = logging.getLogger(__name__)


def upload_transfer(upload_id: str) -> None:
    """Copy one upload into the bucket. Safe to run twice: only the run holding the claim works."""
    with upload_log_context(upload_id):
        _upload_transfer(upload_id)


def _upload_transfer(upload_id: str) -> None:
    # A forked work horse inherits the parent's database connections; never share them.
    close_old_connections()
    # The claim's event goes through the job's publisher too: outside it, one event costs a new
    # event loop and a new Redis connection.
    with progress_publisher():
        claimed = services.upload_claim(upload_id=uuid.UUID(upload_id))
        if claimed is None:
            logger.info("upload %s is not queued any more; nothing to do", upload_id)
            return
        upload, claim = claimed
        started = time.monotonic()
        try:
            if upload.mode == UploadMode.DIRECT:
                # The client put the bytes into the bucket itself: complete and verify the object.
                direct_finish(upload=upload, claim=claim, storage=get_storage())
            else:
                transfer_upload(upload=upload, claim=claim, storage=get_storage())
            services.upload_complete(upload_id=upload.id, claim=claim)
            metrics_observe_transfer(seconds=time.monotonic() - started, outcome="completed")
        except TransferFailed as exc:
            _fail_or_stop(upload=upload, claim=claim, error=str(exc), started=started)
        except (TransferStopped, services.ClaimLost):
            _after_stop(upload=upload, claim=claim)
        except Exception as exc:
            logger.exception("upload %s: unexpected error in the transfer", upload.id)
            _fail_or_stop(upload=upload, claim=claim, error=f"internal error: {type(exc).__name__}", started=started)


def _fail_or_stop(*, upload: FileUpload, claim: uuid.UUID, error: str, started: float) -> None:
    """Record the failure; if the run lost the upload meanwhile (cancelled, deleted), clean up instead."""
    try:
        services.upload_fail(upload_id=upload.id, claim=claim, error=error)
    except services.ClaimLost:
        _after_stop(upload=upload, claim=claim)
    else:
        metrics_observe_transfer(seconds=time.monotonic() - started, outcome="failed")


def _after_stop(*, upload: FileUpload, claim: uuid.UUID) -> None:
    """The transfer stopped early: clean up after a cancel or delete, give it back if the worker stops.

    `upload` is the row as this run claimed it; the current row is read again here.
    """
    current = FileUpload.objects.filter(id=upload.id).first()
    if current is None:
        # Deleted while we ran: our complete() may have landed after the delete removed the object,
        # and no one else can write this key (it is the deleted upload's own).
        get_storage().delete_object(key=upload.storage_key)
        logger.info("upload %s deleted while transferring; its object is removed", upload.id)
    elif current.status == UploadStatus.CANCELLED and current.storage_upload_id:
        services.upload_abort_store(upload=current)
        logger.info("upload %s cancelled; open object aborted", upload.id)
    elif stop_requested.is_set() and current.status == UploadStatus.UPLOADING and current.claim == claim:
        services.upload_release(upload_id=upload.id, claim=claim)
        logger.info("upload %s given back to the queue: the worker is stopping", upload.id)


def uploads_reap() -> None:
    """Queue again the transfers whose worker went silent (SIGKILL, lost machine), and lost jobs."""
    close_old_connections()
    services.upload_requeue_stale(stale_after_seconds=settings.UPLOAD_STALE_AFTER_SECONDS)
    services.upload_requeue_lost(stale_after_seconds=settings.UPLOAD_STALE_AFTER_SECONDS)


def uploads_sweep() -> None:
    """Remove staged bytes, temporary files and open store objects no upload needs (the sweep)."""
    close_old_connections()
    services.upload_sweep()
