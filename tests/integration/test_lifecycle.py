"""Cancel, retry, delete, the whole state table, and the sweep: real server, workers, Redis, cron."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.utils import timezone
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job

from backend.uploads.errors import InvalidState
from backend.uploads.jobqueue import IN_TRANSIT_GRACE_SECONDS
from backend.uploads.models import FileUpload, UploadPart, UploadStatus
from backend.uploads.services import ClaimLost, upload_transition
from backend.uploads.staging import INCOMING, staging_delete
from backend.uploads.storage.local import INCOMPLETE_DIR
from tests.support.client import UPLOAD_QUERY, data_of, error_codes, graphql, subscriber, upload_file
from tests.support.processes import ROOT, _spawn, _stop, wait_until
from tests.support.uploads import Gate, ledger_wait, put_part_log, upload_wait_for_status

MIB = 1024 * 1024
CANCEL = "mutation($id: ID!) { cancelUpload(id: $id) { id status bytesUploaded partsUploaded } }"
RETRY = "mutation($id: ID!) { retryUpload(id: $id) { id status bytesUploaded partsUploaded error } }"
DELETE = "mutation($id: ID!) { deleteUpload(id: $id) }"

# CONTRACT section 3, written out here rather than read from the code under test.
CONTRACT_MOVES = {
    ("RECEIVING", "QUEUED"),
    ("RECEIVING", "FAILED"),
    ("RECEIVING", "CANCELLED"),
    ("QUEUED", "UPLOADING"),
    ("QUEUED", "CANCELLED"),
    ("UPLOADING", "COMPLETED"),
    ("UPLOADING", "FAILED"),
    ("UPLOADING", "CANCELLED"),
    ("UPLOADING", "QUEUED"),
    ("FAILED", "QUEUED"),
    ("CANCELLED", "QUEUED"),
}
STATUSES = ["RECEIVING", "QUEUED", "UPLOADING", "COMPLETED", "FAILED", "CANCELLED"]


def _row(upload_id: str) -> FileUpload:
    return FileUpload.objects.get(id=upload_id)


def _mutate(stack: Any, query: str, upload_id: str, headers: dict[str, str]) -> dict[str, Any]:
    return data_of(graphql(stack.url, query, {"id": upload_id}, headers))


def _refused(stack: Any, query: str, upload_id: str, headers: dict[str, str]) -> list[str]:
    return error_codes(graphql(stack.url, query, {"id": upload_id}, headers))


def _queue(stack: Any) -> Queue:
    return Queue("default", connection=redis.Redis.from_url(stack.env["REDIS_URL"]))


def _open_objects(bucket: Path) -> set[str]:
    """Names in the local bucket's temporary area (open objects are `<handle>.data` / `.parts`)."""
    area = bucket / INCOMPLETE_DIR
    return {p.name for p in area.iterdir()} if area.is_dir() else set()


def _handle_files(bucket: Path, handle: str) -> set[str]:
    return {name for name in _open_objects(bucket) if name.startswith(handle)}


def _stored(bucket: Path, upload_id: str) -> bytes:
    return (bucket / _row(upload_id).storage_key).read_bytes()


def _parts_in(log: Path, start: int = 0) -> list[int]:
    return [entry["part"] for entry in put_part_log(log)[start:]]


# --- cancel and retry -------------------------------------------------------------------------


