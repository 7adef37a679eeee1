"""Local backend throughput for 1 GiB: the real transfer job, in this process, against a copy loop.

Ours: a staged file (a hard link to the test file, so staging costs nothing) accepted with
`upload_create`, then `jobs.upload_transfer` called directly: claim, ledger rows, progress
publishing, per-part writes at their offsets, completion. Timed from the call to its return.
Baseline: a Python loop reading and writing the same file in the same part size, fsync at the end
(the copy a user would write). Both read a file already in the page cache. Alternating, medians.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.bench.results import Figure, figure, median
from tests.bench.stack import Bench, MiB

SIZE = 1024 * MiB
ROUNDS = 3


def _transfer_once(bench: Bench, path: Path, sha256: str) -> tuple[float, int]:
    """Seconds the transfer job takes for one upload of `path`, and its part size."""
    from backend.uploads.storage import get_storage
    from backend.uploads.storage.local import LocalStorage

    elapsed, row = bench.transfer_in_process(path, sha256=sha256)
    storage = get_storage()
    assert isinstance(storage, LocalStorage)
    storage.object_path(row.storage_key).unlink()
    return elapsed, row.part_size


def _copy_once(path: Path, target: Path, part_size: int) -> float:
    started = time.perf_counter()
    with path.open("rb", buffering=0) as source, target.open("wb", buffering=0) as out:
        while chunk := source.read(part_size):
            out.write(chunk)
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def run(bench: Bench) -> list[Figure]:
    path = bench.file(SIZE)
    sha256 = bench.sha256(path)
    target = bench.root / "copy.bin"
    ours, copy = [], []
    part_size = 0
    for _ in range(ROUNDS):
        elapsed, part_size = _transfer_once(bench, path, sha256)
        ours.append(SIZE / MiB / elapsed)
        copy.append(SIZE / MiB / _copy_once(path, target, part_size))
    return [
        figure(
            "local_throughput_1GiB",
            ours=median(ours),
            baseline=median(copy),
            unit="MiB/s",
            goal="ratio >= 1.0",
            check=lambda f: (f.ratio or 0) >= 1.0,
            note=f"{ROUNDS} rounds, part size {part_size // MiB} MiB, job run in-process (claim to COMPLETED)",
        )
    ]
