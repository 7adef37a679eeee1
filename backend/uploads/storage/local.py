"""The local-disk bucket.

An open object is a hidden temporary file under `<root>/.incomplete/` into which each part is
written at its offset, plus one receipt file per confirmed part. `complete` renames the file
into place, so an object appears atomically and is never seen half-written. A part taken from a
file (`put_part_from_file`) is copied by the kernel (`copy_file_range`: no copy through Python,
a reflink on filesystems that share blocks); its receipt's CRC is read back from what was stored.
Each part's writeback is started as soon as it is written (`writeback.writeback_start`), so the
one fsync in `complete` finds little left to write.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import time
import uuid
import zlib
from pathlib import Path

from django.core import signing

from backend.uploads.errors import DISK_FULL_ERRNOS
from backend.uploads.storage import PartReceipt, StorageError, TemporaryEntry
from backend.uploads.writeback import writeback_start

INCOMPLETE_DIR = ".incomplete"
# The buffer the CRC of a kernel-copied part is read back through (reused across the part).
_CRC_CHUNK = 1024 * 1024
# copy_file_range refusing this pair of files (another filesystem on some kernels, no support):
# the part is then copied through Python, as put_part does.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_DOWNLOAD_SALT = "backend.uploads.download"


class LocalStorage:
    name = "local"
    min_part_size = 1

    def __init__(self, *, root: Path, signing_key: str | None = None) -> None:
        """`signing_key` signs download tokens (the factory passes SECRET_KEY; None: Django's own)."""
        self.root = Path(root)
        self.signing_key = signing_key
        self._kernel_copy = hasattr(os, "copy_file_range")

    # -- paths -------------------------------------------------------------------------------

    def object_path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"key {key!r} escapes the bucket", retryable=False)
        return path

    def _data_path(self, handle: str) -> Path:
        return self.root / INCOMPLETE_DIR / f"{handle}.data"

    def _parts_dir(self, handle: str) -> Path:
        return self.root / INCOMPLETE_DIR / f"{handle}.parts"

    def _check_handle(self, handle: str) -> None:
        try:
            uuid.UUID(handle)
        except ValueError as exc:
            raise StorageError(f"bad handle {handle!r}", retryable=False) from exc
        if not self._parts_dir(handle).is_dir():
            raise StorageError(f"no open object {handle}", retryable=False, spent=True)

    # -- core ---------------------------------------------------------------------------------

    def start(self, *, key: str, content_type: str, metadata: dict[str, str]) -> str:
        self.object_path(key)
        handle = uuid.uuid4().hex
        self._parts_dir(handle).mkdir(parents=True)
        self._data_path(handle).touch()
        return handle

    def put_part(self, *, key: str, handle: str, part_number: int, offset: int, data: bytes) -> PartReceipt:
        self._check_handle(handle)
        try:
            fd = os.open(self._data_path(handle), os.O_WRONLY)
            try:
                view = memoryview(data)
                written = 0
                while written < len(view):
                    written += os.pwrite(fd, view[written:], offset + written)
                writeback_start(fd, offset, len(view))
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._write_failed(exc, part_number) from exc
        return self._record_receipt(handle=handle, part_number=part_number, size=len(data), crc=zlib.crc32(data))

    def put_part_from_file(
        self, *, key: str, handle: str, part_number: int, offset: int, length: int, source_fd: int
    ) -> PartReceipt:
        self._check_handle(handle)
        if not self._kernel_copy:
            return self._put_part_read(
                key=key, handle=handle, part_number=part_number, offset=offset, length=length, source_fd=source_fd
            )
        try:
            fd = os.open(self._data_path(handle), os.O_RDWR)
            try:
                copied = 0
                while copied < length:
                    at = offset + copied
                    count = os.copy_file_range(source_fd, fd, length - copied, at, at)
                    if count == 0:
                        raise StorageError(f"the source ends before part {part_number} does", retryable=False)
                    copied += count
                crc = _crc32_range(fd, offset=offset, length=length)
                # On its way to disk now: `complete`'s fsync then has only the last parts to wait for.
                writeback_start(fd, offset, length)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in _NO_KERNEL_COPY:
                self._kernel_copy = False
                return self._put_part_read(
                    key=key, handle=handle, part_number=part_number, offset=offset, length=length, source_fd=source_fd
                )
            raise self._write_failed(exc, part_number) from exc
        return self._record_receipt(handle=handle, part_number=part_number, size=length, crc=crc)

    def _put_part_read(
        self, *, key: str, handle: str, part_number: int, offset: int, length: int, source_fd: int
    ) -> PartReceipt:
        try:
            data = os.pread(source_fd, length, offset)
        except OSError as exc:
            raise StorageError(f"reading part {part_number}: {exc.strerror}", retryable=True) from exc
        if len(data) != length:
            raise StorageError(f"the source ends before part {part_number} does", retryable=False)
        return self.put_part(key=key, handle=handle, part_number=part_number, offset=offset, data=data)

    def _record_receipt(self, *, handle: str, part_number: int, size: int, crc: int) -> PartReceipt:
        etag = f"{crc:08x}"
        receipt = PartReceipt(part_number=part_number, size=size, etag=etag, checksum=f"crc32:{etag}")
        receipt_path = self._parts_dir(handle) / f"{part_number}.json"
        tmp = receipt_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(receipt.__dict__))
            os.replace(tmp, receipt_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._write_failed(exc, part_number) from exc
        return receipt

    def _write_failed(self, exc: OSError, part_number: int) -> StorageError:
        """A full disk is named as such and not retried (the next attempt would meet it too): the
        upload fails at once, keeping its confirmed parts, and `retryUpload` resumes it once there is
        room. Any other write error may pass, and is retried."""
        if exc.errno in DISK_FULL_ERRNOS:
            return StorageError(
                f"the local bucket's disk is full ({exc.strerror}) writing part {part_number} under {self.root}: "
                "free space there, then retry the upload",
                retryable=False,
            )
        return StorageError(f"writing part {part_number}: {exc.strerror}", retryable=True)

    def list_parts(self, *, key: str, handle: str) -> list[PartReceipt]:
        self._check_handle(handle)
        parts_dir = self._parts_dir(handle)
        receipts = [PartReceipt(**json.loads(p.read_text())) for p in parts_dir.glob("*.json")]
        return sorted(receipts, key=lambda r: r.part_number)

    def listed_part_verified(self, *, handle: str, receipt: PartReceipt, data: bytes) -> PartReceipt | None:
        """The receipt if the part's CRC-32 (its ETag here) is that of `data`, else None."""
        return receipt if receipt.etag == f"{zlib.crc32(data):08x}" else None

    def complete(self, *, key: str, handle: str, parts: list[PartReceipt], size: int) -> None:
        self._check_handle(handle)
        data_path = self._data_path(handle)
        stored = {r.part_number: r for r in self.list_parts(key=key, handle=handle)}
        for part in parts:
            if stored.get(part.part_number) != part:
                raise StorageError(f"part {part.part_number} is not the one the store holds", retryable=False)
        if sum(p.size for p in parts) != size or data_path.stat().st_size != size:
            raise StorageError(
                f"assembled object is {data_path.stat().st_size} bytes, expected {size}", retryable=False
            )
        # One sync for the whole object instead of one per part: a part the page cache holds
        # survives a killed worker, and the object is durable before it appears under its key.
        fd = os.open(data_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        target = self.object_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(data_path, target)
        shutil.rmtree(self._parts_dir(handle), ignore_errors=True)

    def abort(self, *, key: str, handle: str) -> None:
        self._data_path(handle).unlink(missing_ok=True)
        shutil.rmtree(self._parts_dir(handle), ignore_errors=True)

    def put_object(self, *, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> PartReceipt:
        target = self.object_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root / INCOMPLETE_DIR / f"{uuid.uuid4().hex}.put"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                # Durable before it appears under its key, as `complete` makes a multipart object.
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._write_failed(exc, 1) from exc
        etag = f"{zlib.crc32(data):08x}"
        return PartReceipt(part_number=1, size=len(data), etag=etag, checksum=f"crc32:{etag}")

    def delete_object(self, *, key: str) -> None:
        self.object_path(key).unlink(missing_ok=True)

    def check(self) -> None:
        probe = self.root / INCOMPLETE_DIR / f"ready-{uuid.uuid4().hex}"
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"local bucket not writable: {exc.strerror}", retryable=True) from exc

    # -- temporary area (for the sweep) ---------------------------------------------------------

    def temporary_entries(self) -> list[TemporaryEntry]:
        """`.incomplete/`: one entry per open object (its data file and receipts), one per other file."""
        area = self.root / INCOMPLETE_DIR
        if not area.is_dir():
            return []
        grouped: dict[str, list[Path]] = {}
        for path in area.iterdir():
            grouped.setdefault(self._entry_name(path.name), []).append(path)
        entries = []
        for name, paths in grouped.items():
            try:
                stats = [p.stat() for p in paths]
                stats += [c.stat() for p in paths if p.is_dir() for c in p.iterdir()]
            except FileNotFoundError:
                continue  # removed while we looked: nothing left to sweep
            handle = name if any(p.suffix in (".data", ".parts") for p in paths) else None
            entries.append(
                TemporaryEntry(
                    name=name,
                    handle=handle,
                    modified=max(st.st_mtime for st in stats),
                    size=sum(st.st_size for st in stats if not stat.S_ISDIR(st.st_mode)),
                )
            )
        return entries

    def temporary_remove(self, *, name: str) -> None:
        area = self.root / INCOMPLETE_DIR
        if "/" in name or name in ("", ".", ".."):
            raise StorageError(f"bad temporary entry {name!r}", retryable=False)
        if self._data_path(name).exists() or self._parts_dir(name).exists():
            self.abort(key="", handle=name)
        path = area / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    @staticmethod
    def _entry_name(filename: str) -> str:
        """An open object's files share its handle as their name; anything else is its own entry."""
        stem, dot, suffix = filename.rpartition(".")
        if dot and suffix in ("data", "parts"):
            try:
                uuid.UUID(stem)
            except ValueError:
                return filename
            return stem
        return filename

    # -- presigned downloads ------------------------------------------------------------------

    def download_url(self, *, key: str, filename: str, ttl: int, base_url: str | None) -> str:
        token = signing.dumps(
            {"k": key, "n": filename, "e": int(time.time()) + ttl}, key=self.signing_key, salt=_DOWNLOAD_SALT
        )
        return f"{base_url or ''}/files/{token}"

    def resolve_download(self, token: str) -> tuple[Path, str] | None:
        """The object path and filename a download token names, or None if it is bad or expired."""
        try:
            payload = signing.loads(token, key=self.signing_key, salt=_DOWNLOAD_SALT)
        except signing.BadSignature:
            return None
        if payload.get("e", 0) < time.time():
            return None
        path = self.object_path(payload["k"])
        return (path, payload["n"]) if path.is_file() else None


def _crc32_range(fd: int, *, offset: int, length: int) -> int:
    """CRC-32 of `length` bytes of `fd` from `offset`, read through one small reused buffer."""
    buffer = memoryview(bytearray(min(length, _CRC_CHUNK)))
    crc = 0
    done = 0
    while done < length:
        count = os.preadv(fd, [buffer[: min(len(buffer), length - done)]], offset + done)
        if count == 0:
            raise StorageError("the stored part is shorter than what was copied", retryable=True)
        crc = zlib.crc32(buffer[:count], crc)
        done += count
    return crc
