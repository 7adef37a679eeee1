"""Crash recovery with real processes: SIGTERM, SIGKILL, duplicate delivery."""

from __future__ import annotations

import hashlib
import os
import signal
from collections import Counter
from pathlib import Path

import httpx
import redis
from rq import Queue

from backend.uploads.models import FileUpload, UploadStatus
from tests.support.client import data_of, upload_file
from tests.support.processes import wait_until
from tests.support.uploads import Gate, ledger_wait, put_part_counts

MIB = 1024 * 1024


def _row(upload_id: str) -> FileUpload:
    return FileUpload.objects.get(id=upload_id)


def _parts_sent(log: Path, upload_id: str) -> Counter[int]:
    """How often each part of `upload_id` was put (a reaper may transfer earlier tests' uploads too)."""
    return put_part_counts(log, key=_row(upload_id).storage_key)


def _assert_stored(upload_id: str, content: bytes) -> None:
    row = _row(upload_id)
    assert row.status == UploadStatus.COMPLETED, (row.status, row.error)
    stored = (Path(os.environ["LOCAL_STORAGE_ROOT"]) / row.storage_key).read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(content).digest()


def test_sigterm_stops_between_parts_and_the_upload_resumes(make_stack, api_user, tmp_path) -> None:
    # Both part threads are held at parts 4 and 5 (1-3 confirmed) while the SIGTERM arrives, so the
    # stop lands mid-transfer however fast or loaded the machine is.
    log = tmp_path / "parts.jsonl"
    fourth, fifth = Gate(tmp_path / "gate-4", part=4), Gate(tmp_path / "gate-5", part=5)
    faults = {"hold_part": fourth.plan["hold_part"], "hold_part_also": fifth.plan["hold_part"]}
    stack = make_stack(env={"UPLOAD_PART_CONCURRENCY": "2", "TEST_STORAGE_LOG": str(log)}, faults=faults)
    content = os.urandom(24 * MIB)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]
    fourth.reached()
    fifth.reached()
    ledger_wait(upload_id, 3)
    assert _row(upload_id).parts_uploaded == 3

    worker = stack.workers[0]
    os.kill(worker.process.pid, signal.SIGTERM)
    wait_until(
        lambda: "to stop after its parts" in worker.log.read_text(), timeout=30, what="the worker to pass the stop on"
    )
    fourth.open()
    fifth.open()
    worker.process.wait(30)
    row = _row(upload_id)
    assert row.status == UploadStatus.QUEUED, "a stopping worker gives the transfer back"
    assert 5 <= row.parts_uploaded < row.parts_total, "the parts in flight are finished, no more are started"
    assert row.parts.count() == row.parts_uploaded
    confirmed_before = row.parts_uploaded

    stack.add_worker()
    wait_until(lambda: _row(upload_id).status == UploadStatus.COMPLETED, timeout=60, what="the resumed transfer")
    _assert_stored(upload_id, content)
    sent = _parts_sent(log, upload_id)
    assert set(sent) == set(range(1, 25))
    assert all(count == 1 for count in sent.values()), f"parts sent twice: {sent}"
    assert _row(upload_id).attempts == 2
    assert confirmed_before <= _row(upload_id).parts_uploaded


def test_sigkilled_worker_is_reaped_and_resumed_by_the_cron(make_stack, api_user, tmp_path) -> None:
    log = tmp_path / "parts.jsonl"
    env = {"UPLOAD_PART_CONCURRENCY": "1", "UPLOAD_STALE_AFTER_SECONDS": "3", "TEST_STORAGE_LOG": str(log)}
    # Killed while it holds part 3, with parts 1 and 2 confirmed behind it.
    gate = Gate(tmp_path / "gate", part=3)
    stack = make_stack(env=env, faults=gate.plan)
    stack.start_cron()
    content = os.urandom(12 * MIB)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]
    gate.reached()
    ledger_wait(upload_id, 2)
    stack.workers[0].kill()
    gate.open()
    confirmed = _row(upload_id).parts_uploaded
    assert confirmed == 2
    stack.add_worker()
    wait_until(lambda: _row(upload_id).status == UploadStatus.COMPLETED, timeout=90, what="reaped and resumed")
    _assert_stored(upload_id, content)
    sent = _parts_sent(log, upload_id)
    assert all(sent[n] == 1 for n in range(1, confirmed + 1)), f"confirmed parts sent again: {sent}"
    assert _row(upload_id).attempts == 2


def test_a_job_delivered_twice_transfers_once(make_stack, api_user, tmp_path) -> None:
    log = tmp_path / "parts.jsonl"
    # The second delivery runs, on the other worker, while the first holds part 2 in flight.
    gate = Gate(tmp_path / "gate", part=2)
    stack = make_stack(env={"TEST_STORAGE_LOG": str(log)}, workers=2, faults=gate.plan)
    content = os.urandom(8 * MIB)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]
    gate.reached()
    queue = Queue("default", connection=redis.Redis.from_url(stack.env["REDIS_URL"]))
    duplicate = queue.enqueue("backend.uploads.jobs.upload_transfer", upload_id)
    wait_until(lambda: duplicate.get_status(refresh=True) == "finished", timeout=30, what="the duplicate to end")
    gate.open()
    wait_until(lambda: _row(upload_id).status == UploadStatus.COMPLETED, timeout=60, what="completion")
    wait_until(lambda: queue.count == 0 and len(queue.started_job_registry) == 0, timeout=30, what="queue drained")
    _assert_stored(upload_id, content)
    sent = _parts_sent(log, upload_id)
    assert sent == Counter({n: 1 for n in range(1, 9)}), sent
    assert _row(upload_id).attempts == 1


def test_readyz_reports_redis_down(make_stack) -> None:
    stack = make_stack(env={"REDIS_URL": "redis://127.0.0.1:1/0"}, workers=0)
    response = httpx.get(f"{stack.url}/readyz", timeout=10)
    assert response.status_code == 503
    body = response.json()
    assert body["redis"] != "ok" and body["database"] == "ok"
