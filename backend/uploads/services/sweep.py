"""The sweep: remove what no upload needs any more (expired staged bytes, leftovers, open objects)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from backend.uploads.models import FileUpload, UploadMode, UploadStatus
from backend.uploads.services.actions import upload_abort_store
from backend.uploads.staging import INCOMING, staging_dir, staging_path
from backend.uploads.storage import Storage, StorageError, TemporaryArea, get_capabilities

logger = logging.getLogger("backend.uploads.services")

# A file this young may belong to a request still writing it, or to an upload whose row is not
# committed yet (staged bytes are renamed into place inside the creating transaction).
SWEEP_GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class SweepItem:
    """One thing the sweep removed (or, in a dry run, would remove), and why it may go."""

    kind: str  # "staged", "incoming", "store-temporary" or "open-object"
    target: str  # a path, a temporary entry's name, or an open object's handle
    reason: str
    size: int  # bytes it frees, when known (0 otherwise)


@dataclass
class SweepReport:
    dry_run: bool
    items: list[SweepItem] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(item.size for item in self.items)


def upload_sweep(
    *, dry_run: bool = False, ttl_seconds: float | None = None, grace_seconds: float = SWEEP_GRACE_SECONDS
) -> SweepReport:
    """Remove what no upload needs any more, so the disks stay flat; report every item.

    - FAILED/CANCELLED uploads kept longer than `ttl_seconds` (UPLOAD_STAGING_TTL) expire: their
      staged bytes go, the open store object the row names is aborted (by its key and handle, which
      works on any backend) and any object at its key is deleted; `retryUpload` then answers
      INVALID_STATE. The expiry is a conditional update, so a retry that wins keeps its bytes.
    - Staged bytes of COMPLETED uploads that remain (a worker died between the two steps).
    - Staged files and `incoming/` files no row explains, older than `grace_seconds`.
    - Entries of the store's temporary area (if it has one) that no row's handle names, older
      than `grace_seconds`.
    With `dry_run` nothing changes. A store error on one item is logged and the sweep goes on.
    """
    ttl = settings.UPLOAD_STAGING_TTL if ttl_seconds is None else ttl_seconds
    report = SweepReport(dry_run=dry_run)
    _sweep_receiving(report=report, dry_run=dry_run)
    store = get_capabilities()
    storage = store.core
    expired = _sweep_expired(
        report=report, storage=storage, cutoff=timezone.now() - timedelta(seconds=ttl), dry_run=dry_run
    )
    _sweep_staging(report=report, grace_seconds=grace_seconds, dry_run=dry_run, already=expired)
    _sweep_incoming(report=report, grace_seconds=grace_seconds, dry_run=dry_run)
    if store.temporary is not None:
        _sweep_store_temporary(report=report, storage=store.temporary, grace_seconds=grace_seconds, dry_run=dry_run)
    logger.info("sweep%s: %d items, %d bytes", " (dry run)" if dry_run else "", len(report.items), report.freed_bytes)
    return report


def _sweep_receiving(*, report: SweepReport, dry_run: bool) -> None:
    """RECEIVING uploads with no new byte for UPLOAD_RECEIVING_TTL: FAILED "expired", bytes removed."""
    from backend.uploads.services.direct import direct_expire
    from backend.uploads.services.resumable import resumable_expire

    due = FileUpload.objects.filter(status=UploadStatus.RECEIVING, expires_at__lt=timezone.now())
    for upload in due:
        size = _size_of(staging_path(upload.id))
        expire = direct_expire if upload.mode == UploadMode.DIRECT else resumable_expire
        if dry_run or expire(upload=upload):
            reason = f"upload {upload.id} expired while receiving"
            report.items.append(SweepItem(kind="staged", target=str(staging_path(upload.id)), reason=reason, size=size))


def _sweep_expired(*, report: SweepReport, storage: Storage, cutoff: datetime, dry_run: bool) -> set[uuid.UUID]:
    """Expire FAILED/CANCELLED uploads kept past the TTL (and finish expiries a store error cut short)."""
    kept = (UploadStatus.FAILED, UploadStatus.CANCELLED)
    due = Q(staged_at__lt=cutoff) | Q(staged_at__isnull=True, storage_upload_id__isnull=False)
    expired = set()
    for upload in FileUpload.objects.filter(due, status__in=kept):
        if not dry_run and not FileUpload.objects.filter(
            Q(staged_at__lt=cutoff) | Q(staged_at__isnull=True), id=upload.id, status=upload.status
        ).update(staged_at=None):
            continue  # retried since we read it: the bytes are needed again
        expired.add(upload.id)
        path = staging_path(upload.id)
        if path.exists():
            item = SweepItem(
                kind="staged",
                target=str(path),
                reason=f"{upload.status} upload {upload.id} kept past UPLOAD_STAGING_TTL",
                size=_size_of(path),
            )
            _sweep_remove(report, item, dry_run, partial(path.unlink, missing_ok=True))
        if upload.storage_upload_id:
            item = SweepItem(
                kind="open-object",
                target=upload.storage_upload_id,
                reason=f"open object of expired {upload.status} upload {upload.id} at {upload.storage_key}",
                size=0,
            )
            _sweep_remove(report, item, dry_run, partial(upload_abort_store, upload=upload))
        if not dry_run:
            # A transfer whose complete() beat its cancel or failure left an object no one will fetch.
            _sweep_call(partial(storage.delete_object, key=upload.storage_key))
    return expired


def _sweep_staging(*, report: SweepReport, grace_seconds: float, dry_run: bool, already: set[uuid.UUID]) -> None:
    """Staged files of COMPLETED or expired uploads, and old ones of no upload at all."""
    directory = staging_dir()
    if not directory.is_dir():
        return
    found: dict[uuid.UUID, Path] = {}
    for path in directory.iterdir():
        try:
            upload_id = uuid.UUID(path.name)
        except ValueError:
            continue  # only files named by upload id are staged bytes; incoming/ is swept on its own
        if upload_id not in already and path.is_file():
            found[upload_id] = path
    rows: dict[uuid.UUID, tuple[str | None, datetime | None]] = {}
    ids = list(found)
    for start in range(0, len(ids), 500):
        batch = FileUpload.objects.filter(id__in=ids[start : start + 500])
        for row_id, row_status, row_staged_at in batch.values_list("id", "status", "staged_at"):
            rows[row_id] = (row_status, row_staged_at)
    for upload_id, path in found.items():
        status, staged_at = rows.get(upload_id, (None, None))
        if status is None:
            if _age_of(path) < grace_seconds:
                continue
            reason = "no upload row"
        elif status == UploadStatus.COMPLETED:
            reason = f"upload {upload_id} is COMPLETED"
        elif status in (UploadStatus.FAILED, UploadStatus.CANCELLED) and staged_at is None:
            reason = f"{status} upload {upload_id} expired"
        else:
            continue
        item = SweepItem(kind="staged", target=str(path), reason=reason, size=_size_of(path))
        _sweep_remove(report, item, dry_run, partial(path.unlink, missing_ok=True))


def _sweep_incoming(*, report: SweepReport, grace_seconds: float, dry_run: bool) -> None:
    """Files a request left in incoming/ (it died before it could discard them)."""
    directory = staging_dir() / INCOMING
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.is_file() and _age_of(path) >= grace_seconds:
            item = SweepItem(
                kind="incoming",
                target=str(path),
                reason=f"left by a request over {int(grace_seconds)}s ago",
                size=_size_of(path),
            )
            _sweep_remove(report, item, dry_run, partial(path.unlink, missing_ok=True))


def _sweep_store_temporary(*, report: SweepReport, storage: TemporaryArea, grace_seconds: float, dry_run: bool) -> None:
    """Entries of the store's temporary area that no row's handle names (their transfer is gone)."""
    entries = storage.temporary_entries()
    handles = [e.handle for e in entries if e.handle]
    known: set[str | None] = set()
    for start in range(0, len(handles), 500):
        batch = FileUpload.objects.filter(storage_upload_id__in=handles[start : start + 500])
        known |= set(batch.values_list("storage_upload_id", flat=True))
    now = time.time()
    for entry in entries:
        if entry.handle in known or now - entry.modified < grace_seconds:
            continue
        item = SweepItem(
            kind="store-temporary",
            target=entry.name,
            reason="open object no upload names" if entry.handle else "temporary file of no upload",
            size=entry.size,
        )
        _sweep_remove(report, item, dry_run, partial(storage.temporary_remove, name=entry.name))


def _sweep_remove(report: SweepReport, item: SweepItem, dry_run: bool, remove: Callable[[], object]) -> None:
    """Report `item`, and remove it unless this is a dry run (a failure is logged, not raised)."""
    if dry_run or _sweep_call(remove):
        report.items.append(item)


def _sweep_call(call: Callable[[], object]) -> bool:
    try:
        call()
    except (StorageError, OSError):
        logger.warning("sweep: a removal failed; the next sweep tries again", exc_info=True)
        return False
    return True


def _age_of(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
