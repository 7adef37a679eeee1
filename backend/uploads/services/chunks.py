"""Appending one chunk to a RECEIVING upload: the same rules for a tus PATCH and `uploadChunk`.

`chunk_append_begin` takes the upload's writer lock (UPLOAD_LOCKED if another request holds it, in
any process), checks the offset (OFFSET_MISMATCH with the current one) and the room left, and
opens the staged file. The caller then feeds the bytes as they arrive (`write`) and ends with
`finish` (the whole chunk arrived) or `abort` (the body was cut off: what arrived is kept, unless
the chunk carries a checksum, which can only be judged whole).

What the offset means: the bytes before it are in staging and were flushed (`fdatasync`, unless
UPLOAD_RECEIVING_FSYNC is off) before the offset that covers them was committed, at every
checkpoint (one per part size of new bytes, and at the end of the chunk). A server killed
mid-chunk leaves the committed offset behind the bytes it wrote; the next writer cuts the file
back to the offset before appending, so HEAD never reports a byte that is not really there, and
nothing after it can be a torn write.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import F
from django.utils import timezone

from backend.uploads.errors import (
    DISK_FULL_ERRNOS,
    Gone,
    InsufficientStorage,
    OffsetMismatch,
    UploadLocked,
    UploadTooLarge,
)
from backend.uploads.models import ConcatRole, FileUpload, UploadStatus
from backend.uploads.resumable.checksums import ChunkChecksum
from backend.uploads.resumable.events import receiving_event_due, receiving_publish
from backend.uploads.resumable.hashing import running_hash_forget, running_hash_keep, running_hash_take
from backend.uploads.resumable.locking import WriterLock
from backend.uploads.services import pipeline, resumable
from backend.uploads.sniffing import SNIFF_BYTES
from backend.uploads.staging import staging_path
from backend.uploads.writeback import writeback_start

logger = logging.getLogger(__name__)


class ChunkChecksumMismatch(Exception):
    """The chunk's bytes do not match the checksum declared for it; they were discarded."""


