"""A real RQ worker for the tests, with optional faults injected around the storage backend.

TEST_STORAGE_FAULTS (JSON) sets the plan; every put_part call is appended to TEST_STORAGE_LOG
(one JSON line each) so a test can count which parts were sent, and how often.
  {"fail_part": {"2": 2}}     part 2 fails its first 2 attempts with a retryable error
  {"always_fail_part": 3}     part 3 fails every attempt
  {"fatal_part": 1}           part 1 fails with a non-retryable error
  {"crash_after_parts": 2}    the work horse dies (os._exit) when a 3rd put_part starts
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
django.setup()

import django_rq  # noqa: E402
from backend.uploads.worker import UploadWorker  # noqa: E402

from backend.uploads import jobs, services  # noqa: E402
from backend.uploads import storage as storage_module  # noqa: E402
from backend.uploads.storage import PartReceipt, Storage, StorageError  # noqa: E402


class FaultyStorage:
    """Passes every call to the real backend, failing some put_part calls as the plan says."""

    def __init__(self, inner: Storage, plan: dict[str, Any], log_path: str | None) -> None:
        self.inner = inner
        self.plan = plan
        self.log_path = log_path
        self.name = inner.name
        self.min_part_size = inner.min_part_size
        self.lock = threading.Lock()
        self.attempts: dict[int, int] = {}
        self.started = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_part(self, *, key: str, handle: str, part_number: int, offset: int, data: bytes) -> PartReceipt:
        with self.lock:
            self.started += 1
            attempt = self.attempts[part_number] = self.attempts.get(part_number, 0) + 1
            crash_after = self.plan.get("crash_after_parts")
            if crash_after is not None and self.started > crash_after:
                os._exit(17)
            if self.log_path:
                with open(self.log_path, "a") as log:
                    log.write(json.dumps({"part": part_number, "attempt": attempt, "pid": os.getpid()}) + "\n")
        if attempt <= int(self.plan.get("fail_part", {}).get(str(part_number), 0)):
            raise StorageError(f"injected failure of part {part_number} attempt {attempt}", retryable=True)
        if self.plan.get("always_fail_part") == part_number:
            raise StorageError(f"injected permanent failure of part {part_number}", retryable=True)
        if self.plan.get("fatal_part") == part_number:
            raise StorageError("injected refusal: access denied", retryable=False)
        return self.inner.put_part(key=key, handle=handle, part_number=part_number, offset=offset, data=data)


def main() -> None:
    plan = json.loads(os.environ.get("TEST_STORAGE_FAULTS", "{}"))
    log_path = os.environ.get("TEST_STORAGE_LOG")
    if plan or log_path:
        faulty = FaultyStorage(storage_module.get_storage(), plan, log_path)
        for module in (storage_module, jobs, services):
            module.get_storage = lambda: faulty  # type: ignore[attr-defined]
    worker = UploadWorker([django_rq.get_queue("default")], connection=django_rq.get_connection("default"))
    worker.work(with_scheduler=False)


if __name__ == "__main__":
    main()
