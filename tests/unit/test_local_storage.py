"""The local backend's parts taken straight from a file (copy_file_range) against parts given as bytes."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from backend.uploads.storage import PartFromFile, StorageError
from backend.uploads.storage.local import LocalStorage

PART = 64 * 1024


def _source(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "staged.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_parts_from_a_file_assemble_the_same_object_as_parts_given_as_bytes(tmp_path: Path, kernel_copy: bool) -> None:
    source, data = _source(tmp_path, 3 * PART + 123)
    from_file = LocalStorage(root=tmp_path / "a")
    from_file._kernel_copy = kernel_copy and hasattr(os, "copy_file_range")
    as_bytes = LocalStorage(root=tmp_path / "b")
    assert isinstance(from_file, PartFromFile)
    handle_a = from_file.start(key="a.bin", content_type="", metadata={})
    handle_b = as_bytes.start(key="b.bin", content_type="", metadata={})
    fd = os.open(source, os.O_RDONLY)
    try:
        # Out of order, as concurrent parts land.
        for number in (3, 1, 4, 2):
            offset = (number - 1) * PART
            length = min(PART, len(data) - offset)
            got = from_file.put_part_from_file(
                key="a.bin", handle=handle_a, part_number=number, offset=offset, length=length, source_fd=fd
            )
            want = as_bytes.put_part(
                key="b.bin", handle=handle_b, part_number=number, offset=offset, data=data[offset : offset + length]
            )
            assert got == want
            assert got.etag == f"{zlib.crc32(data[offset : offset + length]):08x}"
    finally:
        os.close(fd)
    parts = from_file.list_parts(key="a.bin", handle=handle_a)
    from_file.complete(key="a.bin", handle=handle_a, parts=parts, size=len(data))
    assert from_file.object_path("a.bin").read_bytes() == data


def test_a_part_past_the_end_of_the_source_is_refused_for_good(tmp_path: Path) -> None:
    source, _ = _source(tmp_path, PART)
    storage = LocalStorage(root=tmp_path / "bucket")
    handle = storage.start(key="x.bin", content_type="", metadata={})
    fd = os.open(source, os.O_RDONLY)
    try:
        with pytest.raises(StorageError) as refused:
            storage.put_part_from_file(
                key="x.bin", handle=handle, part_number=2, offset=PART, length=PART, source_fd=fd
            )
    finally:
        os.close(fd)
    assert not refused.value.retryable
    assert storage.list_parts(key="x.bin", handle=handle) == []
