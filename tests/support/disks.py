"""A real full disk for tests: a small tmpfs mounted for the test (root only), unmounted after.

Runs wherever the tests run as root, CI included (`.ci/run` runs as root). Elsewhere the test is
skipped with the reason; under CI (CI=true) a missing privilege fails it instead, so a CI run
never passes without having filled a disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MIB = 1024 * 1024


@contextmanager
def small_disk(directory: Path, *, size_mib: int) -> Iterator[Path]:
    """`directory` as a tmpfs of `size_mib` MiB while the block runs."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        reason = f"a full-disk test needs root and mount(8) to mount a {size_mib} MiB tmpfs"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run it (it runs as root)")
        pytest.skip(f"{reason}; CI runs it as root")
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(directory)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"could not mount a tmpfs on {directory}: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        # Lazy: a process the test started may still hold a file there for a moment.
        subprocess.run(["umount", "--lazy", str(directory)], check=False)


def disk_fill(directory: Path, *, leave_mib: int) -> Path:
    """A ballast file that leaves about `leave_mib` MiB free on the filesystem of `directory`."""
    ballast = directory / "ballast.bin"
    free = shutil.disk_usage(directory).free
    with ballast.open("wb") as out:
        out.truncate(0)
        remaining = free - leave_mib * MIB
        chunk = b"\0" * MIB
        while remaining > 0:
            remaining -= out.write(chunk[: min(MIB, remaining)])
    return ballast
