"""RQ jobs. They take ids, load rows, call the transfer engine, and keep the books on failure."""

from __future__ import annotations

import logging
import uuid

from django.conf import settings
from django.db import close_old_connections

from backend.uploads import services
from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.progress import progress_publisher
from backend.uploads.storage import get_storage
from backend.uploads.transfer import TransferFailed, TransferStopped, stop_requested, transfer_upload

logger = logging.getLogger(__name__)


def upload_transfer(upload_id: str) -> None:
    """Copy one upload into the bucket. Safe to run twice: only the run holding the claim works."""
    # A forked work horse inherits the parent's database connections; never share them.
    close_old_connections()
    claimed = services.upload_claim(upload_id=uuid.UUID(upload_id))
    if claimed is None:
        logger.info("upload %s is not queued any more; nothing to do", upload_id)
        return
    upload, claim = claimed
    with progress_publisher():
        try:
            transfer_upload(upload=upload, claim=claim, storage=get_storage())
            services.upload_complete(upload_id=upload.id, claim=claim)
        except TransferFailed as exc:
            services.upload_fail(upload_id=upload.id, claim=claim, error=str(exc))
        except (TransferStopped, services.ClaimLost):
            _after_stop(upload_id=upload.id, claim=claim)
        except Exception as exc:
            logger.exception("upload %s: unexpected error in the transfer", upload.id)
            try:
                services.upload_fail(upload_id=upload.id, claim=claim, error=f"internal error: {type(exc).__name__}")
            except services.ClaimLost:
                pass


def _after_stop(*, upload_id: uuid.UUID, claim: uuid.UUID) -> None:
    """The transfer stopped early: abort if the upload was cancelled, give it back if the worker stops."""
    upload = FileUpload.objects.filter(id=upload_id).first()
    if upload is None:
        return
    if upload.status == UploadStatus.CANCELLED and upload.storage_upload_id:
        services.upload_abort_store(upload=upload)
        logger.info("upload %s cancelled; open object aborted", upload_id)
    elif stop_requested.is_set() and upload.status == UploadStatus.UPLOADING and upload.claim == claim:
        services.upload_release(upload_id=upload_id, claim=claim)
        logger.info("upload %s given back to the queue: the worker is stopping", upload_id)


def uploads_reap() -> None:
    """Queue again the transfers whose worker went silent (SIGKILL, lost machine)."""
    close_old_connections()
    services.upload_requeue_stale(stale_after_seconds=settings.UPLOAD_STALE_AFTER_SECONDS)
