"""The S3 backend against a real S3 server: moto in server mode, in its own process, over HTTP.

The tests and the worker processes reach the same moto server. Faults are injected on the wire in
the worker through botocore event hooks on its real S3 client (tests/support/worker.py, the S3
block); every UploadPart request the worker sends is logged there, so the tests count requests.
Parts are a real 5 MiB (moto enforces the minimum at Complete); files stay small.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from botocore.awsrequest import AWSResponse
from django.core.management import call_command
from django.test import override_settings

from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.staging import staging_path
from backend.uploads.storage import StorageError
from backend.uploads.storage.s3 import S3Storage, content_disposition, multipart_etag
from backend.uploads.storage.s3_bucket import LIFECYCLE_RULE_ID
from tests.support.client import UPLOAD_FIELDS, data_of, graphql, subscriber, upload_file
from tests.support.moto import PART, Moto, moto_start, s3_env
from tests.support.processes import wait_until
from tests.support.uploads import Gate, ledger_wait

MIB = 1024 * 1024
CANCEL = f"mutation($id: ID!) {{ cancelUpload(id: $id) {{ {UPLOAD_FIELDS} }} }}"
RETRY = f"mutation($id: ID!) {{ retryUpload(id: $id) {{ {UPLOAD_FIELDS} }} }}"


@pytest.fixture(scope="module")
def moto(session_root: Path) -> Iterator[Moto]:
    server = moto_start(session_root, "moto")
    yield server
    server.stop()


@pytest.fixture
def bucket(moto: Moto) -> str:
    name = f"uploads-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    return name


# --- helpers ----------------------------------------------------------------------------------


def _row(upload_id: str) -> FileUpload:
    return FileUpload.objects.get(id=upload_id)


def _wait_status(upload_id: str, *statuses: str, timeout: float = 60) -> FileUpload:
    def reached() -> FileUpload | None:
        row = _row(upload_id)
        return row if row.status in statuses else None

    return wait_until(reached, timeout=timeout, what=f"upload {upload_id} to reach {statuses}")


def _faulty_env(moto: Any, bucket: str, log: Path, faults: dict[str, Any], **extra: str) -> dict[str, str]:
    """`s3_env` with the store's requests going through the fault plan `faults`, each logged to `log`."""
    return s3_env(moto, bucket, TEST_S3_FAULTS=json.dumps(faults), TEST_S3_LOG=str(log), **extra)


def _parts_by_process(log: Path) -> dict[int, list[int]]:
    """The part numbers each process sent, in the order it sent them."""
    runs: dict[int, list[int]] = {}
    for request in _requests(log):
        runs.setdefault(request["pid"], []).append(request["part"])
    return runs


def _requests(log: Path) -> list[dict[str, Any]]:
    """The UploadPart requests the worker logged, in the order they ended."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _operations(log: Path) -> list[dict[str, Any]]:
    """Every answered S3 request the worker logged (TEST_S3_OPS_LOG), in the order the answers came."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _expected_etag(content: bytes) -> str:
    parts = [content[i : i + PART] for i in range(0, len(content), PART)]
    return multipart_etag(part_etags=[hashlib.md5(p).hexdigest() for p in parts])


def _assert_object_is(moto: Moto, bucket: str, upload_id: str, content: bytes) -> dict[str, Any]:
    """The stored object is `content`, assembled from exactly its parts, each once."""
    row = _row(upload_id)
    head = moto.client().head_object(Bucket=bucket, Key=row.storage_key)
    assert head["ContentLength"] == len(content)
    assert head["ETag"].strip('"') == _expected_etag(content)
    body = moto.client().get_object(Bucket=bucket, Key=row.storage_key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(content).hexdigest()
    return head


def _open_uploads(moto: Moto, bucket: str) -> list[dict[str, Any]]:
    return moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def _max_overlap(requests: list[dict[str, Any]]) -> int:
    """The most UploadPart requests that were in flight at the same moment."""
    edges = sorted([(r["start"], 1) for r in requests] + [(r["end"], -1) for r in requests])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


# --- end to end through the service -----------------------------------------------------------


def test_multipart_upload_goes_up_in_parallel_and_downloads_intact(make_stack, api_user, moto, bucket, tmp_path):
    log = tmp_path / "s3.jsonl"
    stack = make_stack(env=s3_env(moto, bucket, UPLOAD_PART_CONCURRENCY="4", TEST_S3_LOG=str(log)))
    content = os.urandom(3 * PART + MIB + 123)
    filename = "résumé final 100%.bin"
    upload = data_of(upload_file(stack.url, content, filename=filename, headers=api_user.headers))["uploadFile"]
    assert (upload["storageBackend"], upload["partsTotal"]) == ("s3", 4)

    _wait_status(upload["id"], UploadStatus.COMPLETED, UploadStatus.FAILED)
    done = data_of(
        graphql(
            stack.url,
            "query($id: ID!) { upload(id: $id) { status error downloadUrl filename } }",
            {"id": upload["id"]},
            api_user.headers,
        )
    )["upload"]
    assert done["status"] == "COMPLETED", done["error"]

    # downloadUrl: presigned on the public endpoint, serving exactly the bytes, named safely.
    assert done["downloadUrl"].startswith(f"{moto.url}/{bucket}/")
    response = httpx.get(done["downloadUrl"], timeout=30)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == upload["sha256"]
    assert response.headers["content-disposition"] == content_disposition(filename=done["filename"])
    assert done["filename"] == filename
    assert response.headers["content-disposition"].endswith("filename*=UTF-8''r%C3%A9sum%C3%A9%20final%20100%25.bin")

    head = _assert_object_is(moto, bucket, upload["id"], content)
    assert head["Metadata"]["sha256"] == upload["sha256"]
    assert unquote(head["Metadata"]["filename"]) == done["filename"]
    assert _open_uploads(moto, bucket) == []

    requests = _requests(log)
    assert sorted(r["part"] for r in requests) == [1, 2, 3, 4]
    assert all(r["status"] == 200 for r in requests)
    assert 2 <= _max_overlap(requests) <= 4, "parts should go up side by side, at most 4 at a time"


def test_failing_upload_part_requests_are_retried_and_each_part_is_stored_once(
    make_stack, api_user, moto, bucket, tmp_path
):
    log = tmp_path / "s3.jsonl"
    faults = {"every": 5, "kinds": ["500", "reset", "503", "lost"]}
    stack = make_stack(env=_faulty_env(moto, bucket, log, faults, UPLOAD_PART_CONCURRENCY="4"))
    content = os.urandom(9 * PART + 77)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]

    row = _wait_status(upload_id, UploadStatus.COMPLETED, UploadStatus.FAILED)
    assert row.status == UploadStatus.COMPLETED, row.error
    requests = sorted(_requests(log), key=lambda r: r["request"])
    numbers = [r["request"] for r in requests]
    assert numbers == list(range(1, len(requests) + 1))
    faulted = [r for r in requests if r["fault"]]
    assert [r["request"] for r in faulted] == [n for n in numbers if (n - 1) % 5 == 0], "one request in five fails"
    assert {"500", "503", "reset"} <= {r["fault"] for r in faulted}
    # Each part confirmed exactly once, though some were sent twice; the job itself ran once.
    confirmed = Counter(r["part"] for r in requests if r["status"] == 200 and r["fault"] is None)
    assert confirmed == Counter(range(1, 11))
    assert (row.attempts, row.parts_uploaded, row.parts.count()) == (1, 10, 10)
    _assert_object_is(moto, bucket, upload_id, content)


