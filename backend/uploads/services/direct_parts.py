"""The ledger of a direct upload: each part the client reports is checked in the bucket first.

`confirmUploadPart` (and the parts Uppy lists at completion) enter the ledger only once the bucket
lists that part with the expected size and the same ETag (ListParts); each new or changed part
bumps `sequence` and is published, so subscribers see every part land. `completeUpload` needs
every part in the ledger, fixes the size of an upload that did not declare it, and queues the
worker that completes and verifies the object.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from backend.quotas.errors import QuotaExceeded
from backend.quotas.services import quota_reserve
from backend.uploads.errors import BadUserInput, InvalidState, UploadTooLarge
from backend.uploads.metrics import metrics_count
from backend.uploads.models import FileUpload, UploadPart, UploadStatus
from backend.uploads.parts import S3_MIN_PART_SIZE, part_range
from backend.uploads.progress import progress_publish
from backend.uploads.services.direct import (
    direct_receiving_get,
    direct_refuse,
    direct_store,
    part_number_check,
    store_call,
)
from backend.uploads.services.queueing import upload_enqueue
from backend.uploads.services.resumable import receiving_expires_at
from backend.uploads.services.transitions import ledger_insert, upload_transition
from backend.uploads.storage import PartReceipt
from backend.uploads.storage.s3 import etag_md5

logger = logging.getLogger(__name__)


def _listed(upload: FileUpload) -> dict[int, PartReceipt]:
    store = direct_store()
    receipts = store_call(lambda: store.list_parts(key=upload.storage_key, handle=str(upload.storage_upload_id)))
    return {r.part_number: r for r in receipts}


def _expected_length(upload: FileUpload, number: int) -> int | None:
    """The size part `number` must have; None while the upload's size is unknown."""
    if upload.length_deferred:
        return None
    return part_range(part_number=number, size=upload.size, part_size=upload.part_size)[1]


def _checked(upload: FileUpload, number: int, etag: str, listed: dict[int, PartReceipt]) -> PartReceipt:
    """The bucket's receipt for part `number` if it matches what the client says; BAD_USER_INPUT otherwise."""
    receipt = listed.get(number)
    if receipt is None:
        raise BadUserInput(f"part {number} is not in the bucket: put it before confirming it")
    if etag_md5(receipt.etag) != etag_md5(etag):
        raise BadUserInput(f"part {number} in the bucket has ETag {receipt.etag}, not {etag}")
    expected = _expected_length(upload, number)
    if expected is not None and receipt.size != expected:
        raise BadUserInput(f"part {number} in the bucket is {receipt.size} bytes; it must be {expected}")
    return receipt


def ledger_record(*, upload_id: uuid.UUID, receipt: PartReceipt) -> FileUpload | None:
    """Put a checked part in the ledger and the counters, then publish; None if nothing changed.

    A part put again (same number, new bytes) replaces its entry; its byte count is adjusted.
    """
    with transaction.atomic():
        # Most parts are new: insert first, and read the entry only when the part is already in.
        if ledger_insert(upload_id=upload_id, receipt=receipt):
            added, parts = receipt.size, 1
        else:
            previous = UploadPart.objects.filter(upload_id=upload_id, part_number=receipt.part_number).first()
            if previous is None or (previous.etag, previous.size) == (receipt.etag, receipt.size):
                return None  # confirmed already (or, concurrently, removed)
            UploadPart.objects.filter(id=previous.id).update(
                size=receipt.size, etag=receipt.etag, checksum=receipt.checksum
            )
            added, parts = receipt.size - previous.size, 0
        now = timezone.now()
        if not FileUpload.objects.filter(id=upload_id, status=UploadStatus.RECEIVING).update(
            sequence=F("sequence") + 1,
            bytes_received=F("bytes_received") + added,
            bytes_uploaded=F("bytes_uploaded") + added,
            parts_uploaded=F("parts_uploaded") + parts,
            updated_at=now,
            expires_at=receiving_expires_at(),
        ):
            raise InvalidState("this upload takes no more parts")
        upload = FileUpload.objects.get(id=upload_id)
        transaction.on_commit(lambda: progress_publish(upload, part_number=receipt.part_number))
    metrics_count("parts_confirmed")
    return upload


def direct_confirm(*, user: User, upload_id: uuid.UUID, part_number: int, etag: str) -> FileUpload:
    """confirmUploadPart: check part `part_number` in the bucket (size, ETag), record and publish it."""
    upload = direct_receiving_get(user=user, upload_id=upload_id)
    part_number_check(upload, part_number)
    if not etag.strip():
        raise BadUserInput("etag must be the ETag the bucket answered to the part's PUT")
    store = direct_store()
    handle = str(upload.storage_upload_id)
    listed = store_call(lambda: store.part_listed(key=upload.storage_key, handle=handle, part_number=part_number))
    # One small page finds the part (on S3, and on moto while few lower parts are in flight); a part
    # not on it is looked for in the whole listing before it is refused.
    receipt = _checked(upload, part_number, etag, {part_number: listed} if listed is not None else _listed(upload))
    return ledger_record(upload_id=upload.id, receipt=receipt) or FileUpload.objects.get(id=upload.id)


