"""Staging: received bytes wait here (a directory web and workers share) for the transfer job.

The upload handler writes each file part of a multipart request straight into
`<UPLOAD_STAGING_DIR>/incoming/` while hashing it, so the bytes are read once. A service that
accepts the upload renames the file to `<UPLOAD_STAGING_DIR>/<upload id>`; whatever is still in
`incoming/` when the request ends was refused and is deleted (`staging_discard_incoming`).
The digest is computed in a thread of its own beside the parsing thread, so it costs the answer
no time on a large file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest

from backend.uploads.errors import DISK_FULL_ERRNOS
from backend.uploads.sniffing import SNIFF_BYTES

INCOMING = "incoming"


class FileTooLarge(Exception):
    """The file part grew past UPLOAD_MAX_BYTES."""


class StagingFull(Exception):
    """The staging filesystem ran out of space (or quota) while a file was being written."""


def staging_write(fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` to `fd`; StagingFull when the disk is full (the caller frees the file)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise StagingFull(f"the staging disk is full ({os.strerror(exc.errno)}); try again later") from exc
        raise


def staging_dir() -> Path:
    return Path(settings.UPLOAD_STAGING_DIR)


def staging_path(upload_id: uuid.UUID) -> Path:
    return staging_dir() / str(upload_id)


def staging_free_bytes() -> int:
    directory = staging_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(directory).free


def staging_short_of_space() -> int | None:
    """The free bytes left in staging when under UPLOAD_STAGING_MIN_FREE_BYTES, else None.

    The one free-space check: the request limits (507 before a body is read), resumable uploads
    and readiness (/readyz) all ask this.
    """
    free = staging_free_bytes()
    return free if free < settings.UPLOAD_STAGING_MIN_FREE_BYTES else None


@cache
def _hashing_pool() -> ThreadPoolExecutor:
    """Threads shared by every upload of this process that hash chunks beside the parser."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="staging-sha256")


class Sha256Overlapped:
    """The sha256 of a stream of chunks, each hashed in another thread while the next one arrives.

    hashlib releases the GIL on buffers over 2 KiB, so hashing chunk N overlaps with parsing and
    writing chunk N + 1 (sha256 runs at about twice the receiving speed: inline it adds half the
    receiving time again). One chunk at most is in flight per file, so the chunks are hashed in
    order and nothing but that chunk is held; a handler dropped half-way leaves no thread behind.
    The first chunk is hashed inline: a file of one chunk pays no hand-over. Chunks must not change
    after `update` (the parser hands over fresh `bytes`).
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._pending: Future[None] | None = None
        self._chunks = 0

    def update(self, data: bytes) -> None:
        self._chunks += 1
        self.close()
        if self._chunks == 1:
            self._hash.update(data)
        else:
            self._pending = _hashing_pool().submit(self._hash.update, data)

    def hexdigest(self) -> str:
        """The digest of every chunk given so far."""
        self.close()
        return self._hash.hexdigest()

    def close(self) -> None:
        """Wait for the chunk in flight, if any. Idempotent."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()


class StagedFile(UploadedFile):
    """A file part already on disk in staging, with the digest of its bytes and its first bytes."""

    size: int  # always known here: counted while the part was staged (UploadedFile allows None)

    def __init__(self, *, path: Path, name: str, size: int, sha256: str, head: bytes, content_type: str) -> None:
        super().__init__(file=None, name=name, content_type=content_type, size=size)
        self.path = path
        self.sha256 = sha256
        self.head = head

    def close(self) -> None:
        # Django's multipart parser closes every file it collected when the request is refused
        # part-way (too many files, say), including ones never opened.
        if self.file is not None:
            super().close()

    def open(self, mode: str | None = None, *args: Any, **kwargs: Any) -> StagedFile:
        self.file = open(self.path, mode or "rb")  # noqa: SIM115 - closed by UploadedFile.close
        return self


class StagingUploadHandler(FileUploadHandler):
    """Writes every file part into staging as it arrives, hashing and counting on the way."""

    chunk_size = 1024 * 1024

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self._fd: int | None = None
        self._path: Path | None = None
        self._hash = Sha256Overlapped()
        self._size = 0
        self._head = b""

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        incoming = staging_dir() / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=incoming, suffix=".part")
        self._fd, self._path = fd, Path(name)
        self._hash.close()
        self._hash, self._size, self._head = Sha256Overlapped(), 0, b""
        if self.request is not None:
            staged: list[Path] = getattr(self.request, "staged_paths", [])
            staged.append(self._path)
            self.request.staged_paths = staged  # type: ignore[attr-defined]

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        assert self._fd is not None
        self._size += len(raw_data)
        if self._size > settings.UPLOAD_MAX_BYTES:
            # Django's parser calls no handler hook on this error: an fd left open here would keep
            # the refused bytes on disk after the view unlinks the file.
            self.upload_interrupted()
            raise FileTooLarge(f"the file is over {settings.UPLOAD_MAX_BYTES} bytes")
        if len(self._head) < SNIFF_BYTES:
            self._head += raw_data[: SNIFF_BYTES - len(self._head)]
        self._hash.update(raw_data)
        try:
            staging_write(self._fd, raw_data)
        except BaseException:
            # Django's parser calls no handler hook on an error either: an fd left open would keep the
            # written bytes allocated after the view unlinks the file (a full disk that stays full).
            self.upload_interrupted()
            raise

    def file_complete(self, file_size: int) -> StagedFile:
        assert self._fd is not None and self._path is not None
        os.close(self._fd)
        self._fd = None
        return StagedFile(
            path=self._path,
            name=self.file_name or "",
            size=self._size,
            sha256=self._hash.hexdigest(),
            head=self._head,
            content_type=self.content_type or "",
        )

    def upload_interrupted(self) -> None:
        self._hash.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def staging_discard_incoming(paths: list[Path]) -> None:
    """Delete incoming files a request left behind: the upload they carried was refused."""
    for path in paths:
        path.unlink(missing_ok=True)


def staging_delete(upload_id: uuid.UUID) -> None:
    staging_path(upload_id).unlink(missing_ok=True)