def test_part_corrupted_after_signing_is_caught_at_assembly_and_the_object_is_started_over(
    make_stack, api_user, moto, bucket, tmp_path
):
    # The default settings: no MD5 for a part whose answer carries its checksum, and moto echoes
    # the checksum sent without verifying it, so it keeps the corrupted part. The SHA-256 it
    # computes for the assembled object is not the one the parts sent make: that object is
    # removed, never COMPLETED, and the run starts the object over in a new multipart upload.
    log, operations = tmp_path / "s3.jsonl", tmp_path / "operations.jsonl"
    faults = {"requests": {"2": "corrupt"}}
    stack = make_stack(env=s3_env(moto, bucket, UPLOAD_PART_CONCURRENCY="1"), workers=0)
    content = os.urandom(3 * PART + 5)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]

    async def follow() -> list[dict[str, Any]]:
        async with subscriber(stack.ws_url, api_user.token) as session:
            sub = await session.subscribe(upload_id)
            snapshot = await session.receive()
            assert snapshot["payload"]["data"]["uploadProgress"]["status"] == "QUEUED", snapshot
            stack.add_worker(
                env={"TEST_S3_FAULTS": json.dumps(faults), "TEST_S3_LOG": str(log), "TEST_S3_OPS_LOG": str(operations)}
            )
            return await session.events_until_complete(sub)

    events = asyncio.run(asyncio.wait_for(follow(), timeout=90))
    row = _row(upload_id)
    assert row.status == UploadStatus.COMPLETED, row.error
    assert (row.attempts, row.parts_uploaded, row.parts.count(), row.error) == (1, 4, 4, None)
    assert [(r["part"], r["fault"], r["status"]) for r in _requests(log)] == [
        (1, None, 200),
        (2, "corrupt", 200),  # the store took the corrupted bytes (moto checks no digest)
        (3, None, 200),
        (4, None, 200),
        (1, None, 200),  # the object started over: every part again, in a new multipart upload
        (2, None, 200),
        (3, None, 200),
        (4, None, 200),
    ]
    assembled = [
        ("CompleteMultipartUpload", 200),
        ("HeadObject", 200),  # its checksum is not that of the parts sent...
    ]
    assert [(o["op"], o["status"]) for o in _operations(operations)] == [
        ("CreateMultipartUpload", 200),
        *[("UploadPart", 200)] * 4,
        *assembled,
        ("DeleteObject", 204),  # ...so the wrong object goes before anyone can see it COMPLETED
        ("AbortMultipartUpload", 404),  # best effort: the completed upload is gone
        ("ListParts", 404),
        ("CreateMultipartUpload", 200),
        *[("UploadPart", 200)] * 4,
        *assembled,
    ]
    _assert_object_is(moto, bucket, upload_id, content)
    assert _open_uploads(moto, bucket) == []

    # What a subscriber saw: the first transfer, then a new one from 0 (QUEUED, UPLOADING again, as
    # a transfer picked up again reports), then COMPLETED once, after the new transfer's last part.
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(set(sequences)), "sequence only grows"
    statuses = [e["status"] for e in events]
    assert [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]] == [
        "UPLOADING",
        "QUEUED",
        "UPLOADING",
        "COMPLETED",
    ], events
    restart = statuses.index("QUEUED")
    assert (events[restart]["partsUploaded"], events[restart]["bytesUploaded"]) == (0, 0)
    for transfer in (events[:restart], events[restart:]):
        parts = [e["partsUploaded"] for e in transfer]
        assert parts == sorted(parts), "within one transfer progress never goes back"
    assert (events[-1]["partsUploaded"], events[-1]["bytesUploaded"]) == (4, len(content))
    assert statuses.count("COMPLETED") == 1


