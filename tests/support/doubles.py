"""Test doubles the settings choose by dotted path (never by patching modules): see tests/support/worker.py.

STORAGE_WRAPPER=tests.support.doubles.FaultyStorage wraps the storage backend: every put_part (or
put_part_from_file, or the plain put of a one-part file: its part 1) call is appended to
TEST_STORAGE_LOG (one JSON line each: part, attempt, pid, the object's key, time) and fails as
TEST_STORAGE_FAULTS (JSON) says:
  {"fail_part": {"2": 2}}     part 2 fails its first 2 attempts with a retryable error
  {"always_fail_part": 3}     part 3 fails every attempt
  {"fatal_part": 1}           part 1 fails with a non-retryable error
  {"crash_after_parts": 2}    the work horse dies (os._exit) when a 3rd put_part starts
  {"outage_while": PATH}      every put_part fails (retryable) while the file PATH exists: a store
                              outage the test starts and ends by creating and removing PATH
  {"hold_part": {"part": 3, "while": PATH}}
                              a gate: the first put of part 3 writes PATH.reached, then waits until
                              PATH is gone (tests/support/uploads.py `Gate`): the test knows the
                              worker is at part 3, and lets it on when it is ready
                              ("hold_part_also": a second gate, the same way)
  {"slow_part": {"2": 6}}     part 2's first attempt takes 6 s more before the store answers
  {"slow_complete": 6}        complete takes 6 s more (a store assembling a large object)
  {"hold_after_complete": PATH}
                              a gate after the store's complete: the object is whole in the bucket
                              and the run has not told the ledger yet (a cancel landing right then)

PROGRESS_PUBLISHER=tests.support.doubles.DroppingPublisher skips some progress events of a job
while the rows still change as usual, as if the channel layer had lost them; TEST_DROP_PROGRESS
(JSON) says which, and each skipped event is appended to TEST_DROP_PROGRESS_LOG (one JSON line):
  {"statuses": ["COMPLETED"]}   every event carrying one of these statuses
  {"sequences": [3, 4]}         the events with these sequence numbers
  {"parts": [2]}                the events reporting these part numbers
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from backend.uploads.progress import ProgressPublisher
from backend.uploads.storage import PartReceipt, Storage, StorageError


class FaultyStorage:
    """Passes every call to the real backend, failing some put_part calls as the plan says."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.plan: dict[str, Any] = json.loads(os.environ.get("TEST_STORAGE_FAULTS", "{}"))
        self.log_path = os.environ.get("TEST_STORAGE_LOG")
        self.name = inner.name
        self.min_part_size = inner.min_part_size
        self.lock = threading.Lock()
        self.attempts: dict[int, int] = {}
        self.started = 0

    def __getattr__(self, name: str) -> Any:
        if name == "put_part_from_file":
            # The same faults on the path the engine takes when the backend has it (local disk);
            # a backend without it (S3) stays without it here too.
            put_part_from_file = self.inner.put_part_from_file

            def faulty(*, key: str, part_number: int, **kwargs: Any) -> PartReceipt:
                self._inject(key, part_number)
                return put_part_from_file(key=key, part_number=part_number, **kwargs)

            return faulty
        return getattr(self.inner, name)

    def complete(self, **kwargs: Any) -> None:
        time.sleep(float(self.plan.get("slow_complete", 0)))  # sync-ok: the injected slowness itself
        self.inner.complete(**kwargs)
        hold = self.plan.get("hold_after_complete")
        if hold:
            Path(f"{hold}.reached").touch()
            while os.path.exists(hold):
                time.sleep(0.01)  # sync-ok: the gate; the test removes the file when the worker may go on

    def put_part(self, *, key: str, handle: str, part_number: int, offset: int, data: bytes) -> PartReceipt:
        self._inject(key, part_number)
        return self.inner.put_part(key=key, handle=handle, part_number=part_number, offset=offset, data=data)

    def put_object(self, *, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> PartReceipt:
        # A file of one part is stored with one plain put: that put is its part 1, faults included.
        if data:
            self._inject(key, 1)
        return self.inner.put_object(key=key, data=data, content_type=content_type, metadata=metadata)

    def _inject(self, key: str, part_number: int) -> None:
        """Log the attempt, then fail it, or kill the process, as the plan says."""
        with self.lock:
            self.started += 1
            attempt = self.attempts[part_number] = self.attempts.get(part_number, 0) + 1
            crash_after = self.plan.get("crash_after_parts")
            if crash_after is not None and self.started > crash_after:
                os._exit(17)
            if self.log_path:
                with open(self.log_path, "a") as log:
                    entry = {"part": part_number, "attempt": attempt, "pid": os.getpid(), "key": key, "at": time.time()}
                    log.write(json.dumps(entry) + "\n")
        for hold in (self.plan.get("hold_part"), self.plan.get("hold_part_also")):
            if hold and int(hold["part"]) == part_number and attempt == 1:
                Path(f"{hold['while']}.reached").touch()
                while os.path.exists(hold["while"]):
                    time.sleep(0.01)  # sync-ok: the gate; the test removes the file when the worker may go on
        if self.plan.get("outage_while") and os.path.exists(self.plan["outage_while"]):
            raise StorageError(f"injected store outage: part {part_number} not stored", retryable=True)
        if attempt <= int(self.plan.get("fail_part", {}).get(str(part_number), 0)):
            raise StorageError(f"injected failure of part {part_number} attempt {attempt}", retryable=True)
        if self.plan.get("always_fail_part") == part_number:
            raise StorageError(f"injected permanent failure of part {part_number}", retryable=True)
        if self.plan.get("fatal_part") == part_number:
            raise StorageError("injected refusal: access denied", retryable=False)
        if attempt == 1 and str(part_number) in self.plan.get("slow_part", {}):
            time.sleep(float(self.plan["slow_part"][str(part_number)]))  # sync-ok: the injected slowness itself


class DroppingPublisher(ProgressPublisher):
    """The job's progress publisher, dropping the events TEST_DROP_PROGRESS names."""

    def __init__(self) -> None:
        super().__init__()
        plan = json.loads(os.environ.get("TEST_DROP_PROGRESS", "{}"))
        self.statuses = set(plan.get("statuses", []))
        self.sequences = {int(n) for n in plan.get("sequences", [])}
        self.parts = {int(n) for n in plan.get("parts", [])}
        self.log_path = os.environ.get("TEST_DROP_PROGRESS_LOG")

    def publish(self, event: dict[str, Any]) -> None:
        part_number = event.get("part_number")
        if event["status"] in self.statuses or event["sequence"] in self.sequences or part_number in self.parts:
            if self.log_path:
                with open(self.log_path, "a") as log:
                    record = {"upload_id": event["upload_id"], "sequence": event["sequence"], "status": event["status"]}
                    log.write(json.dumps({**record, "part_number": part_number}) + "\n")
            return
        super().publish(event)
