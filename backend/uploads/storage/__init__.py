"""The bucket, behind a small Protocol.

The core is what a resumable multipart transfer needs: open an object, put part N, list the
parts the store confirmed, complete, abort. A plain put covers the empty file. Download URLs are
a separate capability (`Presigner`). Each backend lives in its own module; `get_storage()`
picks one from settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Protocol, TypeVar, runtime_checkable

from django.conf import settings

from backend.uploads.parts import backoff_delay

T = TypeVar("T")


@dataclass(frozen=True)
class PartReceipt:
    """What the store said about one part it accepted."""

    part_number: int
    size: int
    etag: str
    checksum: str = ""


class StorageError(Exception):
    """A store operation failed. `retryable` says whether trying the same call again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Storage(Protocol):
    name: str
    min_part_size: int

    def start(self, *, key: str, content_type: str, metadata: dict[str, str]) -> str:
        """Open a multipart object at `key` and return its handle (the store's upload id)."""

    def put_part(self, *, key: str, handle: str, part_number: int, offset: int, data: bytes) -> PartReceipt:
        """Store part `part_number` (1-based) whose bytes start at `offset` in the object.

        Must be idempotent for the same part number: putting it again replaces it. Returns only
        once the store has confirmed the bytes; raises StorageError otherwise.
        """

    def list_parts(self, *, key: str, handle: str) -> list[PartReceipt]:
        """The parts the store holds for this open object, in part order (every page)."""

    def complete(self, *, key: str, handle: str, parts: list[PartReceipt], size: int) -> None:
        """Assemble `parts` into the object at `key`; it appears whole or not at all.

        Checks that the assembled object is `size` bytes long.
        """

    def abort(self, *, key: str, handle: str) -> None:
        """Discard an open object and every part of it. Idempotent: an unknown handle is fine."""

    def put_object(self, *, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        """Store a small object with one plain put (the empty file)."""

    def delete_object(self, *, key: str) -> None:
        """Remove a completed object. Idempotent."""

    def check(self) -> None:
        """Raise StorageError if the store cannot be reached or written (readiness)."""


def storage_call_with_retries(call: Callable[[], T], *, attempts: int) -> T:
    """Run a store call, trying a retryable StorageError again (backoff with jitter) up to `attempts` times."""
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return call()
        except StorageError as exc:
            if not exc.retryable or attempt >= attempts:
                raise
        time.sleep(backoff_delay(attempt=attempt))
    raise AssertionError("unreachable")


@runtime_checkable
class PartFromFile(Protocol):
    """Optional: a store that takes a part straight from the staged file, its bytes never in Python.

    The local disk copies the range inside the kernel (`os.copy_file_range`); S3 has no such call
    for a file on this machine and takes `put_part`'s bytes. The engine uses this when a backend has it.
    """

    def put_part_from_file(
        self, *, key: str, handle: str, part_number: int, offset: int, length: int, source_fd: int
    ) -> PartReceipt:
        """`put_part` (same contract) of the `length` bytes at `offset` in `source_fd`, stored at `offset`.

        Raises StorageError(retryable=False) if the source ends before the part does.
        """


@runtime_checkable
class Presigner(Protocol):
    def download_url(self, *, key: str, filename: str, ttl: int, base_url: str | None) -> str:
        """An absolute URL that serves the object's bytes for `ttl` seconds without other credentials."""


@dataclass(frozen=True)
class PresignedPut:
    """Where a client puts one part itself: the URL, the headers it must send, and for how long."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class DirectUploads(Protocol):
    """Optional: a store clients write to themselves, with presigned part URLs (S3).

    The server keeps the ledger: it opens the multipart object, signs each part, checks each part
    the client says it put (`list_parts`), completes it (`complete`) and reads it back to verify it.
    """

    def direct_start(self, *, key: str, content_type: str, metadata: dict[str, str], part_checksums: bool) -> str:
        """`start`, for parts a client sends; `part_checksums`: every part will carry the configured checksum."""

    def presign_part(self, *, key: str, handle: str, part_number: int, ttl: int, checksum: str | None) -> PresignedPut:
        """A URL to PUT part `part_number` to for `ttl` seconds; `checksum` (base64 SHA-256) is signed in."""

    def object_read(self, *, key: str, length: int | None = None, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """The object's bytes from the start (the first `length`, or all), streamed in chunks."""


@dataclass(frozen=True)
class TemporaryEntry:
    """One thing in a store's temporary area: an open object's pieces, or a leftover file."""

    name: str
    handle: str | None  # the open object it is (what `start` returned), else None
    modified: float  # its newest change, seconds since the epoch
    size: int  # bytes it occupies


@runtime_checkable
class TemporaryArea(Protocol):
    """Optional: a store whose unfinished writes sit where the service may list them (local disk).

    S3 has no such place in general (MinIO lists incomplete uploads only per key), so the sweep
    reaches open objects there by the keys and handles the database knows.
    """

    def temporary_entries(self) -> list[TemporaryEntry]:
        """Every entry of the temporary area as it is now."""

    def temporary_remove(self, *, name: str) -> None:
        """Remove the entry `name`, aborting the open object it is. Idempotent."""


@cache
def get_storage() -> Storage:
    """The storage backend settings name, one per process."""
    if settings.STORAGE_BACKEND == "s3":
        from backend.uploads.storage.s3 import s3_storage_from_settings

        return s3_storage_from_settings()
    from backend.uploads.storage.local import LocalStorage

    return LocalStorage(root=settings.LOCAL_STORAGE_ROOT)