def test_a_multipart_upload_aborted_behind_the_services_back_is_started_over_on_retry(
    make_stack, api_user, moto, bucket, tmp_path
):
    operations = tmp_path / "operations.jsonl"
    stack = make_stack(env=s3_env(moto, bucket, UPLOAD_PART_CONCURRENCY="1"), workers=0)
    refusing = stack.add_worker(env={"TEST_S3_FAULTS": json.dumps({"status": 403, "parts": [3]})})
    content = os.urandom(4 * PART + 9)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]
    row = _wait_status(upload_id, UploadStatus.FAILED, UploadStatus.COMPLETED)
    assert row.status == UploadStatus.FAILED and row.parts_uploaded == 2
    spent = row.storage_upload_id
    # The bucket's lifecycle rule, an operator or another tool aborts the upload meanwhile.
    moto.client().abort_multipart_upload(Bucket=bucket, Key=row.storage_key, UploadId=spent)
    refusing.stop()

    stack.add_worker(env={"TEST_S3_OPS_LOG": str(operations)})
    assert data_of(graphql(stack.url, RETRY, {"id": upload_id}, api_user.headers))["retryUpload"]["status"] == "QUEUED"
    row = _wait_status(upload_id, UploadStatus.COMPLETED, UploadStatus.FAILED)
    assert row.status == UploadStatus.COMPLETED, row.error
    assert [(o["op"], o["status"], o.get("code"), o.get("part")) for o in _operations(operations)] == [
        ("ListParts", 404, "NoSuchUpload", None),  # resuming: the multipart upload is gone
        ("AbortMultipartUpload", 404, "NoSuchUpload", None),  # best effort, in case the store was wrong
        ("ListParts", 404, "NoSuchUpload", None),
        ("CreateMultipartUpload", 200, None, None),
        *[("UploadPart", 200, None, n) for n in range(1, 6)],  # every part, the two confirmed before too
        ("CompleteMultipartUpload", 200, None, None),
        ("HeadObject", 200, None, None),
    ]
    assert (row.attempts, row.parts_uploaded, row.parts.count()) == (2, 5, 5)
    _assert_object_is(moto, bucket, upload_id, content)
    assert _open_uploads(moto, bucket) == []


def test_a_multipart_upload_aborted_while_parts_go_up_is_started_over(make_stack, api_user, moto, bucket, tmp_path):
    operations = tmp_path / "operations.jsonl"
    # The worker is held before part 3 (parts 1-2 confirmed) while the upload is aborted. S3 then
    # answers part 3 NoSuchUpload; moto answers 500 (a KeyError of its own), so that answer is S3's.
    gate = Gate(tmp_path / "gate", part=3)
    faults = {"requests": {"3": "404"}}
    env = _faulty_env(moto, bucket, tmp_path / "s3.jsonl", faults, UPLOAD_PART_CONCURRENCY="1")
    stack = make_stack(env={**env, "TEST_S3_OPS_LOG": str(operations)}, faults=gate.plan)
    content = os.urandom(3 * PART + 1)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]
    gate.reached()
    ledger_wait(upload_id, 2)
    row = _row(upload_id)
    moto.client().abort_multipart_upload(Bucket=bucket, Key=row.storage_key, UploadId=row.storage_upload_id)
    gate.open()

    row = _wait_status(upload_id, UploadStatus.COMPLETED, UploadStatus.FAILED)
    assert row.status == UploadStatus.COMPLETED, row.error
    assert [(o["op"], o["status"], o.get("part")) for o in _operations(operations)] == [
        ("CreateMultipartUpload", 200, None),
        ("UploadPart", 200, 1),
        ("UploadPart", 200, 2),
        ("UploadPart", 404, 3),  # NoSuchUpload: spent, so not retried in that upload
        ("AbortMultipartUpload", 404, None),  # best effort before starting over: gone already
        ("ListParts", 404, None),
        ("CreateMultipartUpload", 200, None),
        *[("UploadPart", 200, n) for n in range(1, 5)],
        ("CompleteMultipartUpload", 200, None),
        ("HeadObject", 200, None),
    ]
    assert (row.attempts, row.parts_uploaded, row.parts.count()) == (1, 4, 4)
    _assert_object_is(moto, bucket, upload_id, content)
    assert _open_uploads(moto, bucket) == []


def test_part_corrupted_after_signing_is_detected_and_sent_again(make_stack, api_user, moto, bucket, tmp_path):
    log = tmp_path / "s3.jsonl"
    # One part at a time, so request 2 is part 2's first try and request 4 is part 3's.
    faults = {"requests": {"2": "corrupt", "4": "lost"}}
    # S3_VERIFY_PART_ETAG=true: each part's MD5 is compared with the ETag answered, so the part is sent again.
    env = _faulty_env(moto, bucket, log, faults, UPLOAD_PART_CONCURRENCY="1", S3_VERIFY_PART_ETAG="true")
    stack = make_stack(env=env)
    content = os.urandom(3 * PART + 5)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]

    row = _wait_status(upload_id, UploadStatus.COMPLETED, UploadStatus.FAILED)
    assert row.status == UploadStatus.COMPLETED, row.error
    requests = sorted(_requests(log), key=lambda r: r["request"])
    assert [(r["part"], r["fault"], r["status"]) for r in requests] == [
        (1, None, 200),
        (2, "corrupt", 200),  # the store took the corrupted bytes (moto checks no digest)...
        (2, None, 200),  # ...the ETag did not match their MD5, so the part went again
        (3, "lost", None),  # stored, but the answer never came: sent again, overwriting itself
        (3, None, 200),
        (4, None, 200),
    ]
    _assert_object_is(moto, bucket, upload_id, content)


