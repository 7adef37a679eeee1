"""The bucket, behind a small Protocol.

The core is what a resumable multipart transfer needs: open an object, put part N, list the
parts the store confirmed, complete, abort. A plain put covers the empty file and a file of one part. Download URLs are
a separate capability (`Presigner`). Each backend lives in its own module; `get_storage()`
picks one from settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from django.conf import settings
from django.utils.module_loading import import_string
from tenacity import Retrying

from backend.retries import Hook, RetryPolicy

T = TypeVar("T")


@dataclass(frozen=True)
class PartReceipt:
    """What the store said about one part it accepted."""

    part_number: int
    size: int
    etag: str
    checksum: str = ""


class StorageError(Exception):
    """A store operation failed. `retryable` says whether trying the same call again may help.

    `spent`: the open object the call named can take no more calls (its multipart upload was
    aborted behind the service's back, expired, or completed into an object the store then
    refused or the check after it removed). No retry of the call can help; a transfer may start
    the object over with a new handle, sending every part again. Never retryable.
    """

    def __init__(self, message: str, *, retryable: bool, spent: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable and not spent
        self.spent = spent


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

    def listed_part_verified(self, *, handle: str, receipt: PartReceipt, data: bytes) -> PartReceipt | None:
        """A part only the store lists (its answer was lost, or the run died before recording it),
        checked against `data`, the staged bytes of that part: the receipt to record (with the
        checksum this service computes for those bytes) if the store shows it holds exactly them,
        else None, and the part is sent again (putting it again replaces it)."""

    def complete(self, *, key: str, handle: str, parts: list[PartReceipt], size: int) -> None:
        """Assemble `parts` into the object at `key`; it appears whole or not at all.

        Checks that the assembled object is `size` bytes long.
        """

    def abort(self, *, key: str, handle: str) -> None:
        """Discard an open object and every part of it. Idempotent: an unknown handle is fine."""

    def put_object(self, *, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> PartReceipt:
        """Store a small object with one plain put (the empty file, a file of one part).

        It appears whole or not at all, durable once this returns; putting it again replaces it.
        Returns what the store said of the bytes as the receipt of part 1.
        """

    def delete_object(self, *, key: str) -> None:
        """Remove a completed object. Idempotent."""

    def check(self) -> None:
        """Raise StorageError if the store cannot be reached or written (readiness)."""


def storage_retrying(
    retry: RetryPolicy, *, before: Hook | None = None, after: Hook | None = None, before_sleep: Hook | None = None
) -> Retrying:
    """`retry` applied to store calls: a retryable StorageError is tried again, any other is final.

    The hooks are tenacity's: `before` each attempt, `after` each failed one, `before_sleep` each wait.
    """

    def final(error: BaseException) -> bool:
        return not getattr(error, "retryable", False)

    return retry.retrying(retry_on=StorageError, give_up=final, before=before, after=after, before_sleep=before_sleep)


def storage_call_with_retries(call: Callable[[], T], *, retry: RetryPolicy) -> T:
    """Run a store call under `retry`; the last StorageError is raised as it is."""
    result: Any = storage_retrying(retry)(call)
    return result


def storage_retry_policy() -> RetryPolicy:
    """The retry policy of every store call, from settings (UPLOAD_PART_RETRIES attempts): the one place."""
    return RetryPolicy(attempts=max(1, settings.UPLOAD_PART_RETRIES))


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

    def part_listed(self, *, key: str, handle: str, part_number: int) -> PartReceipt | None:
        """What the store lists for one part of an open object (one small ListParts page), or None."""

    def direct_complete(self, *, key: str, handle: str, parts: list[PartReceipt], size: int) -> None:
        """`complete` for the client's parts, whose bytes the server never saw (the caller checks the object)."""


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


@runtime_checkable
class Download(Protocol):
    """Optional: a store whose download URLs point back at this service (local disk), which serves them."""

    def resolve_download(self, token: str) -> tuple[Path, str] | None:
        """The object's path and filename a download token names, or None if it is bad or expired."""


@dataclass(frozen=True)
class StorageCapabilities:
    """The store and the optional capabilities it has, resolved once when the backend is built.

    Callers ask this, never `isinstance` at each use (tusd's `StoreComposer`).
    """

    core: Storage
    part_from_file: PartFromFile | None = None
    presigner: Presigner | None = None
    temporary: TemporaryArea | None = None
    download: Download | None = None
    direct: DirectUploads | None = None

    @classmethod
    def of(cls, store: Storage) -> StorageCapabilities:
        """The capabilities `store` offers (a wrapper offers exactly those of what it wraps)."""
        return cls(
            core=store,
            part_from_file=store if isinstance(store, PartFromFile) else None,
            presigner=store if isinstance(store, Presigner) else None,
            temporary=store if isinstance(store, TemporaryArea) else None,
            download=store if isinstance(store, Download) else None,
            direct=store if isinstance(store, DirectUploads) else None,
        )


def storage_build() -> Storage:
    """The backend settings name, configured through its constructor (backends read no settings).

    STORAGE_WRAPPER, when set, names a class by dotted path that is handed the backend and stands
    in for it (the tests' fault-injecting store): the one way to put something around the store.
    """
    store: Storage
    if settings.STORAGE_BACKEND == "s3":
        from backend.uploads.storage.s3 import S3Storage
        from backend.uploads.storage.s3_client import s3_clients_from_settings

        client, presigner = s3_clients_from_settings()
        store = S3Storage(
            client=client,
            presigner=presigner,
            bucket=settings.S3_BUCKET,
            checksum_algorithm=settings.S3_CHECKSUM_ALGORITHM,
            sse=settings.S3_SSE,
            sse_kms_key_id=settings.S3_SSE_KMS_KEY_ID,
            storage_class=settings.S3_STORAGE_CLASS,
            retry=storage_retry_policy(),
            verify_part_etags=settings.S3_VERIFY_PART_ETAG,
        )
    else:
        from backend.uploads.storage.local import LocalStorage

        store = LocalStorage(root=settings.LOCAL_STORAGE_ROOT, signing_key=settings.SECRET_KEY)
    if settings.STORAGE_WRAPPER:
        store = import_string(settings.STORAGE_WRAPPER)(store)
    return store


@cache
def get_capabilities() -> StorageCapabilities:
    """This process's store and its capabilities, built once."""
    return StorageCapabilities.of(storage_build())


def get_storage() -> Storage:
    """This process's store (its core); `get_capabilities()` for the optional parts."""
    return get_capabilities().core
