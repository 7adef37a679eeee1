"""The transfer engine: copies a staged file into the bucket part by part.

Up to `UPLOAD_PART_CONCURRENCY` parts are in flight, each read from staging only when its turn
comes, so memory stays near (concurrency + 1) x part size whatever the file size. A part that
fails is tried again on its own (backoff with jitter) while the others go on. Each confirmed part
enters the ledger before the next is counted; a run started again for the same upload reconciles
the ledger with what the store lists and sends only the rest.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from django.conf import settings

from backend.uploads import services
from backend.uploads.metrics import metrics_add, metrics_count
from backend.uploads.models import FileUpload, UploadPart, UploadStatus
from backend.uploads.parts import backoff_delay, part_range
from backend.uploads.staging import staging_path
from backend.uploads.storage import PartFromFile, PartReceipt, Storage, StorageError, storage_call_with_retries

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TransferFailed(Exception):
    """The transfer cannot finish: a part ran out of attempts or the store refused for good."""


class TransferStopped(Exception):
    """The transfer must stop before its next part (cancelled, claim lost, worker stopping)."""


STAGED_BYTES_MISSING = (
    "the staged bytes of this upload are gone: this worker does not find them in its UPLOAD_STAGING_DIR,"
    " which every server and worker must share"
)

# Set by the worker's SIGTERM handler: finish the parts in flight, start no new ones.
stop_requested = threading.Event()


def transfer_upload(*, upload: FileUpload, claim: uuid.UUID, storage: Storage) -> None:
    """Copy `upload`'s staged bytes into the store and assemble the object.

    Raises TransferFailed, TransferStopped or services.ClaimLost; returns once the object is whole.
    """
    source = staging_path(upload.id)
    if not source.exists():
        # The web process that accepted the upload staged it; a worker that cannot see it is most
        # likely not sharing the staging directory. Say so, without naming the server's paths.
        raise TransferFailed(STAGED_BYTES_MISSING)
    metadata = {"sha256": upload.sha256 or "", "filename": upload.filename}
    if upload.size == 0:
        _call_store(
            lambda: storage.put_object(
                key=upload.storage_key, data=b"", content_type=upload.content_type, metadata=metadata
            )
        )
        return

    handle = upload.storage_upload_id
    if handle is None:
        handle = _call_store(
            lambda: storage.start(key=upload.storage_key, content_type=upload.content_type, metadata=metadata)
        )
        try:
            services.upload_set_storage_handle(upload_id=upload.id, claim=claim, handle=handle)
        except services.ClaimLost:
            # Cancelled or deleted meanwhile: no row will ever name this object, so abort it now.
            storage.abort(key=upload.storage_key, handle=handle)
            raise

    confirmed = _reconcile(upload=upload, claim=claim, storage=storage, handle=handle)
    pending = deque(n for n in range(1, upload.parts_total + 1) if n not in confirmed)
    fd = os.open(source, os.O_RDONLY)
    try:
        _send_parts(upload=upload, claim=claim, storage=storage, handle=handle, fd=fd, pending=pending)
    finally:
        os.close(fd)

    receipts = [
        PartReceipt(part_number=p.part_number, size=p.size, etag=p.etag, checksum=p.checksum)
        for p in UploadPart.objects.filter(upload_id=upload.id).order_by("part_number")
    ]
    if [r.part_number for r in receipts] != list(range(1, upload.parts_total + 1)):
        raise TransferFailed("the part ledger is incomplete after every part was sent")
    _call_store(lambda: storage.complete(key=upload.storage_key, handle=handle, parts=receipts, size=upload.size))


def _reconcile(*, upload: FileUpload, claim: uuid.UUID, storage: Storage, handle: str) -> set[int]:
    """Part numbers both the ledger and the store confirm; parts only the store lists are recorded."""
    ledger = {p.part_number: p for p in UploadPart.objects.filter(upload_id=upload.id)}
    listed = {r.part_number: r for r in _call_store(lambda: storage.list_parts(key=upload.storage_key, handle=handle))}
    confirmed = set()
    for number, receipt in listed.items():
        try:
            _, length = part_range(part_number=number, size=upload.size, part_size=upload.part_size)
        except ValueError:
            continue
        if receipt.size != length:
            continue
        if number not in ledger:
            services.upload_record_part(upload_id=upload.id, claim=claim, receipt=receipt)
        confirmed.add(number)
    return confirmed


def _send_parts(
    *, upload: FileUpload, claim: uuid.UUID, storage: Storage, handle: str, fd: int, pending: deque[int]
) -> None:
    concurrency = max(1, settings.UPLOAD_PART_CONCURRENCY)
    heartbeat_every = settings.UPLOAD_HEARTBEAT_SECONDS
    last_beat = time.monotonic()
    failure: BaseException | None = None
    stopping = False
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="part") as pool:
        in_flight: dict[Future[PartReceipt], int] = {}
        while in_flight or (pending and not stopping and failure is None):
            while pending and len(in_flight) < concurrency and not stopping and failure is None:
                if stop_requested.is_set() or not _still_ours(upload.id, claim):
                    stopping = True
                    break
                number = pending.popleft()
                # A fresh copy of this thread's context per part, so its log lines carry the upload id.
                future = pool.submit(
                    contextvars.copy_context().run,
                    _send_part,
                    upload=upload,
                    storage=storage,
                    handle=handle,
                    fd=fd,
                    number=number,
                )
                in_flight[future] = number
            if not in_flight:
                break
            done, _ = wait(in_flight, timeout=heartbeat_every, return_when=FIRST_COMPLETED)
            for future in done:
                in_flight.pop(future)
                try:
                    receipt = future.result()
                except TransferFailed as exc:
                    failure = failure or exc
                    continue
                try:
                    services.upload_record_part(upload_id=upload.id, claim=claim, receipt=receipt)
                except services.ClaimLost as exc:
                    failure = failure or exc
            if time.monotonic() - last_beat >= heartbeat_every:
                last_beat = time.monotonic()
                if not services.upload_heartbeat(upload_id=upload.id, claim=claim):
                    stopping = True
    if failure is not None:
        raise failure
    if stopping:
        raise TransferStopped("the transfer was asked to stop")


def _still_ours(upload_id: uuid.UUID, claim: uuid.UUID) -> bool:
    return FileUpload.objects.filter(id=upload_id, claim=claim, status=UploadStatus.UPLOADING).exists()


def _send_part(*, upload: FileUpload, storage: Storage, handle: str, fd: int, number: int) -> PartReceipt:
    """Put one part from staging, trying up to UPLOAD_PART_RETRIES times."""
    attempts = max(1, settings.UPLOAD_PART_RETRIES)
    for attempt in range(1, attempts + 1):
        if settings.UPLOAD_PART_DELAY_MS:
            time.sleep(settings.UPLOAD_PART_DELAY_MS / 1000)
        metrics_count("part_attempts")
        try:
            receipt = _put_part(storage=storage, upload=upload, handle=handle, number=number, fd=fd)
        except StorageError as exc:
            metrics_count("part_failures")
            if not exc.retryable:
                raise TransferFailed(f"part {number}: {exc}") from exc
            if attempt == attempts:
                raise TransferFailed(f"part {number} failed {attempts} times; last error: {exc}") from exc
            logger.info("upload %s part %d attempt %d failed: %s", upload.id, number, attempt, exc)
        else:
            metrics_add({"parts_confirmed": 1, "bytes_transferred": receipt.size})
            return receipt
        time.sleep(backoff_delay(attempt=attempt))
    raise AssertionError("unreachable")


def _put_part(*, storage: Storage, upload: FileUpload, handle: str, number: int, fd: int) -> PartReceipt:
    """One attempt at part `number`: straight from the staged file if the store can, else its bytes."""
    offset, length = part_range(part_number=number, size=upload.size, part_size=upload.part_size)
    if isinstance(storage, PartFromFile):
        return storage.put_part_from_file(
            key=upload.storage_key, handle=handle, part_number=number, offset=offset, length=length, source_fd=fd
        )
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise StorageError(f"the staged file ends before part {number} does", retryable=False)
    return storage.put_part(key=upload.storage_key, handle=handle, part_number=number, offset=offset, data=data)


def _call_store(call: Callable[[], T]) -> T:
    """Run a whole-object store call (start, list, complete, put) with the same retry policy as parts."""
    try:
        return storage_call_with_retries(call, attempts=settings.UPLOAD_PART_RETRIES)
    except StorageError as exc:
        raise TransferFailed(str(exc)) from exc
