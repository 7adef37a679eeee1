"""The pipeline's service pieces in process: the real services on the test database and the session's Redis.

The reaper's backoff after a failed run, the orphan handler's refusal when a newer run holds the
upload, and the request thread's coalescing while Redis is slow (the thread held by a gate).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from backend.uploads.jobqueue import _connection, _pipeline_flag, pipeline_backoff_clear, pipeline_backoff_start
from backend.uploads.models import FileUpload, UploadMode, UploadStatus
from backend.uploads.services import pipeline
from backend.uploads.services.pipeline import (
    pipeline_claim_for,
    upload_pipeline_failed,
    upload_pipeline_nudge_soon,
    upload_pipeline_orphaned,
    upload_pipeline_requeue_behind,
)

PART = 1024 * 1024


@pytest.fixture
def owner(tmp_path: Path, make_user: Any) -> Iterator[Any]:
    from tests.conftest import _database_of_its_own

    with _database_of_its_own(), override_settings(UPLOAD_STAGING_DIR=tmp_path / "staging"):
        yield make_user().user


def _receiving(owner: Any, *, claim: uuid.UUID | None = None) -> FileUpload:
    """A RECEIVING resumable upload of four parts with two whole ones in and none sent."""
    upload_id = uuid.uuid4()
    return FileUpload.objects.create(
        id=upload_id,
        owner=owner,
        filename="piped.bin",
        content_type="application/octet-stream",
        size=3 * PART + 5,
        status=UploadStatus.RECEIVING,
        mode=UploadMode.RESUMABLE,
        bytes_received=2 * PART,
        part_size=PART,
        parts_total=4,
        storage_backend="local",
        storage_key=f"uploads/piped/{upload_id}",
        claim=claim,
    )


def _forget_request(upload_id: uuid.UUID) -> None:
    """Clear the debounce flag, as the job does when it starts: the next request queues again."""
    _connection().delete(_pipeline_flag(upload_id))


def test_the_backoff_doubles_up_to_its_cap_and_clears() -> None:
    upload_id = uuid.uuid4()
    delays = [pipeline_backoff_start(upload_id=upload_id, first=5, cap=30) for _ in range(5)]
    assert delays == [5, 10, 20, 30, 30]
    pipeline_backoff_clear(upload_id=upload_id)
    assert pipeline_backoff_start(upload_id=upload_id, first=5, cap=30) == 5
    pipeline_backoff_clear(upload_id=upload_id)


def test_the_reaper_asks_for_no_run_while_a_failed_one_backs_off(owner: Any) -> None:
    claim = uuid.uuid4()
    row = _receiving(owner, claim=claim)
    try:
        with override_settings(UPLOAD_PIPELINE_BACKOFF_SECONDS=600):
            upload_pipeline_failed(upload_id=row.id, claim=claim, error="injected store outage")
        assert FileUpload.objects.get(id=row.id).claim is None, "the failed run gave its claim back"
        assert row.id not in upload_pipeline_requeue_behind(), "backing off: no run requested"
        assert row.id not in upload_pipeline_requeue_behind(), "nor at the next tick"

        pipeline_backoff_clear(upload_id=row.id)
        assert row.id in upload_pipeline_requeue_behind(), "the backoff over: a run is requested"
    finally:
        pipeline_backoff_clear(upload_id=row.id)
        _forget_request(row.id)


def test_the_orphan_handler_leaves_an_upload_a_newer_run_holds(owner: Any) -> None:
    newer = uuid.uuid4()
    row = _receiving(owner, claim=newer)
    dead_job = f"pipeline-{row.id}-deadbeef"
    assert upload_pipeline_orphaned(upload_id=row.id, job_id=dead_job, cause="SIGKILL") is False
    assert FileUpload.objects.get(id=row.id).claim == newer, "the newer run keeps its claim"

    # The dead horse's own claim is freed (and the next run requested).
    FileUpload.objects.filter(id=row.id).update(claim=pipeline_claim_for(dead_job))
    try:
        assert upload_pipeline_orphaned(upload_id=row.id, job_id=dead_job, cause="SIGKILL") is True
        assert FileUpload.objects.get(id=row.id).claim is None
        assert _connection().exists(_pipeline_flag(row.id)), "the next run was requested"
    finally:
        _forget_request(row.id)


def test_requests_waiting_on_a_hung_redis_coalesce_per_upload(owner: Any) -> None:
    """While the request thread is stuck, a thousand chunks of two uploads leave two requests waiting."""
    first, second = _receiving(owner), _receiving(owner)
    requests = pipeline._requests()
    stuck, release = threading.Event(), threading.Event()

    def hung_redis() -> None:
        stuck.set()
        release.wait(30)

    requests.submit(hung_redis)
    try:
        assert stuck.wait(30)
        for _ in range(500):
            upload_pipeline_nudge_soon(upload=first)
            upload_pipeline_nudge_soon(upload=second)
        assert set(pipeline._waiting) == {first.id, second.id}
        assert requests._work_queue.qsize() == 2, "one waiting request per upload"
    finally:
        release.set()
        requests.submit(lambda: None).result(30)
    assert not pipeline._waiting
    for row in (first, second):
        assert _connection().exists(_pipeline_flag(row.id)), "each upload's request was made once Redis answered"
        _forget_request(row.id)