@dataclass
class ChunkAppend:
    """One chunk being appended to `upload`; use through `chunk_append_begin`."""

    upload: FileUpload
    lock: WriterLock
    fd: int
    checksum: ChunkChecksum | None
    offset: int
    committed: int
    started: int
    digest: Any  # the running sha256 (None for a partial upload: hashed at concatenation)
    digest_before: Any = None
    checkpoint_every: int = 0
    closed: bool = False
    head: bytes = field(default=b"", repr=False)

    @property
    def limit(self) -> int:
        """The offset this upload may grow to: its length, or UPLOAD_MAX_BYTES while deferred."""
        return settings.UPLOAD_MAX_BYTES if self.upload.length_deferred else self.upload.size

    def write(self, *pieces: bytes) -> None:
        """Append `pieces`, in order (a body's messages as they came: joining them would copy every
        byte once more); UploadTooLarge once they would pass the length (what fits is written first)."""
        start = self.offset
        try:
            self._append(pieces)
        finally:
            # On its way to disk now, in one call for the whole write (not one per body message), so
            # the checkpoint's fdatasync has only the last write to wait for.
            writeback_start(self.fd, start, self.offset - start)
        self._judge_type_if_due()
        if self.checksum is None and self.offset - self.committed >= self.checkpoint_every:
            self.checkpoint()

    def _append(self, pieces: tuple[bytes, ...]) -> None:
        for data in pieces:
            room = self.limit - self.offset
            fits = data if len(data) <= room else data[:room]
            if fits:
                self._pwrite(fits)
                if self.digest is not None:
                    self.digest.update(fits)
                if self.checksum is not None:
                    self.checksum.update(fits)
                if len(self.head) == self.offset < SNIFF_BYTES:
                    # Only while this chunk started at 0: the head is then the file's first bytes.
                    self.head += bytes(fits[: SNIFF_BYTES - self.offset])
                self.offset += len(fits)
            if len(fits) < len(data):
                raise UploadTooLarge(f"the chunk goes past the upload's length of {self.limit} bytes")

    def _pwrite(self, data: bytes) -> None:
        view = memoryview(data)
        position = self.offset
        try:
            while view:
                written = os.pwrite(self.fd, view, position)
                view, position = view[written:], position + written
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            # Staging is full: give the space of this chunk's unsaved bytes back at once.
            os.ftruncate(self.fd, self.committed)
            self.offset = self.committed
            raise InsufficientStorage("the server ran out of staging space; try again later") from exc

    def _judge_type_if_due(self) -> None:
        if self.upload.content_type or self.upload.concat_role == ConcatRole.PARTIAL:
            return
        if self.offset >= SNIFF_BYTES:
            if len(self.head) < SNIFF_BYTES:
                self.head = os.pread(self.fd, SNIFF_BYTES, 0)
            try:
                resumable.resumable_judge_type(upload=self.upload, head=self.head)
            except Exception:
                self.close()
                raise

    def checkpoint(self) -> None:
        """Flush what was written, then commit the offset that covers it (and maybe publish)."""
        if settings.UPLOAD_RECEIVING_FSYNC:
            os.fdatasync(self.fd)
        if not self.lock.renew(unless_fresh=True):
            raise UploadLocked("this request lost the upload's lock; retry")
        publish = receiving_event_due(self.upload.id)
        fields: dict[str, Any] = {
            "bytes_received": self.offset,
            "expires_at": resumable.receiving_expires_at(),
            "updated_at": timezone.now(),
        }
        if publish:
            fields["sequence"] = F("sequence") + 1
        moved = FileUpload.objects.filter(
            id=self.upload.id, status=UploadStatus.RECEIVING, bytes_received=self.committed
        ).update(**fields)
        if not moved:
            current = FileUpload.objects.filter(id=self.upload.id).first()
            if current is None or current.status != UploadStatus.RECEIVING:
                raise Gone("this upload was cancelled or has expired")
            raise OffsetMismatch("another writer moved this upload's offset", offset=current.bytes_received)
        before, self.committed = self.committed, self.offset
        self.upload.bytes_received = self.offset
        self.upload.expires_at = fields["expires_at"]
        part_size = self.upload.part_size
        if part_size and self.offset // part_size > before // part_size and not self.whole:
            # A whole part more is in staging (flushed, offset committed): it may go to the bucket now.
            pipeline.upload_pipeline_nudge_soon(upload=self.upload)
        if publish:
            fresh = FileUpload.objects.filter(id=self.upload.id).first()
            if fresh is not None:
                receiving_publish(fresh)

    @property
    def whole(self) -> bool:
        return not self.upload.length_deferred and self.offset == self.upload.size

    def finish(self, *pieces: bytes, reread: bool = True) -> FileUpload:
        """The whole chunk arrived (its last `pieces` are written first): verify its checksum, commit,
        and complete the upload if it is whole.

        Returns the upload; without `reread`, an unfinished one is this appender's copy of the row
        (its offset and expiry current, not its `sequence`), saving a query per chunk. Raises
        ChunkChecksumMismatch (bytes discarded, offset unchanged), or the completion's refusals
        (CHECKSUM_MISMATCH, UNSUPPORTED_MEDIA_TYPE: the upload is then FAILED).
        """
        try:
            if pieces:
                self.write(*pieces)
            if self.checksum is not None and not self.checksum.matches():
                self._discard()
                raise ChunkChecksumMismatch(f"the chunk does not match its {self.checksum.algorithm} checksum")
            if self.offset != self.committed or self.offset == self.started:
                # A chunk that ended on a checkpoint was committed (and published) there already.
                self.checkpoint()
            if self.whole and self.upload.concat_role != ConcatRole.PARTIAL:
                upload = FileUpload.objects.get(id=self.upload.id)
                head = self.head if upload.content_type else os.pread(self.fd, SNIFF_BYTES, 0)
                self.close(keep_digest=False)
                return resumable.resumable_complete(upload=upload, digest=self.digest, head=head)
            return FileUpload.objects.get(id=self.upload.id) if reread else self.upload
        finally:
            self.close()

    def abort(self) -> None:
        """The body was cut off: keep what arrived (unless the chunk's checksum must vouch for it)."""
        try:
            if self.checksum is not None:
                self._discard()
            elif self.offset != self.committed:
                self.checkpoint()
        except Exception:
            logger.warning("upload %s: keeping the bytes of an interrupted chunk failed", self.upload.id, exc_info=True)
        finally:
            self.close()

    def _discard(self) -> None:
        os.ftruncate(self.fd, self.committed)
        self.offset = self.committed
        self.digest = self.digest_before

    def close(self, keep_digest: bool = True) -> None:
        """Release the lock and the file (idempotent); bytes not committed are dropped by the next writer."""
        if self.closed:
            return
        self.closed = True
        if keep_digest and self.digest is not None and self.offset == self.committed:
            running_hash_keep(upload_id=self.upload.id, offset=self.committed, digest=self.digest)
        os.close(self.fd)
        self.lock.release()


# What the refusals before the lock read: `_appendable`'s, `check`'s and the expiry's.
_REFUSAL_FIELDS = ("status", "attempts", "size", "expires_at", "concat_role")