def test_cancel_while_uploading_stops_before_the_next_part_and_retry_starts_over(
    make_stack, api_user, tmp_path
) -> None:
    log = tmp_path / "parts.jsonl"
    bucket = Path(os.environ["LOCAL_STORAGE_ROOT"])
    env = {"UPLOAD_PART_CONCURRENCY": "1", "TEST_STORAGE_LOG": str(log)}
    # The cancel lands while part 3 is in flight (held), with parts 1 and 2 confirmed.
    gate = Gate(tmp_path / "gate", part=3)
    stack = make_stack(env=env, faults=gate.plan)
    content = os.urandom(6 * MIB + 1)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]
    gate.reached()

    async def cancel_while_uploading() -> tuple[dict[str, Any], list[dict[str, Any]], str]:
        async with subscriber(stack.ws_url, api_user.token) as session:
            sub_id = await session.subscribe(upload_id)
            events: list[dict[str, Any]] = []
            while not events or events[-1]["partsUploaded"] < 2:
                message = await session.receive()
                assert message["type"] == "next", message
                events.append(message["payload"]["data"]["uploadProgress"])
            handle = await asyncio.to_thread(lambda: _row(upload_id).storage_upload_id)
            cancelled = await asyncio.to_thread(_mutate, stack, CANCEL, upload_id, api_user.headers)
            gate.open()
            events += await session.events_until_complete(sub_id)
            return cancelled["cancelUpload"], events, handle

    cancelled, events, handle = asyncio.run(cancel_while_uploading())
    assert cancelled["status"] == "CANCELLED"
    assert events[-1]["status"] == "CANCELLED", "subscribers see the cancel, then the stream completes"
    assert [e["sequence"] for e in events] == sorted({e["sequence"] for e in events})

    # The run notices before its next part and aborts the store's open object.
    wait_until(lambda: _row(upload_id).storage_upload_id is None, timeout=15, what="the cancelled run to abort")
    assert handle and not _handle_files(bucket, handle)
    parts_sent = _parts_in(log)
    assert cancelled["partsUploaded"] == 2
    assert parts_sent == [1, 2, 3], f"parts started after the cancel: {parts_sent}"
    row = _row(upload_id)
    assert row.status == UploadStatus.CANCELLED and row.parts.count() == 0
    assert row.staged_at is not None and (Path(os.environ["UPLOAD_STAGING_DIR"]) / upload_id).exists()

    # Retrying a CANCELLED upload is a new transfer from part 1.
    retried = _mutate(stack, RETRY, upload_id, api_user.headers)["retryUpload"]
    assert (retried["status"], retried["bytesUploaded"], retried["partsUploaded"]) == ("QUEUED", 0, 0)
    upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED"}, timeout=30)
    assert _parts_in(log, len(parts_sent)) == [1, 2, 3, 4, 5, 6, 7]
    assert hashlib.sha256(_stored(bucket, upload_id)).digest() == hashlib.sha256(content).digest()
    assert _refused(stack, RETRY, upload_id, api_user.headers) == ["INVALID_STATE"]
    assert _refused(stack, CANCEL, upload_id, api_user.headers) == ["INVALID_STATE"]


def test_a_one_part_file_cancelled_during_its_plain_put_leaves_no_object(make_stack, api_user, tmp_path) -> None:
    """The put of a one-part file writes the object itself: a cancel landing meanwhile removes it."""
    gate = Gate(tmp_path / "gate", part=1)
    stack = make_stack(faults=gate.plan)
    bucket = Path(os.environ["LOCAL_STORAGE_ROOT"])
    upload_id = data_of(upload_file(stack.url, b"one small part", headers=api_user.headers))["uploadFile"]["id"]
    gate.reached()
    assert _mutate(stack, CANCEL, upload_id, api_user.headers)["cancelUpload"]["status"] == "CANCELLED"
    job_id = _row(upload_id).job_id
    gate.open()

    job = Job.fetch(job_id, connection=_queue(stack).connection)
    wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=30, what="the cancelled run to end")
    row = _row(upload_id)
    assert row.status == UploadStatus.CANCELLED
    assert not (bucket / row.storage_key).exists(), "the object the put wrote is removed"
    assert not row.parts.exists() and row.storage_upload_id is None