def test_refused_part_fails_at_once_and_retry_resumes_with_the_missing_parts(
    make_stack, api_user, moto, bucket, tmp_path
):
    first_log, second_log = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    stack = make_stack(env=s3_env(moto, bucket, UPLOAD_PART_CONCURRENCY="1"), workers=0)
    refusing = stack.add_worker(
        env={"TEST_S3_FAULTS": json.dumps({"status": 403, "parts": [3]}), "TEST_S3_LOG": str(first_log)}
    )
    content = os.urandom(4 * PART + 9)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]

    row = _wait_status(upload_id, UploadStatus.FAILED, UploadStatus.COMPLETED)
    assert row.status == UploadStatus.FAILED
    assert "part 3" in row.error and "403 AccessDenied" in row.error and "credentials" in row.error, row.error
    assert [(r["part"], r["status"]) for r in _requests(first_log)] == [(1, 200), (2, 200), (3, 403)], "no retry"
    # A FAILED upload keeps its multipart upload, so a retry can resume it.
    assert [u["UploadId"] for u in _open_uploads(moto, bucket)] == [row.storage_upload_id]

    refusing.stop()
    stack.add_worker(env={"TEST_S3_LOG": str(second_log)})
    assert data_of(graphql(stack.url, RETRY, {"id": upload_id}, api_user.headers))["retryUpload"]["status"] == "QUEUED"
    row = _wait_status(upload_id, UploadStatus.COMPLETED, UploadStatus.FAILED)
    assert row.status == UploadStatus.COMPLETED, row.error
    assert sorted(r["part"] for r in _requests(second_log)) == [3, 4, 5]
    _assert_object_is(moto, bucket, upload_id, content)


def test_wrong_credentials_fail_fast_with_a_clear_error(make_stack, api_user, session_root, tmp_path):
    # This moto checks credentials after its first request (the bucket's creation).
    strict = moto_start(session_root, f"moto-auth-{uuid.uuid4().hex[:6]}", {"INITIAL_NO_AUTH_ACTION_COUNT": "1"})
    try:
        name = f"uploads-{uuid.uuid4().hex[:12]}"
        strict.client().create_bucket(Bucket=name)
        log = tmp_path / "s3.jsonl"
        stack = make_stack(env={**s3_env(strict, name, TEST_S3_LOG=str(log)), "AWS_SECRET_ACCESS_KEY": "wrong"})
        upload_id = data_of(upload_file(stack.url, os.urandom(PART + 1), headers=api_user.headers))["uploadFile"]["id"]

        row = _wait_status(upload_id, UploadStatus.FAILED, UploadStatus.COMPLETED)
        assert row.status == UploadStatus.FAILED
        assert "CreateMultipartUpload" in row.error and "403 InvalidAccessKeyId" in row.error, row.error
        assert "check the credentials" in row.error
        assert row.attempts == 1 and _requests(log) == []
        ready = httpx.get(f"{stack.url}/readyz", timeout=30)
        assert ready.status_code == 503 and "403" in ready.json()["storage"]
    finally:
        strict.stop()


def test_crashed_transfer_resumes_from_what_the_store_lists(make_stack, api_user, moto, bucket, tmp_path):
    log = tmp_path / "requests.jsonl"
    stack = make_stack(env=s3_env(moto, bucket, UPLOAD_PART_CONCURRENCY="1"), workers=0)
    # A work horse dies once the store has confirmed 3 parts, before the ledger records the 3rd. Its
    # worker gives the upload back; the next run lists the parts and sends only the two missing.
    stack.add_worker(env={"TEST_S3_FAULTS": json.dumps({"crash_after": 3}), "TEST_S3_LOG": str(log)})
    content = os.urandom(4 * PART + 3)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]

    row = _wait_status(upload_id, UploadStatus.COMPLETED, UploadStatus.FAILED)
    assert row.status == UploadStatus.COMPLETED, row.error
    runs = _parts_by_process(log)
    assert list(runs.values()) == [[1, 2, 3], [4, 5]], f"the second run sent a part the store had: {runs}"
    assert (row.attempts, row.parts_uploaded, row.parts.count()) == (2, 5, 5)
    _assert_object_is(moto, bucket, upload_id, content)


