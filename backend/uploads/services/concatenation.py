"""tus concatenation: a final upload made of the caller's complete partial uploads, hashed once.

The partial uploads are RECEIVING pieces (`resumable.resumable_create(partial=True)`), never
transferred; the final upload copies their bytes in order into staging of its own, computing
its sha256 as it goes, removes the pieces, and completes like any resumable upload
(`resumable.resumable_complete`). Each piece's writer lock is held meanwhile, so no PATCH
appends to a piece while it is copied.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid

from django.contrib.auth.models import User
from django.db import transaction

from backend.logs import upload_log_bind
from backend.uploads.errors import BadUserInput, NotFound
from backend.uploads.models import ConcatRole, FileUpload, UploadMode, UploadStatus
from backend.uploads.naming import filename_sanitise, storage_key_for
from backend.uploads.resumable.hashing import running_hash_forget
from backend.uploads.resumable.locking import WriterLock
from backend.uploads.services.resumable import (
    DEFAULT_NAME,
    check_room,
    check_sha256,
    receiving_expires_at,
    resumable_complete,
    sizing,
)
from backend.uploads.sniffing import SNIFF_BYTES
from backend.uploads.staging import staging_delete, staging_path
from backend.uploads.storage import get_storage

logger = logging.getLogger(__name__)

COPY_SIZE = 1024 * 1024


def resumable_concatenate(
    *,
    user: User,
    partial_ids: list[uuid.UUID],
    filename: str | None,
    sha256: str | None,
    tus_metadata: str = "",
    concat_header: str = "",
) -> FileUpload:
    """A final upload made of the caller's complete partial uploads, in order, hashed once here.

    NOT_FOUND if one is missing, someone else's or not a partial upload; BAD_USER_INPUT if one is
    not complete (unfinished concatenation is not offered). The partial uploads are removed once
    the final one holds their bytes.
    """
    if not partial_ids:
        raise BadUserInput("a final upload needs at least one partial upload")
    expected = check_sha256(sha256)
    rows = {
        u.id: u for u in FileUpload.objects.filter(id__in=partial_ids, owner_id=user.pk, concat_role=ConcatRole.PARTIAL)
    }
    missing = [str(i) for i in partial_ids if i not in rows]
    if missing:
        raise NotFound(f"no such partial upload: {', '.join(missing)}")
    for piece in rows.values():
        if piece.status != UploadStatus.RECEIVING or piece.length_deferred or piece.bytes_received != piece.size:
            raise BadUserInput(f"partial upload {piece.id} is not complete")
    size = sum(rows[i].size for i in partial_ids)
    # No quota to reserve: the partial uploads reserved these bytes, and they go as the final comes.
    check_room(user=user, size=size, counted=True)
    locks = [WriterLock(i) for i in dict.fromkeys(partial_ids)]
    try:
        for lock in locks:
            lock.acquire()
        return _concatenate_locked(
            user=user,
            pieces=[rows[i] for i in partial_ids],
            size=size,
            filename=filename,
            expected=expected,
            tus_metadata=tus_metadata,
            concat_header=concat_header,
        )
    finally:
        for lock in locks:
            lock.release()


def _concatenate_locked(
    *,
    user: User,
    pieces: list[FileUpload],
    size: int,
    filename: str | None,
    expected: str | None,
    tus_metadata: str,
    concat_header: str,
) -> FileUpload:
    upload_id = uuid.uuid4()
    upload_log_bind(upload_id)
    target = staging_path(upload_id)
    digest = hashlib.sha256()
    head = b""
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        for piece in pieces:
            with open(staging_path(piece.id), "rb") as source:
                while data := source.read(COPY_SIZE):
                    digest.update(data)
                    if len(head) < SNIFF_BYTES:
                        head += data[: SNIFF_BYTES - len(head)]
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)
    with transaction.atomic():
        upload = FileUpload.objects.create(
            id=upload_id,
            owner=user,
            filename=filename_sanitise(filename or DEFAULT_NAME),
            content_type="",
            size=size,
            sha256=None,
            expected_sha256=expected,
            status=UploadStatus.RECEIVING,
            mode=UploadMode.RESUMABLE,
            bytes_received=size,
            storage_backend=get_storage().name,
            storage_key=storage_key_for(upload_id),
            sequence=1,
            expires_at=receiving_expires_at(),
            concat_role=ConcatRole.FINAL,
            concat_header=concat_header,
            tus_metadata=tus_metadata,
            **sizing(size),
        )
        FileUpload.objects.filter(id__in=[p.id for p in pieces]).delete()
    for piece in pieces:
        staging_delete(piece.id)
        running_hash_forget(piece.id)
    logger.info("upload %s concatenated from %d partial uploads, %d bytes", upload.id, len(pieces), size)
    return resumable_complete(upload=upload, digest=digest, head=head)
