"""Part arithmetic: sizes at the boundaries, ranges, progress fractions."""

from __future__ import annotations

import pytest

from backend.uploads.parts import (
    MAX_PARTS,
    MIB,
    S3_MIN_PART_SIZE,
    part_count,
    part_range,
    part_size_for,
    progress_fraction,
)

PART = 8 * MIB
TIB = 1024**4


def layout(size: int, *, requested: int = PART, minimum: int = 1) -> tuple[int, int]:
    part_size = part_size_for(size=size, requested=requested, minimum=minimum)
    return part_size, part_count(size=size, part_size=part_size)


def test_empty_file_has_no_parts() -> None:
    assert layout(0) == (PART, 0)


def test_one_byte_is_one_part_of_the_requested_size() -> None:
    assert layout(1) == (PART, 1)


def test_exactly_one_part_and_one_byte_over() -> None:
    assert layout(PART) == (PART, 1)
    assert layout(PART + 1) == (PART, 2)


def test_exactly_max_parts_keeps_the_requested_size() -> None:
    assert layout(PART * MAX_PARTS) == (PART, MAX_PARTS)


def test_one_byte_over_max_parts_grows_the_part_in_whole_mib() -> None:
    part_size, count = layout(PART * MAX_PARTS + 1)
    assert part_size == PART + MIB
    assert part_size % MIB == 0
    assert count <= MAX_PARTS


def test_five_tib_on_s3_fits_in_max_parts_above_the_floor() -> None:
    size = 5 * TIB
    part_size, count = layout(size, requested=S3_MIN_PART_SIZE, minimum=S3_MIN_PART_SIZE)
    assert count <= MAX_PARTS
    assert part_size >= S3_MIN_PART_SIZE
    assert part_size * count >= size
    # The last part holds something: no empty part is ever asked for.
    assert part_size * (count - 1) < size


def test_requested_size_below_the_s3_floor_is_raised_to_it() -> None:
    assert layout(100 * MIB, requested=1 * MIB, minimum=S3_MIN_PART_SIZE) == (S3_MIN_PART_SIZE, 20)


@pytest.mark.parametrize("size", [1, MIB - 1, PART * MAX_PARTS - 1, PART * MAX_PARTS + MIB, 3 * TIB + 7, 5 * TIB])
def test_parts_cover_the_file_exactly(size: int) -> None:
    part_size, count = layout(size, minimum=S3_MIN_PART_SIZE)
    assert 1 <= count <= MAX_PARTS
    ranges = [part_range(part_number=n, size=size, part_size=part_size) for n in (1, count)]
    assert ranges[0] == (0, min(part_size, size))
    last_offset, last_length = ranges[-1]
    assert last_offset + last_length == size
    assert 0 < last_length <= part_size


def test_part_range_of_every_part_of_a_small_file() -> None:
    size, part_size = 10, 4
    assert [part_range(part_number=n, size=size, part_size=part_size) for n in (1, 2, 3)] == [(0, 4), (4, 4), (8, 2)]


@pytest.mark.parametrize("part_number", [0, -1, 4])
def test_part_range_outside_the_file_is_refused(part_number: int) -> None:
    with pytest.raises(ValueError):
        part_range(part_number=part_number, size=10, part_size=4)


def test_part_range_of_an_empty_file_is_refused() -> None:
    with pytest.raises(ValueError):
        part_range(part_number=1, size=0, part_size=4)


def test_progress_fraction() -> None:
    assert progress_fraction(bytes_uploaded=0, size=100, completed=False) == 0.0
    assert progress_fraction(bytes_uploaded=50, size=100, completed=False) == 0.5
    assert progress_fraction(bytes_uploaded=100, size=100, completed=True) == 1.0
    assert progress_fraction(bytes_uploaded=150, size=100, completed=False) == 1.0


def test_progress_of_an_empty_file_is_done_only_once_completed() -> None:
    assert progress_fraction(bytes_uploaded=0, size=0, completed=False) == 0.0
    assert progress_fraction(bytes_uploaded=0, size=0, completed=True) == 1.0
