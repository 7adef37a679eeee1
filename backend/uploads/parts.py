"""Pure arithmetic of a multipart transfer: part sizes, part ranges, progress (backoff: backend/retries.py)."""

from __future__ import annotations

import math

MAX_PARTS = 10_000
S3_MIN_PART_SIZE = 5 * 1024 * 1024
MIB = 1024 * 1024


def part_size_for(*, size: int, requested: int, minimum: int = 1) -> int:
    """The part size to use for a file of `size` bytes.

    Starts from `requested`, never goes below `minimum` (5 MiB on S3), and grows in whole MiB
    until the file fits in `MAX_PARTS` parts.
    """
    part_size = max(requested, minimum, 1)
    if size > part_size * MAX_PARTS:
        part_size = math.ceil(size / MAX_PARTS / MIB) * MIB
    return part_size


def part_count(*, size: int, part_size: int) -> int:
    """How many parts a file of `size` bytes needs; 0 for an empty file."""
    return math.ceil(size / part_size) if size > 0 else 0


def part_range(*, part_number: int, size: int, part_size: int) -> tuple[int, int]:
    """(offset, length) of part `part_number` (1-based) in a file of `size` bytes."""
    offset = (part_number - 1) * part_size
    if part_number < 1 or offset >= size:
        raise ValueError(f"part {part_number} is outside a file of {size} bytes")
    return offset, min(part_size, size - offset)


def progress_fraction(*, bytes_uploaded: int, size: int, completed: bool) -> float:
    """bytes_uploaded / size, with an empty file counting as done once it is completed."""
    if size <= 0:
        return 1.0 if completed else 0.0
    return min(1.0, bytes_uploaded / size)
