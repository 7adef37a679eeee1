"""Writes: every change to an upload goes through these functions.

A package split along its seams; import from here, the names stay where they were:
- `transitions`: the state table and every state move, and the transfer's ledger writes;
- `actions`: what a client asks for (create, cancel, retry, delete) and the clean-up after a stop;
- `queueing`: when an upload is owed a transfer job (the queue itself is `backend.uploads.jobqueue`);
- `pipeline`: the whole parts of a RESUMABLE upload sent while its client still sends (issue 19);
- `upkeep`: the reaper (silent transfers and lost jobs queued again);
- `sweep`: staged bytes, leftovers and open objects no upload needs any more.
"""

from __future__ import annotations

from backend.uploads.errors import ClaimLost
from backend.uploads.services.actions import (
    SHA256_RE,
    upload_abort_store,
    upload_cancel,
    upload_create,
    upload_delete,
    upload_retry,
    upload_transfer_stopped,
)
from backend.uploads.services.pipeline import (
    pipeline_claim_for,
    upload_pipeline_abort,
    upload_pipeline_arrived,
    upload_pipeline_claim,
    upload_pipeline_failed,
    upload_pipeline_nudge,
    upload_pipeline_orphaned,
    upload_pipeline_release,
    upload_pipeline_requeue_stale,
    upload_pipeline_sent,
    upload_pipeline_started,
    upload_pipeline_stopped,
)
from backend.uploads.services.queueing import upload_enqueue
from backend.uploads.services.sweep import SWEEP_GRACE_SECONDS, SweepItem, SweepReport, upload_sweep
from backend.uploads.services.transitions import (
    ALLOWED_MOVES,
    upload_claim,
    upload_complete,
    upload_fail,
    upload_heartbeat,
    upload_record_part,
    upload_release,
    upload_set_storage_handle,
    upload_start_over,
    upload_transition,
)
from backend.uploads.services.upkeep import upload_requeue_lost, upload_requeue_orphaned, upload_requeue_stale

__all__ = [
    "ALLOWED_MOVES",
    "SHA256_RE",
    "SWEEP_GRACE_SECONDS",
    "ClaimLost",
    "SweepItem",
    "SweepReport",
    "pipeline_claim_for",
    "upload_abort_store",
    "upload_cancel",
    "upload_claim",
    "upload_complete",
    "upload_create",
    "upload_delete",
    "upload_enqueue",
    "upload_fail",
    "upload_heartbeat",
    "upload_pipeline_abort",
    "upload_pipeline_arrived",
    "upload_pipeline_claim",
    "upload_pipeline_failed",
    "upload_pipeline_nudge",
    "upload_pipeline_orphaned",
    "upload_pipeline_release",
    "upload_pipeline_requeue_stale",
    "upload_pipeline_sent",
    "upload_pipeline_started",
    "upload_pipeline_stopped",
    "upload_record_part",
    "upload_release",
    "upload_requeue_lost",
    "upload_requeue_orphaned",
    "upload_requeue_stale",
    "upload_retry",
    "upload_set_storage_handle",
    "upload_start_over",
    "upload_sweep",
    "upload_transfer_stopped",
    "upload_transition",
]
