"""What several upload tests look at: an upload's status over the API, staging, the put_part log."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from backend.uploads.staging import INCOMING
from tests.support.client import UPLOAD_QUERY, data_of, graphql
from tests.support.processes import wait_until


def upload_wait_for_status(
    url: str, headers: dict[str, str], upload_id: str, statuses: set[str], timeout: float = 60
) -> dict[str, Any]:
    """Poll `upload(id)` until its status is one of `statuses`; the upload as the API answers it."""

    def current() -> dict[str, Any] | None:
        upload = data_of(graphql(url, UPLOAD_QUERY, {"id": upload_id}, headers))["upload"]
        return upload if upload["status"] in statuses else None

    return wait_until(current, timeout=timeout, what=f"upload {upload_id} to reach {statuses}")


def ledger_wait(upload_id: str, parts: int, timeout: float = 30) -> None:
    """Wait until the ledger holds `parts` parts of the upload.

    The engine records a confirmed part once the part after it is on its way, so a worker held at
    a gate on part N may not have written part N-1 yet: a test that acts "with parts 1..N-1
    confirmed" waits for them here after `Gate.reached()`.
    """
    from backend.uploads.models import FileUpload

    wait_until(
        lambda: FileUpload.objects.get(id=upload_id).parts.count() == parts,
        timeout=timeout,
        what=f"{parts} parts of {upload_id} in the ledger",
    )


def staging_entries(staging: Path | None = None) -> set[str]:
    """Every file under the staging directory (staged uploads and `incoming/`), relative names."""
    root = Path(staging or os.environ["UPLOAD_STAGING_DIR"])
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def incoming_entries(staging: Path | None = None) -> list[str]:
    incoming = Path(staging or os.environ["UPLOAD_STAGING_DIR"]) / INCOMING
    return sorted(p.name for p in incoming.iterdir()) if incoming.exists() else []


def open_staging_files(pid: int, staging: Path | None = None) -> list[str]:
    """Files under staging that process `pid` still holds open, deleted ones included.

    A refused upload whose file was unlinked but is still open keeps its disk space until the
    process exits, so "nothing left in staging" includes this.
    """
    root = str(Path(staging or os.environ["UPLOAD_STAGING_DIR"]).resolve())
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(root):
            held.append(target)
    return held


def put_part_log(path: Path, *, key: str | None = None) -> list[dict[str, Any]]:
    """The put_part calls a fault-injecting worker logged (TEST_STORAGE_LOG), in call order.

    With `key`, only those for that object (a stack may transfer several uploads).
    """
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if key is None or e["key"] == key]


def put_part_counts(path: Path, *, key: str | None = None) -> Counter[int]:
    """How many times each part number was put (of object `key` only, if given)."""
    return Counter(entry["part"] for entry in put_part_log(path, key=key))


class Gate:
    """Holds a fault-injecting worker at the first put of part `part` until `open()`.

    `plan` goes into the worker's faults (`make_stack(faults=gate.plan)`); `reached()` waits until
    the worker is at that part (it wrote `<path>.reached`), so a test synchronises on the event
    itself instead of a head start or a part delay.
    """

    def __init__(self, path: Path, *, part: int) -> None:
        self.path = path
        self.part = part
        path.touch()

    @property
    def plan(self) -> dict[str, Any]:
        return {"hold_part": {"part": self.part, "while": str(self.path)}}

    def reached(self, timeout: float = 60) -> None:
        wait_until(
            lambda: Path(f"{self.path}.reached").exists(), timeout=timeout, what=f"the worker at part {self.part}"
        )

    def open(self) -> None:
        self.path.unlink(missing_ok=True)