def test_retry_after_failure_resumes_and_cancel_while_queued_removes_job_and_open_object(
    make_stack, api_user, tmp_path
) -> None:
    failing_log, healthy_log = tmp_path / "failing.jsonl", tmp_path / "healthy.jsonl"
    bucket = Path(os.environ["LOCAL_STORAGE_ROOT"])
    env = {"UPLOAD_PART_CONCURRENCY": "1", "UPLOAD_PART_RETRIES": "2", "TEST_STORAGE_LOG": str(failing_log)}
    stack = make_stack(env=env, faults={"always_fail_part": 4})
    first, second = os.urandom(6 * MIB), os.urandom(5 * MIB)
    resumed = data_of(upload_file(stack.url, first, headers=api_user.headers))["uploadFile"]["id"]
    restarted = data_of(upload_file(stack.url, second, headers=api_user.headers))["uploadFile"]["id"]
    for upload_id in (resumed, restarted):
        failed = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"FAILED", "COMPLETED"})
        assert failed["status"] == "FAILED" and "part 4" in failed["error"]
        assert failed["partsUploaded"] == 3
    stack.workers[0].stop()
    restarted_handle = _row(restarted).storage_upload_id
    assert restarted_handle and _handle_files(bucket, restarted_handle)

    # With no worker running, both wait in the queue; cancelling one takes its job out of it.
    for upload_id in (resumed, restarted):
        assert _mutate(stack, RETRY, upload_id, api_user.headers)["retryUpload"]["status"] == "QUEUED"
    queued_job = _row(restarted).job_id
    assert queued_job in _queue(stack).job_ids
    assert _mutate(stack, CANCEL, restarted, api_user.headers)["cancelUpload"]["status"] == "CANCELLED"
    assert queued_job not in _queue(stack).job_ids
    assert Job.fetch(queued_job, connection=_queue(stack).connection).get_status() == "canceled"
    row = _row(restarted)
    assert row.storage_upload_id is None and not _handle_files(bucket, restarted_handle), "open object aborted"
    assert row.parts.count() == 0 and row.staged_at is not None

    # FAILED -> retry resumes: only the parts the store had not confirmed are sent.
    stack.add_worker(env={"TEST_STORAGE_LOG": str(healthy_log)})
    upload_wait_for_status(stack.url, api_user.headers, resumed, {"COMPLETED"}, timeout=30)
    assert _parts_in(healthy_log) == [4, 5, 6]
    assert _stored(bucket, resumed) == first

    # CANCELLED -> retry starts over: every part again.
    _mutate(stack, RETRY, restarted, api_user.headers)
    upload_wait_for_status(stack.url, api_user.headers, restarted, {"COMPLETED"}, timeout=30)
    assert _parts_in(healthy_log, 3) == [1, 2, 3, 4, 5]
    assert _stored(bucket, restarted) == second
    assert _row(restarted).attempts == 2


# --- delete -----------------------------------------------------------------------------------


def test_delete_cancels_then_removes_object_staged_bytes_parts_and_row(
    make_stack, api_user, make_user, tmp_path
) -> None:
    bucket, staging = Path(os.environ["LOCAL_STORAGE_ROOT"]), Path(os.environ["UPLOAD_STAGING_DIR"])
    # The delete lands while part 3 is in flight (held), with parts 1 and 2 confirmed.
    gate = Gate(tmp_path / "gate", part=3)
    stack = make_stack(env={"UPLOAD_PART_CONCURRENCY": "1"}, faults=gate.plan)
    active = data_of(upload_file(stack.url, os.urandom(8 * MIB), headers=api_user.headers))["uploadFile"]["id"]
    gate.reached()
    ledger_wait(active, 2)
    assert _row(active).parts_uploaded == 2
    handle = _row(active).storage_upload_id
    assert handle and _handle_files(bucket, handle)
    key = _row(active).storage_key

    stranger = make_user()
    assert _refused(stack, DELETE, active, stranger.headers) == ["NOT_FOUND"]
    assert _mutate(stack, DELETE, active, api_user.headers) == {"deleteUpload": True}
    assert error_codes(graphql(stack.url, UPLOAD_QUERY, {"id": active}, api_user.headers)) == ["NOT_FOUND"]
    assert not FileUpload.objects.filter(id=active).exists()
    assert not UploadPart.objects.filter(upload_id=active).exists()
    assert not (staging / active).exists()
    gate.open()
    # The run still going stops at its next part; nothing it wrote is left.
    wait_until(lambda: not _handle_files(bucket, handle), timeout=15, what="the open object to go")
    wait_until(lambda: not _queue(stack).started_job_registry.get_job_ids(), timeout=15, what="the run to end")
    assert not _handle_files(bucket, handle) and not (bucket / key).exists()
    assert _refused(stack, DELETE, active, api_user.headers) == ["NOT_FOUND"]

    done = data_of(upload_file(stack.url, b"finished file", headers=api_user.headers))["uploadFile"]["id"]
    upload_wait_for_status(stack.url, api_user.headers, done, {"COMPLETED"}, timeout=30)
    done_key = _row(done).storage_key
    assert (bucket / done_key).exists()
    assert _mutate(stack, DELETE, done, api_user.headers) == {"deleteUpload": True}
    assert not (bucket / done_key).exists()
    assert error_codes(graphql(stack.url, UPLOAD_QUERY, {"id": done}, api_user.headers)) == ["NOT_FOUND"]