def test_a_part_only_the_store_lists_is_sent_again_unless_it_holds_the_staged_bytes(
    make_stack, api_user, moto, bucket, tmp_path
):
    # The default settings (no MD5 per part). Part 3 is corrupted on the wire, the store keeps it
    # (moto verifies nothing), and the work horse dies before the ledger hears of it. Its listing
    # then carries no checksum (moto lists none) and an ETag that is not the staged bytes' MD5, so
    # the resumed run sends part 3 again instead of recording it: the object is the file sent.
    log, mark = tmp_path / "requests.jsonl", tmp_path / "crashed"
    faults = {"requests": {"3": "corrupt"}, "crash_after": 3, "crash_mark": str(mark)}
    stack = make_stack(env=_faulty_env(moto, bucket, log, faults, UPLOAD_PART_CONCURRENCY="1"))
    content = os.urandom(4 * PART + 3)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]

    row = _wait_status(upload_id, UploadStatus.COMPLETED, UploadStatus.FAILED)
    assert row.status == UploadStatus.COMPLETED, row.error
    runs: dict[int, list[tuple[int, str | None]]] = {}
    for request in _requests(log):
        runs.setdefault(request["pid"], []).append((request["part"], request["fault"]))
    assert list(runs.values()) == [[(1, None), (2, None), (3, "corrupt")], [(3, None), (4, None), (5, None)]], runs
    assert (row.attempts, row.parts_uploaded, row.parts.count()) == (2, 5, 5)
    _assert_object_is(moto, bucket, upload_id, content)


def test_a_part_only_the_store_lists_is_recorded_with_its_checksum_so_the_object_check_covers_it(
    make_stack, api_user, moto, bucket, tmp_path
):
    # Part 2 is corrupted on the wire and recorded (moto echoes the checksum sent); the work horse
    # dies after the store took part 3, before the ledger heard of it. Part 3's listing holds the
    # staged bytes (its ETag is their MD5), so it is recorded, with the checksum of those bytes:
    # the object's checksum is then checked over every part, catches part 2, and the object is
    # started over. Recorded with the listing's empty checksum, nothing would check the object.
    log, operations, mark = tmp_path / "requests.jsonl", tmp_path / "operations.jsonl", tmp_path / "crashed"
    faults = {"requests": {"2": "corrupt"}, "crash_after": 3, "crash_mark": str(mark)}
    env = _faulty_env(moto, bucket, log, faults, UPLOAD_PART_CONCURRENCY="1", TEST_S3_OPS_LOG=str(operations))
    stack = make_stack(env=env)
    content = os.urandom(4 * PART + 3)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]

    row = _wait_status(upload_id, UploadStatus.COMPLETED, UploadStatus.FAILED)
    assert row.status == UploadStatus.COMPLETED, row.error
    runs = _parts_by_process(log)
    assert list(runs.values()) == [[1, 2, 3], [4, 5, 1, 2, 3, 4, 5]], runs
    resumed = [(o["op"], o["status"]) for o in _operations(operations) if o["pid"] == list(runs)[1]]
    assert resumed == [
        ("ListParts", 200),  # parts 1-3: part 3 is recorded from its listing
        ("UploadPart", 200),
        ("UploadPart", 200),
        ("CompleteMultipartUpload", 200),
        ("HeadObject", 200),  # the object's checksum is not that of the parts sent...
        ("DeleteObject", 204),
        ("AbortMultipartUpload", 404),  # the spent upload is aborted first, best effort: it is gone
        ("ListParts", 404),
        ("CreateMultipartUpload", 200),  # ...so the object starts over
        *[("UploadPart", 200)] * 5,
        ("CompleteMultipartUpload", 200),
        ("HeadObject", 200),
    ], resumed
    assert (row.attempts, row.parts_uploaded, row.parts.count()) == (2, 5, 5)
    _assert_object_is(moto, bucket, upload_id, content)
    assert _open_uploads(moto, bucket) == []


def test_cancel_aborts_the_multipart_upload(make_stack, api_user, moto, bucket, tmp_path):
    # The worker is held at part 2 (part 1 confirmed) until the cancel is in, well before Complete.
    gate = Gate(tmp_path / "gate", part=2)
    stack = make_stack(env=s3_env(moto, bucket, UPLOAD_PART_CONCURRENCY="1"), faults=gate.plan)
    content = os.urandom(2 * PART + MIB)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]
    gate.reached()
    ledger_wait(upload_id, 1)
    assert _row(upload_id).parts_uploaded == 1
    assert len(_open_uploads(moto, bucket)) == 1

    cancelled = data_of(graphql(stack.url, CANCEL, {"id": upload_id}, api_user.headers))["cancelUpload"]
    gate.open()
    assert cancelled["status"] == "CANCELLED", cancelled
    wait_until(lambda: _row(upload_id).storage_upload_id is None, timeout=30, what="the abort")
    assert _open_uploads(moto, bucket) == []
    assert moto.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0, moto.client().list_objects_v2(Bucket=bucket)


def test_a_cancel_landing_while_the_object_is_completed_leaves_no_object(make_stack, api_user, moto, bucket, tmp_path):
    # The worker is held right after the store's complete: the object is whole in the bucket, the
    # ledger not told yet. The cancel wins the row, so the run must remove the object it finished.
    gate = tmp_path / "gate"
    gate.touch()
    stack = make_stack(env=s3_env(moto, bucket), faults={"hold_after_complete": str(gate)})
    content = os.urandom(PART + MIB)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]
    wait_until(lambda: Path(f"{gate}.reached").exists(), timeout=60, what="the worker past complete")
    assert moto.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 1

    cancelled = data_of(graphql(stack.url, CANCEL, {"id": upload_id}, api_user.headers))["cancelUpload"]
    assert cancelled["status"] == "CANCELLED", cancelled
    gate.unlink()
    wait_until(
        lambda: moto.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0, timeout=30, what="the object removed"
    )
    assert _open_uploads(moto, bucket) == []
    assert _row(upload_id).status == UploadStatus.CANCELLED


# --- the backend directly, against the same server --------------------------------------------


@pytest.fixture
def storage(moto: Moto, bucket: str) -> S3Storage:
    return S3Storage(client=moto.client(), bucket=bucket)