def direct_parts_listed(*, user: User, upload_id: uuid.UUID) -> list[PartReceipt]:
    """The parts the bucket holds for the caller's RECEIVING direct upload (Companion's ListParts)."""
    upload = direct_receiving_get(user=user, upload_id=upload_id)
    return sorted(_listed(upload).values(), key=lambda r: r.part_number)


def ledger_take_listed(*, upload: FileUpload, listed: Iterable[PartReceipt]) -> None:
    """Record the parts the bucket lists that the ledger lacks (an upload whose client confirms none)."""
    known = set(UploadPart.objects.filter(upload_id=upload.id).values_list("part_number", "etag"))
    for receipt in listed:
        if (receipt.part_number, receipt.etag) not in known:
            ledger_record(upload_id=upload.id, receipt=receipt)


# --- completing -------------------------------------------------------------------------------


def direct_complete(*, user: User, upload_id: uuid.UUID, parts: list[tuple[int, str]] | None = None) -> FileUpload:
    """completeUpload: every part in, RECEIVING -> QUEUED and the worker queued to finish the object.

    `parts` (Uppy's list of PartNumber and ETag) are checked against the bucket and recorded first;
    then the ledger must hold parts 1..N with nothing missing (BAD_USER_INPUT naming them). An
    upload of unknown size gets it here: every part but the last of one size (at least 5 MiB), the
    total within UPLOAD_MAX_BYTES and the quota, or the upload ends FAILED with its parts removed.
    """
    upload = direct_receiving_get(user=user, upload_id=upload_id)
    if parts is not None:
        _take_client_parts(upload, parts)
    ledger = list(UploadPart.objects.filter(upload_id=upload.id).order_by("part_number"))
    numbers = [p.part_number for p in ledger]
    wanted = upload.parts_total if not upload.length_deferred else (max(numbers) if numbers else 0)
    if upload.length_deferred and not numbers:
        raise BadUserInput("no part is in: put and confirm at least one part")
    missing = sorted(set(range(1, wanted + 1)) - set(numbers))
    if missing:
        raise BadUserInput(f"parts not confirmed yet: {_ranges(missing)}")
    fields: dict[str, Any] = {}
    if upload.length_deferred:
        fields = _fix_size(upload, ledger)
    try:
        with transaction.atomic():
            if upload.length_deferred:
                # The size reserved so far was an estimate; the real one may need more.
                quota_reserve(user=user, size=max(0, fields["size"] - upload.size))
            queued = upload_transition(
                upload_id=upload.id,
                to=UploadStatus.QUEUED,
                expected=[UploadStatus.RECEIVING],
                expires_at=None,
                bytes_received=fields.get("size", upload.size),
                **fields,
            )
            upload_enqueue(queued)
    except QuotaExceeded as exc:
        direct_refuse(upload=upload, error=exc)
        raise
    metrics_count("bytes_received", queued.size)
    logger.info("upload %s: every part is in the bucket (%d bytes); queued to complete", queued.id, queued.size)
    return queued


def _take_client_parts(upload: FileUpload, parts: list[tuple[int, str]]) -> None:
    """Check and record Uppy's parts; the ledger then holds exactly these (a stray listed part is dropped)."""
    if not parts:
        raise BadUserInput("parts must list at least one part")
    numbers = [number for number, _ in parts]
    twice = sorted({n for n in numbers if numbers.count(n) > 1})
    if twice:
        raise BadUserInput(f"parts listed more than once: {_ranges(twice)}")
    for number in numbers:
        part_number_check(upload, number)
    listed = _listed(upload)
    for number, etag in parts:
        ledger_record(upload_id=upload.id, receipt=_checked(upload, number, etag, listed))
    UploadPart.objects.filter(upload_id=upload.id).exclude(part_number__in=numbers).delete()


def _fix_size(upload: FileUpload, ledger: list[UploadPart]) -> dict[str, Any]:
    """The size, part size and count of an upload that declared none, from its (complete) ledger."""
    part_size = ledger[0].size
    uneven = [p.part_number for p in ledger[:-1] if p.size != part_size]
    problem = ""
    if uneven:
        problem = f"every part but the last must be {part_size} bytes like part 1; parts {_ranges(uneven)} are not"
    elif len(ledger) > 1 and part_size < S3_MIN_PART_SIZE:
        problem = f"parts before the last must be at least {S3_MIN_PART_SIZE} bytes; part 1 is {part_size}"
    elif ledger[-1].size > part_size:
        problem = f"the last part ({ledger[-1].size} bytes) is larger than part 1 ({part_size})"
    if problem:
        raise BadUserInput(problem)
    size = sum(p.size for p in ledger)
    if size > settings.UPLOAD_MAX_BYTES:
        error = UploadTooLarge(f"uploads are limited to {settings.UPLOAD_MAX_BYTES} bytes; this one is {size}")
        direct_refuse(upload=upload, error=error)
        raise error
    return {"size": size, "part_size": part_size, "parts_total": len(ledger), "length_deferred": False}


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 5, 7, 8 as "1-3, 5, 7-8" (a list of 10,000 missing parts stays short)."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