# --- the whole state table --------------------------------------------------------------------


def _row_in(status: str, owner: Any, *, staged: bool = True) -> FileUpload:
    upload_id = uuid.uuid4()
    now = timezone.now()
    row = FileUpload.objects.create(
        id=upload_id,
        owner=owner,
        filename="walk.bin",
        content_type="application/octet-stream",
        size=3,
        sha256=hashlib.sha256(b"abc").hexdigest(),
        status=status,
        part_size=MIB,
        parts_total=1,
        storage_backend="local",
        storage_key=f"uploads/walk/{upload_id}",
        sequence=5,
        claim=uuid.uuid4() if status == "UPLOADING" else None,
        heartbeat_at=now if status == "UPLOADING" else None,
        staged_at=None if status == "COMPLETED" or not staged else now,
    )
    if staged:
        path = Path(os.environ["UPLOAD_STAGING_DIR"]) / str(upload_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"abc")
    return row


def test_every_move_of_the_state_table_is_enforced(make_stack, api_user) -> None:
    stack = make_stack(workers=0)
    outcomes: dict[tuple[str, str], bool] = {}
    made: list[FileUpload] = []
    try:
        for source in STATUSES:
            # What a client may ask: cancel and retry, through the API.
            for move, query, target in (("cancel", CANCEL, "CANCELLED"), ("retry", RETRY, "QUEUED")):
                row = _row_in(source, api_user.user)
                made.append(row)
                response = graphql(stack.url, query, {"id": str(row.id)}, api_user.headers)
                outcomes[(source, f"{move}->{target}")] = not error_codes(response)
                after = _row(str(row.id))
                if error_codes(response):
                    assert error_codes(response) == ["INVALID_STATE"], (source, move, response.json())
                    assert (after.status, after.sequence) == (source, 5), "a refused move changes nothing"
                else:
                    assert (after.status, after.sequence) == (target, 6)
            # Every internal move, through the one conditional update.
            for target in STATUSES:
                row = _row_in(source, api_user.user, staged=False)
                made.append(row)
                try:
                    upload_transition(upload_id=row.id, to=target)
                    outcomes[(source, target)] = True
                except InvalidState:
                    outcomes[(source, target)] = False
                    assert (_row(str(row.id)).status, _row(str(row.id)).sequence) == (source, 5)
        expected = {(s, t): (s, t) in CONTRACT_MOVES for s in STATUSES for t in STATUSES}
        expected |= {(s, "cancel->CANCELLED"): s in ("RECEIVING", "QUEUED", "UPLOADING") for s in STATUSES}
        expected |= {(s, "retry->QUEUED"): s in ("FAILED", "CANCELLED") for s in STATUSES}
        assert outcomes == expected

        # A move fenced by a transfer's claim fails for anyone else's claim.
        uploading = _row_in("UPLOADING", api_user.user, staged=False)
        made.append(uploading)
        with pytest.raises(ClaimLost):
            upload_transition(upload_id=uploading.id, to="COMPLETED", owned_by=uuid.uuid4())

        # Retry needs the staged bytes: gone from disk, or expired by the sweep, it is refused.
        for status in ("FAILED", "CANCELLED"):
            missing = _row_in(status, api_user.user, staged=False)
            FileUpload.objects.filter(id=missing.id).update(staged_at=timezone.now())
            expired = _row_in(status, api_user.user)
            FileUpload.objects.filter(id=expired.id).update(staged_at=None)
            made += [missing, expired]
            for row in (missing, expired):
                assert _refused(stack, RETRY, str(row.id), api_user.headers) == ["INVALID_STATE"]
                assert _row(str(row.id)).status == status
    finally:
        for row in made:
            staging_delete(row.id)
            FileUpload.objects.filter(id=row.id).delete()