def _count_requests(client: Any, operation: str) -> Callable[[], int]:
    sent: list[str] = []
    client.meta.events.register(f"before-send.s3.{operation}", lambda request, **kwargs: sent.append(request.url))
    return lambda: len(sent)


def _without_checksums(client: Any, *operations: str) -> None:
    """Answers of `operations` on `client` as a store that knows no checksums gives them: none."""

    def strip(parsed: dict[str, Any], **kwargs: Any) -> None:
        parsed.pop("ChecksumSHA256", None)
        parsed.pop("ChecksumType", None)

    for operation in operations:
        client.meta.events.register(f"after-call.s3.{operation}", strip)


def _two_parts(storage: S3Storage, key: str) -> tuple[str, list[Any]]:
    handle = storage.start(key=key, content_type="application/octet-stream", metadata={})
    data = [os.urandom(PART), b"tail"]
    parts = [
        storage.put_part(key=key, handle=handle, part_number=n, offset=(n - 1) * PART, data=data[n - 1]) for n in (1, 2)
    ]
    return handle, parts


@pytest.mark.parametrize("verify_part_etags", [False, True])
def test_an_object_whose_checksum_the_store_does_not_report_is_refused_unless_its_parts_were_checked(
    moto, bucket, verify_part_etags
):
    # A store that answers each part with its checksum (moto echoes the one sent, verifying
    # nothing) but reports none for the object: without the parts' MD5 nothing checked the bytes.
    client = moto.client()
    _without_checksums(client, "HeadObject")
    storage = S3Storage(client=client, bucket=bucket, verify_part_etags=verify_part_etags)
    handle, parts = _two_parts(storage, "unreported")
    size = PART + 4
    if verify_part_etags:
        storage.complete(key="unreported", handle=handle, parts=parts, size=size)
        assert client.head_object(Bucket=bucket, Key="unreported")["ContentLength"] == size
        return
    with pytest.raises(StorageError, match=r"cannot be verified.*reports none.*S3_VERIFY_PART_ETAG=true") as refused:
        storage.complete(key="unreported", handle=handle, parts=parts, size=size)
    # A configuration problem: a new object would meet it too, so not spent (never sent twice).
    assert not refused.value.retryable and not refused.value.spent
    assert "unreported" not in [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_an_object_with_a_part_of_no_checksum_is_refused_unless_that_part_was_checked(moto, bucket):
    # A receipt without a checksum (a part known from moto's listing, which carries none): the
    # object's composite checksum cannot be built. The default settings checked no part by its
    # MD5, so the object is not trusted; a part the listing shows to hold the staged bytes is.
    client = moto.client()
    storage = S3Storage(client=client, bucket=bucket)
    key = "unlisted-checksum"
    handle = storage.start(key=key, content_type="application/octet-stream", metadata={})
    data = [os.urandom(PART), b"tail"]
    sent = storage.put_part(key=key, handle=handle, part_number=1, offset=0, data=data[0])
    storage.put_part(key=key, handle=handle, part_number=2, offset=PART, data=data[1])
    listed = storage.list_parts(key=key, handle=handle)[1]
    assert listed.checksum == "", "moto lists no part checksum"
    with pytest.raises(StorageError, match=r"cannot be verified \(some of its parts have no checksum") as refused:
        storage.complete(key=key, handle=handle, parts=[sent, listed], size=PART + 4)
    assert not refused.value.spent
    assert key not in [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]

    handle = storage.start(key=key, content_type="application/octet-stream", metadata={})
    sent = storage.put_part(key=key, handle=handle, part_number=1, offset=0, data=data[0])
    storage.put_part(key=key, handle=handle, part_number=2, offset=PART, data=data[1])
    listed = storage.list_parts(key=key, handle=handle)[1]
    assert storage.listed_part_verified(handle=handle, receipt=listed, data=b"tall") is None, "other bytes"
    verified = storage.listed_part_verified(handle=handle, receipt=listed, data=data[1])
    assert verified is not None and verified.checksum.startswith("SHA256:")
    storage.complete(key=key, handle=handle, parts=[sent, verified], size=PART + 4)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data[0] + data[1]


def test_a_store_that_knows_no_checksums_gets_each_part_checked_by_its_md5(moto, bucket):
    # Its answers carry no checksum, for the parts nor for the object: each part's MD5 is then
    # computed after its answer and compared with its ETag (nothing was sent as Content-MD5), so a
    # corrupted part is refused at once, and the object of checked parts is trusted.
    client = moto.client()
    _without_checksums(client, "UploadPart", "HeadObject")
    sent: list[dict[str, Any]] = []
    client.meta.events.register(
        "before-send.s3.UploadPart", lambda request, **kwargs: sent.append(dict(request.headers))
    )
    storage = S3Storage(client=client, bucket=bucket)
    assert not storage.part_md5
    handle, parts = _two_parts(storage, "unchecksummed")
    assert [("Content-MD5" in headers, "x-amz-checksum-sha256" in headers) for headers in sent] == [(False, True)] * 2
    storage.complete(key="unchecksummed", handle=handle, parts=parts, size=PART + 4)
    assert client.head_object(Bucket=bucket, Key="unchecksummed")["ContentLength"] == PART + 4

    def corrupt(request: Any, **kwargs: Any) -> None:
        body = bytearray(request.body.read() if hasattr(request.body, "read") else request.body)
        body[0] ^= 0xFF
        request.body = bytes(body)

    client.meta.events.register("before-send.s3.UploadPart", corrupt)
    handle = storage.start(key="corrupted", content_type="application/octet-stream", metadata={})
    with pytest.raises(StorageError, match="is not the MD5 of the bytes sent") as refused:
        storage.put_part(key="corrupted", handle=handle, part_number=1, offset=0, data=os.urandom(1000))
    assert refused.value.retryable and not refused.value.spent, "sent again in the same upload"
    storage.abort(key="corrupted", handle=handle)


def test_on_a_store_that_knows_no_checksums_parts_another_process_sent_make_the_object_start_over(moto, bucket):
    # The MD5 checks of `put_part` live in the process that made them (RQ forks one work horse per
    # job): an object completed by another process (a resumed run, the transfer after pipelined
    # rounds) cannot be trusted, but is no configuration problem either: spent, so the run starts
    # it over and checks every part as it goes up, once (README, Bucket set-up).
    client = moto.client()
    _without_checksums(client, "UploadPart", "HeadObject")
    handle, parts = _two_parts(S3Storage(client=client, bucket=bucket), "elsewhere")
    completing = S3Storage(client=client, bucket=bucket)
    with pytest.raises(StorageError, match="not checked by their MD5 in this process") as refused:
        completing.complete(key="elsewhere", handle=handle, parts=parts, size=PART + 4)
    assert refused.value.spent and not refused.value.retryable
    assert "elsewhere" not in [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    handle, parts = _two_parts(completing, "elsewhere")
    completing.complete(key="elsewhere", handle=handle, parts=parts, size=PART + 4)


def test_list_parts_reads_every_page(moto, bucket):
    client = moto.client()
    storage = S3Storage(client=client, bucket=bucket, list_page_size=2)
    handle = storage.start(key="paged", content_type="application/octet-stream", metadata={})
    sent = [
        storage.put_part(key="paged", handle=handle, part_number=n, offset=0, data=bytes([n]) * 10) for n in range(1, 6)
    ]
    pages = _count_requests(client, "ListParts")
    listed = storage.list_parts(key="paged", handle=handle)
    assert [(r.part_number, r.size, r.etag) for r in listed] == [(r.part_number, r.size, r.etag) for r in sent]
    assert pages() == 3


def test_one_part_is_found_on_one_small_page_while_lower_parts_are_missing(moto, bucket):
    # Confirming parts as they land: lower parts are often still in flight. moto reads
    # PartNumberMarker as a position in its list, S3 as a part number; one page must do on both.
    client = moto.client()
    storage = S3Storage(client=client, bucket=bucket)
    handle = storage.start(key="sparse", content_type="application/octet-stream", metadata={})
    landed = [n for n in range(1, 21) if n not in (15, 17, 18)]
    for n in landed:
        storage.put_part(key="sparse", handle=handle, part_number=n, offset=0, data=bytes([n]) * 10)
    pages = _count_requests(client, "ListParts")
    found = {n: storage.part_listed(key="sparse", handle=handle, part_number=n) for n in (3, 16, 17, 19, 20)}

    assert {n: r.part_number for n, r in found.items() if r is not None} == {3: 3, 16: 16, 19: 19, 20: 20}
    assert found[20] is not None and found[20].size == 10
    assert pages() == 5
    # The clients read LastModified with the standard library (s3_timestamp_parse), not dateutil.
    modified = client.list_parts(Bucket=bucket, Key="sparse", UploadId=handle)["Parts"][0]["LastModified"]
    assert modified.tzinfo is UTC


def test_abort_leaves_nothing_and_is_idempotent(moto, bucket, storage):
    handle = storage.start(key="gone", content_type="application/octet-stream", metadata={})
    storage.put_part(key="gone", handle=handle, part_number=1, offset=0, data=os.urandom(1000))
    storage.abort(key="gone", handle=handle)
    assert _open_uploads(moto, bucket) == []
    storage.abort(key="gone", handle=handle)
    storage.abort(key="gone", handle="no-such-upload")
    with pytest.raises(StorageError, match="NoSuchUpload") as refused:
        storage.list_parts(key="gone", handle=handle)
    assert not refused.value.retryable


def test_each_part_attempt_is_one_request(moto, bucket):
    client = moto.client()
    storage = S3Storage(client=client, bucket=bucket)
    handle = storage.start(key="busy", content_type="application/octet-stream", metadata={})
    attempts = _count_requests(client, "UploadPart")
    client.meta.events.register_first(
        "before-send.s3.UploadPart",
        lambda request, **kwargs: _answer(request.url, 503, "SlowDown"),
    )
    with pytest.raises(StorageError, match="503 SlowDown") as failed:
        storage.put_part(key="busy", handle=handle, part_number=1, offset=0, data=b"x" * 100)
    assert failed.value.retryable
    assert attempts() == 1, "botocore must not retry underneath the transfer engine"


class _Body:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


def _answer(url: str, status: int, code: str) -> AWSResponse:
    body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
    return AWSResponse(url, status, {"Content-Length": str(len(body))}, _Body(body))


def test_complete_is_idempotent_and_checks_the_object(moto, bucket, storage):
    data = os.urandom(PART + 10)
    handle = storage.start(key="whole", content_type="text/plain", metadata={"sha256": "abc", "filename": "ünï.txt"})
    receipts = [
        storage.put_part(key="whole", handle=handle, part_number=1, offset=0, data=data[:PART]),
        storage.put_part(key="whole", handle=handle, part_number=2, offset=PART, data=data[PART:]),
    ]
    assert all(r.checksum.startswith("SHA256:") for r in receipts)
    with pytest.raises(StorageError, match="expected") as wrong_size:
        storage.complete(key="whole", handle=handle, parts=receipts, size=len(data) + 1)
    assert not wrong_size.value.retryable
    assert moto.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0, "a wrong object is removed"

    handle = storage.start(key="whole", content_type="text/plain", metadata={"sha256": "abc", "filename": "ünï.txt"})
    receipts = [
        storage.put_part(key="whole", handle=handle, part_number=1, offset=0, data=data[:PART]),
        storage.put_part(key="whole", handle=handle, part_number=2, offset=PART, data=data[PART:]),
    ]
    storage.complete(key="whole", handle=handle, parts=receipts, size=len(data))
    # The same Complete again (its first answer lost): the object is there, made of these parts.
    storage.complete(key="whole", handle=handle, parts=receipts, size=len(data))
    head = moto.client().head_object(Bucket=bucket, Key="whole")
    assert (head["ContentType"], head["Metadata"]) == ("text/plain", {"sha256": "abc", "filename": "%C3%BCn%C3%AF.txt"})


def test_empty_object_and_readiness(moto, bucket, storage):
    storage.put_object(key="empty", data=b"", content_type="text/plain", metadata={"sha256": "e3b0"})
    assert moto.client().head_object(Bucket=bucket, Key="empty")["ContentLength"] == 0
    storage.delete_object(key="empty")
    storage.delete_object(key="empty")
    storage.check()
    missing = S3Storage(client=moto.client(), bucket="no-such-bucket")
    with pytest.raises(StorageError, match="does not exist") as refused:
        missing.check()
    assert not refused.value.retryable


def test_s3_setup_creates_the_bucket_and_keeps_other_lifecycle_rules(moto, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    name = f"setup-{uuid.uuid4().hex[:12]}"
    with override_settings(
        S3_BUCKET=name, S3_ENDPOINT_URL=moto.url, S3_PUBLIC_ENDPOINT_URL=moto.url, S3_REGION="eu-west-1"
    ):
        with pytest.raises(Exception, match="does not exist"):
            call_command("s3_setup")
        call_command("s3_setup", "--create-bucket", "--days", "3")
        assert f"bucket '{name}' created" in capsys.readouterr().out
        other = {"ID": "keep-logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}}
        client = moto.client()
        rules = client.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
        client.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [*rules, other]})
        call_command("s3_setup", "--create-bucket")
        assert f"bucket '{name}' exists" in capsys.readouterr().out

    rules = {r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]}
    assert set(rules) == {"keep-logs", LIFECYCLE_RULE_ID}
    assert rules[LIFECYCLE_RULE_ID]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}
    assert rules[LIFECYCLE_RULE_ID]["Filter"] == {"Prefix": "uploads/"}
    assert client.get_bucket_location(Bucket=name)["LocationConstraint"] == "eu-west-1"


