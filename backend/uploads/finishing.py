"""Finishing a DIRECT upload: complete the object its client put part by part, and verify it.

The worker's job (`jobs.upload_transfer`) hands this the upload as it needs it (`FinishSpec`), the
part ledger, the store and a heartbeat, like the transfer engine: it imports no service. It
completes the bucket's multipart upload from the ledger's parts, checks the object's size (and,
with MD5 ETags, that it is exactly those parts: `S3Storage.complete`), sniffs its first bytes for
the content type, and when the client declared a sha256 reads the whole object back, streamed in
1 MiB chunks (memory stays at one chunk whatever the size), and compares. A refusal removes the
object and raises TransferFailed whose message starts with the contract's code
(`CHECKSUM_MISMATCH: ...`). Run again after a crash, it finds the object already complete
(`complete` accepts NoSuchUpload when the object is the right one) and verifies it again.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState

from backend.retries import RetryPolicy
from backend.uploads.sniffing import SNIFF_BYTES, content_type_allowed, content_type_sniff
from backend.uploads.storage import (
    DirectUploads,
    PartReceipt,
    Storage,
    StorageError,
    storage_call_with_retries,
    storage_retrying,
)
from backend.uploads.transfer import TransferFailed, TransferStopped

logger = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class FinishSpec:
    upload_id: uuid.UUID
    key: str
    handle: str | None
    size: int
    parts_total: int
    expected_sha256: str | None
    allowed_types: list[str]


@dataclass(frozen=True)
class FinishedObject:
    """What the server learned of the object: its sniffed type, and its sha256 when it computed one."""

    content_type: str
    sha256: str | None


def direct_finish(
    *,
    spec: FinishSpec,
    parts: list[PartReceipt],
    storage: Storage,
    heartbeat: Callable[[], bool],
    direct: DirectUploads | None,
    heartbeat_seconds: float = 5.0,
    retry: RetryPolicy | None = None,
) -> FinishedObject:
    """Complete and verify the object; raises TransferFailed (the object removed) or TransferStopped.

    `direct` is the store's direct-upload capability (the factory resolves it; None: it has none).
    """
    if direct is None:
        raise TransferFailed("this server's store takes no direct uploads (STORAGE_BACKEND is not s3)")
    policy = retry if retry is not None else RetryPolicy()
    reader = direct

    def call(operation: Callable[[], T]) -> T:
        try:
            return storage_call_with_retries(operation, retry=policy)
        except StorageError as exc:
            raise TransferFailed(str(exc)) from exc

    if spec.size == 0:
        call(lambda: storage.put_object(key=spec.key, data=b"", content_type="application/octet-stream", metadata={}))
    else:
        if [p.part_number for p in parts] != list(range(1, spec.parts_total + 1)):
            raise TransferFailed("the part ledger is incomplete")
        handle = spec.handle or ""
        call(lambda: reader.direct_complete(key=spec.key, handle=handle, parts=parts, size=spec.size))
    sniff = min(SNIFF_BYTES, spec.size)
    head = b"".join(call(lambda: list(reader.object_read(key=spec.key, length=sniff)))) if sniff else b""
    content_type = content_type_sniff(head)
    if not content_type_allowed(content_type, spec.allowed_types):
        _reject(spec, storage, f"UNSUPPORTED_MEDIA_TYPE: content type {content_type} is not allowed here")
    if spec.size == 0:
        return FinishedObject(content_type=content_type, sha256=hashlib.sha256(b"").hexdigest())
    if not spec.expected_sha256:
        # The server never saw these bytes, and reports no sha256 it did not compute (CONTRACT section 9).
        return FinishedObject(content_type=content_type, sha256=None)
    digest = _object_sha256(
        spec=spec, storage=reader, heartbeat=heartbeat, heartbeat_seconds=heartbeat_seconds, retry=policy
    )
    if digest != spec.expected_sha256:
        _reject(
            spec,
            storage,
            f"CHECKSUM_MISMATCH: sha256 of the object in the bucket is {digest}, not {spec.expected_sha256}",
        )
    return FinishedObject(content_type=content_type, sha256=digest)


def _object_sha256(
    *,
    spec: FinishSpec,
    storage: DirectUploads,
    heartbeat: Callable[[], bool],
    heartbeat_seconds: float,
    retry: RetryPolicy,
) -> str:
    """The object's sha256, read back chunk by chunk, heartbeating as it goes; a broken read starts over."""
    beats = [time.monotonic()]

    def read_once() -> str:
        digest = hashlib.sha256()
        for chunk in storage.object_read(key=spec.key, chunk_size=READ_CHUNK):
            digest.update(chunk)
            if time.monotonic() - beats[-1] >= heartbeat_seconds:
                beats.append(time.monotonic())
                if not heartbeat():
                    raise TransferStopped("the upload was taken from this run while it was read back")
        return digest.hexdigest()

    def again(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.info("upload %s: reading back failed (attempt %d): %s", spec.upload_id, state.attempt_number, error)

    try:
        result: str = storage_retrying(retry, before_sleep=again)(read_once)
    except StorageError as exc:
        raise TransferFailed(f"reading the object back failed: {exc}") from exc
    return result


def _reject(spec: FinishSpec, storage: Storage, error: str) -> None:
    """The object is not what the client declared: remove it, and fail the transfer saying why."""
    try:
        storage.delete_object(key=spec.key)
    except StorageError:
        logger.warning("upload %s: removing the refused object failed; the sweep removes it", spec.upload_id)
    raise TransferFailed(error)