# --- the sweep --------------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    """Make `path` (and what a directory holds) look last written `seconds` ago."""
    stamp = timezone.now().timestamp() - seconds
    for each in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.utime(each, (stamp, stamp))


def _sweep_command(stack: Any, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", "sweep_uploads", *args],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_sweep_removes_what_no_upload_needs_and_keeps_the_rest(make_stack, api_user, tmp_path) -> None:
    staging, bucket = tmp_path / "staging", tmp_path / "bucket"
    env = {"UPLOAD_STAGING_DIR": str(staging), "LOCAL_STORAGE_ROOT": str(bucket), "UPLOAD_PART_RETRIES": "1"}
    stack = make_stack(env=env, workers=0)
    two_days = timedelta(days=2)

    # CANCELLED while queued, then kept past the TTL.
    cancelled = data_of(upload_file(stack.url, os.urandom(2 * MIB), headers=api_user.headers))["uploadFile"]["id"]
    queued_job = _row(cancelled).job_id
    _mutate(stack, CANCEL, cancelled, api_user.headers)
    assert queued_job not in _queue(stack).job_ids

    # Two FAILED uploads with open objects (part 1 confirmed): one past the TTL, one within it.
    stack.add_worker(faults={"always_fail_part": 2})
    expired, kept = (
        data_of(upload_file(stack.url, os.urandom(3 * MIB), headers=api_user.headers))["uploadFile"]["id"]
        for _ in range(2)
    )
    for upload_id in (expired, kept):
        upload_wait_for_status(stack.url, api_user.headers, upload_id, {"FAILED"})
    FileUpload.objects.filter(id__in=[cancelled, expired]).update(staged_at=timezone.now() - two_days)
    expired_handle, kept_handle = _row(expired).storage_upload_id, _row(kept).storage_upload_id
    assert _handle_files(bucket, expired_handle) and _handle_files(bucket, kept_handle)
    _age(bucket / INCOMPLETE_DIR / f"{kept_handle}.data", 7200)
    _age(bucket / INCOMPLETE_DIR / f"{kept_handle}.parts", 7200)

    # A COMPLETED upload whose staged bytes remain (its worker died between the two steps).
    completed = data_of(upload_file(stack.url, b"small", headers=api_user.headers))["uploadFile"]["id"]
    upload_wait_for_status(stack.url, api_user.headers, completed, {"COMPLETED"})
    (staging / completed).write_bytes(b"small")

    # Orphans, old and young: staged files of no row, incoming files, the bucket's temporary area.
    old_orphan, young_orphan = staging / str(uuid.uuid4()), staging / str(uuid.uuid4())
    old_incoming, young_incoming = staging / INCOMING / "old.part", staging / INCOMING / "young.part"
    area = bucket / INCOMPLETE_DIR
    old_handle, young_handle = uuid.uuid4().hex, uuid.uuid4().hex
    for handle in (old_handle, young_handle):
        (area / f"{handle}.parts").mkdir()
        (area / f"{handle}.parts" / "1.json").write_text("{}")
        (area / f"{handle}.data").write_bytes(b"x" * 100)
    old_put = area / f"{uuid.uuid4().hex}.put"
    for path in (old_orphan, young_orphan, old_incoming, young_incoming, old_put):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"orphan")
    for path in (old_orphan, old_incoming, old_put, area / f"{old_handle}.data", area / f"{old_handle}.parts"):
        _age(path, 7200)

    removed = [
        str(staging / cancelled),
        str(staging / expired),
        str(staging / completed),
        str(old_orphan),
        str(old_incoming),
        expired_handle,
        old_handle,
        old_put.name,
    ]
    untouched = [str(staging / kept), str(young_orphan), str(young_incoming), kept_handle, young_handle]

    dry = _sweep_command(stack, "--dry-run")
    listed = [line.split()[3] for line in dry.splitlines() if line.startswith("would remove ")]
    assert sorted(listed) == sorted(removed), dry
    assert (staging / cancelled).exists() and old_orphan.exists() and _handle_files(bucket, old_handle)
    assert _row(expired).storage_upload_id == expired_handle, "a dry run changes nothing"

    # The cron that runs the reaper runs the sweep too (once at start, then every interval).
    cron = _spawn([sys.executable, "manage.py", "rqcron", "backend.uploads.cron"], stack.env, stack.root / "cron.log")
    try:
        wait_until(lambda: not (staging / cancelled).exists() and not old_orphan.exists(), timeout=30, what="a sweep")
        wait_until(lambda: not _handle_files(bucket, old_handle), timeout=10, what="the sweep to finish")
    finally:
        _stop(cron)
    assert not any(Path(p).exists() for p in removed if p.startswith(str(staging)))
    assert not _handle_files(bucket, expired_handle) and not old_put.exists()
    assert all(Path(p).exists() for p in untouched if p.startswith(str(staging)))
    assert _handle_files(bucket, kept_handle) and _handle_files(bucket, young_handle)
    row = _row(expired)
    assert row.staged_at is None and row.storage_upload_id is None and row.parts.count() == 0
    assert (bucket / _row(completed).storage_key).read_bytes() == b"small"

    # Expired bytes cannot be retried; the ones within the TTL still can.
    for upload_id in (cancelled, expired):
        assert _refused(stack, RETRY, upload_id, api_user.headers) == ["INVALID_STATE"]
    assert _row(kept).staged_at is not None and _row(kept).storage_upload_id == kept_handle
    assert _sweep_command(stack).strip().splitlines()[-1] == "0 items, 0 bytes freed"