def chunk_append_begin(
    *,
    user: User,
    upload_id: uuid.UUID,
    offset: int,
    chunk_length: int | None,
    upload_length: int | None = None,
    checksum: ChunkChecksum | None = None,
    check: Callable[[FileUpload], None] | None = None,
) -> ChunkAppend:
    """Start appending a chunk of `chunk_length` bytes (None: unknown) at `offset`.

    Refusals, each before a byte is stored: NOT_FOUND, GONE (cancelled, expired, failed),
    UPLOAD_LOCKED, OFFSET_MISMATCH (with the current one; also for an upload that is no
    longer receiving), FILE_TOO_LARGE (the chunk would pass the length), BAD_USER_INPUT (a
    length that contradicts the one set). `check` (a door's own refusals) is called with the
    caller's upload before any of the others but NOT_FOUND.

    The refusals about the upload itself (NOT_FOUND, GONE, `check`, a complete upload) come from
    one indexed read of the few columns they need, before the lock: a request that is refused
    anyway never holds the owner's lock (which would answer the owner UPLOAD_LOCKED while nobody
    writes), nor needs Redis to be refused. Then the lock is taken and the row read once under it
    (the offset must be read there) and judged again: it may have moved on in between. Nobody
    learns from UPLOAD_LOCKED that someone else's upload exists: they hear NOT_FOUND first.
    """
    known = resumable.resumable_get_for_user(user=user, upload_id=upload_id, only=_REFUSAL_FIELDS)
    _appendable(known, offset=offset, check=check)
    lock = WriterLock(upload_id).acquire()
    try:
        upload = resumable.resumable_get_for_user(user=user, upload_id=upload_id)
        _appendable(upload, offset=offset, check=check)
        if offset != upload.bytes_received:
            raise OffsetMismatch(
                f"the upload's offset is {upload.bytes_received}, not {offset}", offset=upload.bytes_received
            )
        if upload_length is not None:
            upload = resumable.resumable_set_length(upload=upload, size=upload_length)
        limit = settings.UPLOAD_MAX_BYTES if upload.length_deferred else upload.size
        if chunk_length is not None and offset + chunk_length > limit:
            raise UploadTooLarge(f"the chunk goes past the upload's length of {limit} bytes")
        try:
            fd = os.open(staging_path(upload.id), os.O_RDWR)
        except FileNotFoundError as exc:
            raise Gone("the bytes of this upload are gone") from exc
    except BaseException:
        lock.release()
        raise
    try:
        staged = os.fstat(fd).st_size
        if staged < offset:
            # Staging lost bytes the offset covers (an OS crash with UPLOAD_RECEIVING_FSYNC off): go
            # back to what is really there, and let the client resume from it.
            FileUpload.objects.filter(id=upload.id, status=UploadStatus.RECEIVING, bytes_received=offset).update(
                bytes_received=staged
            )
            running_hash_forget(upload.id)
            raise OffsetMismatch(f"the upload's offset is {staged}, not {offset}", offset=staged)
        # Bytes past the committed offset are a killed writer's unflushed tail: they go.
        os.ftruncate(fd, offset)
        partial = upload.concat_role == ConcatRole.PARTIAL
        digest = None if partial else running_hash_take(upload_id=upload.id, offset=offset, fd=fd)
    except BaseException:
        os.close(fd)
        lock.release()
        raise
    return ChunkAppend(
        upload=upload,
        lock=lock,
        fd=fd,
        checksum=checksum,
        offset=offset,
        committed=offset,
        started=offset,
        digest=digest,
        digest_before=digest.copy() if digest is not None and checksum is not None else None,
        checkpoint_every=max(upload.part_size, 1024 * 1024) if upload.part_size else settings.UPLOAD_PART_SIZE,
    )


def _appendable(upload: FileUpload, *, offset: int, check: Callable[[FileUpload], None] | None) -> None:
    """The refusals about the upload itself: the door's `check`, GONE, and a complete upload."""
    if check is not None:
        check(upload)
    if resumable.resumable_gone(upload):
        raise Gone("this upload was cancelled, has expired or failed")
    if upload.status != UploadStatus.RECEIVING:
        # Every byte is in already: only the offset it ended at is right, and nothing fits after it.
        if offset != upload.size:
            raise OffsetMismatch(f"the upload is complete at offset {upload.size}", offset=upload.size)
        raise UploadTooLarge("the upload is complete; it takes no more bytes")


def chunk_append_file(*, user: User, upload_id: uuid.UUID, offset: int, path: os.PathLike[str] | str) -> FileUpload:
    """`uploadChunk`: append a chunk already staged whole (a multipart file part) at `offset`."""
    size = os.stat(path).st_size
    append = chunk_append_begin(user=user, upload_id=upload_id, offset=offset, chunk_length=size)
    try:
        with open(path, "rb") as source:
            while data := source.read(1024 * 1024):
                append.write(data)
        return append.finish()
    finally:
        append.close()
