"""Workers that stop, die or only look slow, with real processes: a rolling SIGTERM restart of
every worker mid-transfer, a work horse killed under a live worker, a live transfer slower than
the stale window, and the reaper's view of a job a worker is just taking from the queue.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import redis
from django.test import override_settings
from django.utils import timezone
from rq import Queue
from rq.intermediate_queue import IntermediateQueue

from backend.uploads.models import FileUpload, UploadStatus
from tests.support.client import data_of, upload_file
from tests.support.processes import wait_until
from tests.support.uploads import Gate, ledger_wait, put_part_counts

pytestmark = pytest.mark.slow
MIB = 1024 * 1024


def _row(upload_id: str) -> FileUpload:
    return FileUpload.objects.get(id=upload_id)


def _stored(upload_id: str) -> bytes:
    return (Path(os.environ["LOCAL_STORAGE_ROOT"]) / _row(upload_id).storage_key).read_bytes()


def test_rolling_sigterm_restart_of_every_worker_completes_every_upload_putting_each_part_once(
    make_stack, api_user, tmp_path
) -> None:
    """As a deploy does it: start a new worker, SIGTERM an old one while it transfers, wait for it
    to exit, next. 20 uploads of 8 parts are under way throughout."""
    log = tmp_path / "parts.jsonl"
    # Pacing: 20 uploads paced at 250 ms a part keep every old worker busy through the deploy, as
    # real traffic would; the gates other tests use hold one transfer, not a stream of them.
    env = {"UPLOAD_PART_DELAY_MS": "250", "UPLOAD_PART_CONCURRENCY": "2", "TEST_STORAGE_LOG": str(log)}
    stack = make_stack(env=env, workers=3)
    contents = {}
    for _ in range(20):
        body = os.urandom(8 * MIB)
        contents[data_of(upload_file(stack.url, body, headers=api_user.headers))["uploadFile"]["id"]] = body

    interrupted = 0
    for old in list(stack.workers):
        stack.add_worker()
        if wait_until(lambda old=old: old.current_job() is not None, timeout=60, what="the old worker to be busy"):
            interrupted += 1
        os.kill(old.process.pid, signal.SIGTERM)
        old.process.wait(60)
        assert old.process.returncode == 0, f"a worker stopped by SIGTERM exited {old.process.returncode}"
    assert interrupted == 3

    def all_ended() -> bool:
        return not FileUpload.objects.filter(id__in=contents, status__in=["QUEUED", "UPLOADING"]).exists()

    wait_until(all_ended, timeout=180, what="every upload to end")
    statuses = Counter(FileUpload.objects.filter(id__in=contents).values_list("status", flat=True))
    assert statuses == {UploadStatus.COMPLETED: 20}, statuses
    resumed = 0
    for upload_id, body in contents.items():
        assert hashlib.sha256(_stored(upload_id)).digest() == hashlib.sha256(body).digest()
        sent = put_part_counts(log, key=_row(upload_id).storage_key)
        assert sent == Counter({n: 1 for n in range(1, 9)}), f"upload {upload_id} parts put: {sent}"
        resumed += _row(upload_id).attempts > 1
    assert resumed >= 1, "a SIGTERM interrupted a transfer that another worker resumed"


def _horse_of(worker) -> psutil.Process:
    def horse() -> psutil.Process | None:
        children = psutil.Process(worker.process.pid).children()
        return children[0] if children else None

    return wait_until(horse, timeout=30, what="the worker's work horse")


def test_a_killed_work_horse_is_given_back_by_its_own_worker_without_the_reaper(make_stack, api_user, tmp_path) -> None:
    """No cron runs here, so nothing but the worker that saw its child die can queue the upload again."""
    log = tmp_path / "parts.jsonl"
    env = {"UPLOAD_PART_CONCURRENCY": "1", "TEST_STORAGE_LOG": str(log)}
    # The horse is killed while a gate holds its part 3, parts 1 and 2 confirmed behind it.
    gate = Gate(tmp_path / "gate", part=3)
    stack = make_stack(env=env, workers=1, faults=gate.plan)
    body = os.urandom(12 * MIB)
    upload_id = data_of(upload_file(stack.url, body, headers=api_user.headers))["uploadFile"]["id"]
    gate.reached()
    ledger_wait(upload_id, 2)
    horse = _horse_of(stack.workers[0])
    horse.kill()
    gate.open()
    confirmed = set(_row(upload_id).parts.values_list("part_number", flat=True))
    assert confirmed == {1, 2}

    wait_until(lambda: _row(upload_id).status == UploadStatus.COMPLETED, timeout=60, what="the upload resumed")
    assert stack.workers[0].process.poll() is None, "the worker itself lives on"
    assert _stored(upload_id) == body
    sent = put_part_counts(log, key=_row(upload_id).storage_key)
    assert all(sent[n] == 1 for n in confirmed), f"confirmed parts sent again: {sent}"
    assert _row(upload_id).attempts == 2


def test_a_live_transfer_slower_than_the_stale_window_is_never_taken_for_dead(make_stack, api_user, tmp_path) -> None:
    """A part, then the completion, each take twice the stale window; the reaper runs all along."""
    log = tmp_path / "parts.jsonl"
    env = {"UPLOAD_STALE_AFTER_SECONDS": "3", "UPLOAD_HEARTBEAT_SECONDS": "1", "TEST_STORAGE_LOG": str(log)}
    stack = make_stack(env=env, workers=2, faults={"slow_part": {"2": 6}, "slow_complete": 6})
    stack.start_cron()
    body = os.urandom(3 * MIB)
    upload_id = data_of(upload_file(stack.url, body, headers=api_user.headers))["uploadFile"]["id"]
    wait_until(lambda: _row(upload_id).status == UploadStatus.COMPLETED, timeout=60, what="completion")
    assert _row(upload_id).attempts == 1, "the live transfer was reaped and run again"
    assert put_part_counts(log, key=_row(upload_id).storage_key) == Counter({1: 1, 2: 1, 3: 1})
    logs = "".join(p.read_text() for p in stack.root.glob("*.log"))
    assert f"upload {upload_id}: transfer silent" not in logs


def test_the_reaper_leaves_a_job_in_transit_alone_and_says_what_it_saw_when_it_is_really_lost(
    make_stack, api_user, caplog
) -> None:
    """RQ moves a job from the queue to its intermediate list before the worker starts it. A job
    seen there is in transit, not lost; one that stays there past the grace belonged to a worker
    that died taking it, and the warning says so."""
    from backend.uploads import services

    stack = make_stack(workers=0)
    connection = redis.Redis.from_url(stack.env["REDIS_URL"])
    queue = Queue("default", connection=connection)
    upload_id = data_of(upload_file(stack.url, os.urandom(MIB), headers=api_user.headers))["uploadFile"]["id"]
    job_id = _row(upload_id).job_id
    assert job_id in queue.get_job_ids()
    # What a worker's dequeue does first (BLMOVE to the intermediate list), and no more.
    connection.lmove(queue.key, IntermediateQueue.get_intermediate_queue_key(queue.key))
    long_ago = timezone.now() - timedelta(minutes=5)
    FileUpload.objects.filter(id=upload_id).update(updated_at=long_ago)

    rq_here = override_settings(RQ_QUEUES={"default": {"URL": stack.env["REDIS_URL"], "DEFAULT_TIMEOUT": 3600}})
    with caplog.at_level(logging.INFO, logger="backend.uploads"), rq_here:
        assert services.upload_requeue_lost(stale_after_seconds=10) == []
        assert not [r for r in caplog.records if "lost" in r.getMessage()], caplog.text
        assert _row(upload_id).job_id == job_id

        # Still there after the grace: its worker died holding it.
        in_transit = IntermediateQueue(queue.key, connection)
        connection.set(in_transit.get_first_seen_key(job_id), (timezone.now() - timedelta(minutes=1)).timestamp())
        assert services.upload_requeue_lost(stale_after_seconds=10) == [uuid.UUID(upload_id)]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("taken from the queue by a worker that never started it" in m for m in warning), warning
    assert _row(upload_id).job_id != job_id
