"""The transfer under storage faults: retries per part, permanent and fatal failures, a crashed worker.

Workers here wrap the storage backend with tests/support/worker.py's fault plan and log every
put_part call, so a test can count which parts were sent and how often.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
from django.conf import settings

from backend.uploads.models import FileUpload, UploadPart
from backend.uploads.staging import staging_path
from backend.uploads.storage.local import LocalStorage
from tests.support.client import data_of, graphql, upload_file
from tests.support.uploads import Gate, put_part_counts, put_part_log, upload_wait_for_status

MIB = 1024 * 1024
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
RETRY = "mutation($id: ID!) { retryUpload(id: $id) { status error partsUploaded } }"


def _download(url: str) -> bytes:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    return response.content


def test_a_part_failing_twice_is_retried_alone(make_stack, api_user, tmp_path) -> None:
    log = tmp_path / "puts.jsonl"
    stack = make_stack(faults={"fail_part": {"2": 2}}, env={"TEST_STORAGE_LOG": str(log)})
    content = os.urandom(4 * MIB + 77)
    upload = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]

    done = upload_wait_for_status(stack.url, api_user.headers, upload["id"], TERMINAL)
    assert done["status"] == "COMPLETED", done
    assert put_part_counts(log) == {1: 1, 2: 3, 3: 1, 4: 1, 5: 1}
    assert [e["attempt"] for e in put_part_log(log) if e["part"] == 2] == [1, 2, 3]
    assert (done["partsUploaded"], done["bytesUploaded"], done["attempts"], done["error"]) == (5, len(content), 1, None)
    assert _download(done["downloadUrl"]) == content


def test_a_part_that_always_fails_fails_after_the_configured_attempts(make_stack, api_user, tmp_path) -> None:
    log = tmp_path / "puts.jsonl"
    stack = make_stack(faults={"always_fail_part": 3}, env={"TEST_STORAGE_LOG": str(log), "UPLOAD_PART_RETRIES": "3"})
    content = os.urandom(4 * MIB)
    upload = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]

    done = upload_wait_for_status(stack.url, api_user.headers, upload["id"], TERMINAL)
    assert done["status"] == "FAILED", done
    assert "part 3" in done["error"] and "3 times" in done["error"], done["error"]
    assert "Traceback" not in done["error"]
    assert put_part_counts(log)[3] == 3
    assert done["downloadUrl"] is None
    # The other parts went through once each and stay confirmed for a retry to resume from.
    assert {n: c for n, c in put_part_counts(log).items() if n != 3} == {1: 1, 2: 1, 4: 1}
    assert done["partsUploaded"] == 3
    assert (Path(os.environ["UPLOAD_STAGING_DIR"]) / upload["id"]).exists()

    # With the fault gone, retryUpload resumes from the confirmed parts: only part 3 is sent.
    faulty_pids = {e["pid"] for e in put_part_log(log)}
    stack.workers[0].kill()
    stack.add_worker()
    retried = data_of(graphql(stack.url, RETRY, {"id": upload["id"]}, api_user.headers))["retryUpload"]
    assert (retried["status"], retried["error"], retried["partsUploaded"]) == ("QUEUED", None, 3)
    done = upload_wait_for_status(stack.url, api_user.headers, upload["id"], TERMINAL)
    assert done["status"] == "COMPLETED", done
    assert [e["part"] for e in put_part_log(log) if e["pid"] not in faulty_pids] == [3]
    assert (done["attempts"], done["partsUploaded"], done["error"]) == (2, 4, None)
    assert _download(done["downloadUrl"]) == content


def test_a_non_retryable_failure_fails_at_once(make_stack, api_user, tmp_path) -> None:
    log = tmp_path / "puts.jsonl"
    stack = make_stack(faults={"fatal_part": 2}, env={"TEST_STORAGE_LOG": str(log)})
    content = os.urandom(2 * MIB)
    upload = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]

    done = upload_wait_for_status(stack.url, api_user.headers, upload["id"], TERMINAL)
    assert done["status"] == "FAILED", done
    assert "part 2" in done["error"] and "access denied" in done["error"], done["error"]
    assert put_part_counts(log)[2] == 1
    assert done["attempts"] == 1


def test_a_crashed_transfer_resumes_without_resending_confirmed_parts(make_stack, api_user, tmp_path) -> None:
    log = tmp_path / "puts.jsonl"
    # One part at a time, so "two parts put" means "two parts confirmed" when the work horse dies.
    env = {"TEST_STORAGE_LOG": str(log), "UPLOAD_PART_CONCURRENCY": "1"}
    stack = make_stack(faults={"crash_after_parts": 2}, env=env)
    content = os.urandom(4 * MIB + 5)
    upload = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]
    row = FileUpload.objects.get(id=upload["id"])

    # Each work horse exits as its third put_part starts. Its worker sees it die and gives the upload
    # back at once (no reaper runs here); the next run resumes after the parts confirmed so far.
    done = upload_wait_for_status(stack.url, api_user.headers, upload["id"], TERMINAL)
    assert done["status"] == "COMPLETED", done
    runs: dict[int, list[int]] = {}
    for entry in put_part_log(log):
        runs.setdefault(entry["pid"], []).append(entry["part"])
    assert list(runs.values()) == [[1, 2], [3, 4], [5]], runs
    assert put_part_counts(log) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert sorted(UploadPart.objects.filter(upload=row).values_list("part_number", flat=True)) == [1, 2, 3, 4, 5]
    assert (done["attempts"], done["partsUploaded"], done["bytesUploaded"]) == (3, 5, len(content))
    assert hashlib.sha256(_download(done["downloadUrl"])).hexdigest() == hashlib.sha256(content).hexdigest()


def test_a_store_outage_longer_than_the_retries_fails_and_retry_resumes_after_it(
    make_stack, api_user, tmp_path
) -> None:
    log, outage = tmp_path / "puts.jsonl", tmp_path / "store-down"
    env = {"TEST_STORAGE_LOG": str(log), "UPLOAD_PART_RETRIES": "3", "UPLOAD_PART_CONCURRENCY": "1"}
    # The outage starts while part 4 waits at a gate, parts 1-3 confirmed behind it.
    gate = Gate(tmp_path / "gate", part=4)
    stack = make_stack(faults={"outage_while": str(outage), **gate.plan}, env=env)
    content = os.urandom(10 * MIB + 3)
    upload = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]
    gate.reached()
    outage.touch()  # the store stops storing anything
    gate.open()

    failed = upload_wait_for_status(stack.url, api_user.headers, upload["id"], TERMINAL)
    assert failed["status"] == "FAILED", failed
    assert "failed 3 times" in failed["error"] and "injected store outage" in failed["error"], failed["error"]
    row = FileUpload.objects.get(id=upload["id"])
    confirmed = set(row.parts.values_list("part_number", flat=True))
    assert confirmed == {1, 2, 3} and row.parts_uploaded == 3
    # Per contract a FAILED upload keeps its staged bytes and its open object, for retryUpload.
    assert staging_path(row.id).exists()
    assert [e.handle for e in LocalStorage(root=settings.LOCAL_STORAGE_ROOT).temporary_entries()].count(
        row.storage_upload_id
    ) == 1
    sent_before = len(put_part_log(log))

    outage.unlink()  # the store is back
    assert (
        data_of(graphql(stack.url, RETRY, {"id": upload["id"]}, api_user.headers))["retryUpload"]["status"] == "QUEUED"
    )
    done = upload_wait_for_status(stack.url, api_user.headers, upload["id"], TERMINAL)
    assert done["status"] == "COMPLETED", done
    resent = [e["part"] for e in put_part_log(log)[sent_before:]]
    assert sorted(resent) == sorted(set(range(1, 12)) - confirmed), "only the parts the store never confirmed"
    assert (done["attempts"], done["partsUploaded"], done["bytesUploaded"]) == (2, 11, len(content))
    assert _download(done["downloadUrl"]) == content
    assert not staging_path(row.id).exists(), "COMPLETED leaves no staged bytes"
    assert row.storage_upload_id not in {
        e.handle for e in LocalStorage(root=settings.LOCAL_STORAGE_ROOT).temporary_entries()
    }