@pytest.mark.parametrize("kind", ["503", "timeout"])
def test_store_outage_fails_the_upload_and_retry_after_it_sends_only_the_missing_parts(
    make_stack, api_user, moto, bucket, tmp_path, kind
):
    log, outage = tmp_path / "s3.jsonl", tmp_path / "store-down"
    faults = {"outage_while": str(outage), "outage_kind": kind}
    env = _faulty_env(moto, bucket, log, faults, UPLOAD_PART_CONCURRENCY="1", UPLOAD_PART_RETRIES="3")
    # The outage starts while part 3 waits at a gate (before its request), parts 1-2 confirmed.
    gate = Gate(tmp_path / "gate", part=3)
    stack = make_stack(env=env, faults=gate.plan)
    content = os.urandom(5 * PART + 11)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]
    gate.reached()
    outage.touch()  # every request to the store now fails
    gate.open()

    row = _wait_status(upload_id, UploadStatus.FAILED, UploadStatus.COMPLETED)
    assert row.status == UploadStatus.FAILED
    cause = "503 SlowDown" if kind == "503" else "Read timeout"
    assert "failed 3 times" in row.error and cause in row.error, row.error
    confirmed = set(row.parts.values_list("part_number", flat=True))
    assert confirmed == {1, 2} and row.parts_uploaded == 2
    failing = [r for r in _requests(log) if r["fault"] == kind]
    assert len(failing) == 3 and {r["part"] for r in failing} == {3}, failing
    # A FAILED upload keeps its multipart upload and its staged bytes, so a retry can resume.
    assert [u["UploadId"] for u in _open_uploads(moto, bucket)] == [row.storage_upload_id]
    assert staging_path(row.id).exists()
    sent_before = len(_requests(log))

    outage.unlink()  # the store is back
    assert data_of(graphql(stack.url, RETRY, {"id": upload_id}, api_user.headers))["retryUpload"]["status"] == "QUEUED"
    row = _wait_status(upload_id, UploadStatus.COMPLETED, UploadStatus.FAILED)
    assert row.status == UploadStatus.COMPLETED, row.error
    resent = _requests(log)[sent_before:]
    assert sorted(r["part"] for r in resent) == sorted(set(range(1, 7)) - confirmed), "only the missing parts"
    assert all(r["status"] == 200 for r in resent)
    assert (row.attempts, row.parts_uploaded) == (2, 6)
    _assert_object_is(moto, bucket, upload_id, content)
    assert _open_uploads(moto, bucket) == []
    assert not staging_path(row.id).exists()