# --- a job lost between the queue and its run -------------------------------------------------


def test_reaper_queues_again_an_upload_whose_job_a_dead_worker_took(make_stack, api_user) -> None:
    stack = make_stack(env={"UPLOAD_STALE_AFTER_SECONDS": "1"}, workers=0)
    content = os.urandom(MIB + 7)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]
    queue = _queue(stack)
    # A worker takes the job off the queue the way RQ does, then dies before its run starts.
    taken, _ = Queue.dequeue_any([queue], timeout=None, connection=queue.connection)
    assert taken.id == _row(upload_id).job_id and not queue.job_ids
    wait_until(
        lambda: (timezone.now() - _row(upload_id).updated_at).total_seconds() > 1.5,
        timeout=10,
        what="the queued upload to be older than UPLOAD_STALE_AFTER_SECONDS",
    )
    # The reaper's first look finds the job in RQ's intermediate list: in transit, so left alone ...
    queue.enqueue("backend.uploads.jobs.uploads_reap")
    stack.add_worker()
    in_transit = IntermediateQueue(queue.key, queue.connection)
    first_seen = wait_until(lambda: in_transit.get_first_seen(taken.id), timeout=30, what="the reaper's first look")
    assert _row(upload_id).job_id == taken.id
    # ... until it has stayed there past the grace: its worker died taking it.
    wait_until(
        lambda: (timezone.now() - first_seen).total_seconds() > IN_TRANSIT_GRACE_SECONDS,
        timeout=30,
        what="the job to be in transit longer than the grace",
    )
    queue.enqueue("backend.uploads.jobs.uploads_reap")
    upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED"}, timeout=30)
    row = _row(upload_id)
    assert row.attempts == 1 and row.job_id != taken.id
    assert _stored(Path(os.environ["LOCAL_STORAGE_ROOT"]), upload_id) == content
