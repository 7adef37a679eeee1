"""Small files transferred in the worker process itself (no work horse), with real processes:
where each kind of job runs, a worker SIGKILLed during such a job, and a SIGTERM during one.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from backend.uploads.models import FileUpload, UploadStatus
from tests.support.client import data_of, upload_file
from tests.support.processes import wait_until
from tests.support.uploads import Gate

KIB = 1024


def _row(upload_id: str) -> FileUpload:
    return FileUpload.objects.get(id=upload_id)


def _stored(upload_id: str) -> bytes:
    return (Path(os.environ["LOCAL_STORAGE_ROOT"]) / _row(upload_id).storage_key).read_bytes()


def _put_pids(log: Path, upload_id: str) -> set[int]:
    key = _row(upload_id).storage_key
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return {line["pid"] for line in lines if line["key"] == key}


def test_a_small_file_is_sent_by_the_worker_itself_and_a_larger_one_by_a_work_horse(
    make_stack, api_user, tmp_path
) -> None:
    """Both are one part (1 MiB parts here); only the one within UPLOAD_IN_PROCESS_MAX_BYTES skips the fork."""
    log = tmp_path / "parts.jsonl"
    stack = make_stack(env={"UPLOAD_IN_PROCESS_MAX_BYTES": str(64 * KIB), "TEST_STORAGE_LOG": str(log)}, workers=1)
    worker_pid = stack.workers[0].process.pid
    small, larger = os.urandom(64 * KIB), os.urandom(64 * KIB + 1)
    small_id = data_of(upload_file(stack.url, small, headers=api_user.headers))["uploadFile"]["id"]
    larger_id = data_of(upload_file(stack.url, larger, headers=api_user.headers))["uploadFile"]["id"]
    for upload_id in (small_id, larger_id):
        wait_until(lambda u=upload_id: _row(u).status == UploadStatus.COMPLETED, timeout=30, what="completion")
    assert _stored(small_id) == small and _stored(larger_id) == larger
    assert _put_pids(log, small_id) == {worker_pid}
    (horse,) = _put_pids(log, larger_id)
    assert horse != worker_pid, "a file over UPLOAD_IN_PROCESS_MAX_BYTES is sent from a forked work horse"


def test_a_worker_sigkilled_while_it_sends_a_small_file_itself_is_recovered_by_the_reaper(
    make_stack, api_user, tmp_path
) -> None:
    """No horse, so no parent to give the upload back at once: the reaper does, after the stale window."""
    gate = Gate(tmp_path / "gate", part=1)
    stack = make_stack(env={"UPLOAD_STALE_AFTER_SECONDS": "3"}, workers=1, faults=gate.plan)
    stack.start_cron()
    body = os.urandom(4 * KIB)
    upload_id = data_of(upload_file(stack.url, body, headers=api_user.headers))["uploadFile"]["id"]
    gate.reached()
    assert _row(upload_id).status == UploadStatus.UPLOADING
    stack.workers[0].kill()
    gate.open()
    stack.add_worker()
    wait_until(lambda: _row(upload_id).status == UploadStatus.COMPLETED, timeout=60, what="reaped and sent again")
    assert _stored(upload_id) == body
    assert _row(upload_id).attempts == 2
    logs = "".join(p.read_text() for p in stack.root.glob("*.log"))
    assert f"upload {upload_id}: transfer silent" in logs, "the reaper, not a parent process, gave it back"


def test_a_sigterm_while_the_worker_sends_a_small_file_itself_finishes_it_then_stops(
    make_stack, api_user, tmp_path
) -> None:
    """Warm shutdown as with a horse: the put in flight finishes and is recorded, then the worker exits 0."""
    gate = Gate(tmp_path / "gate", part=1)
    stack = make_stack(workers=1, faults=gate.plan)
    body = os.urandom(4 * KIB)
    upload_id = data_of(upload_file(stack.url, body, headers=api_user.headers))["uploadFile"]["id"]
    gate.reached()
    worker = stack.workers[0]
    os.kill(worker.process.pid, signal.SIGTERM)
    gate.open()
    worker.process.wait(30)
    assert worker.process.returncode == 0, f"a worker stopped by SIGTERM exited {worker.process.returncode}"
    row = _row(upload_id)
    assert row.status == UploadStatus.COMPLETED and row.attempts == 1
    assert _stored(upload_id) == body
