"""Full disks, for real: staging or the local bucket on a small tmpfs (tests/support/disks.py).

- Staging fills up while a request is being received: 507 INSUFFICIENT_STORAGE, the space is given
  back at once (no refused file left, none held open), and the next upload works.
- The local bucket fills up mid-transfer: the upload ends FAILED naming the disk, no object and no
  half-written file is in view, and `retryUpload` once there is room sends only the parts missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from backend.uploads.models import FileUpload
from tests.support.client import data_of, error_codes, graphql, upload_file
from tests.support.disks import MIB, disk_fill, small_disk
from tests.support.uploads import incoming_entries, open_staging_files, put_part_log, upload_wait_for_status

pytestmark = pytest.mark.slow

RETRY = "mutation($id: ID!) { retryUpload(id: $id) { id status } }"


def test_staging_full_mid_request_answers_507_frees_the_space_and_the_next_upload_works(
    tmp_path: Path, make_stack, api_user
) -> None:
    with small_disk(tmp_path / "staging", size_mib=40) as staging:
        # The 1 GiB default floor would refuse before any byte is read: here the disk fills mid-body.
        stack = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_STAGING_MIN_FREE_BYTES": "0"}, workers=1)
        free_before = shutil.disk_usage(staging).free

        refused = upload_file(stack.url, os.urandom(60 * MIB), headers=api_user.headers, filename="too-big.bin")
        assert refused.status_code == 507, refused.text
        assert error_codes(refused) == ["INSUFFICIENT_STORAGE"], refused.json()
        assert "staging disk is full" in refused.json()["errors"][0]["message"]

        assert incoming_entries(staging) == []
        assert open_staging_files(stack.server.process.pid, staging) == [], "a refused file is still held open"
        assert shutil.disk_usage(staging).free >= free_before - MIB, "the refused bytes' space was not given back"
        assert not FileUpload.objects.filter(owner=api_user.user).exists()

        for attempt in range(2):  # not once by luck: every later upload works
            body = os.urandom(8 * MIB)
            upload = data_of(upload_file(stack.url, body, headers=api_user.headers, filename=f"next-{attempt}.bin"))
            done = upload_wait_for_status(
                stack.url, api_user.headers, upload["uploadFile"]["id"], {"COMPLETED", "FAILED"}
            )
            assert done["status"] == "COMPLETED", done
            assert done["sha256"] == hashlib.sha256(body).hexdigest()
        stack.stop()


def test_local_bucket_full_mid_transfer_fails_naming_the_disk_and_a_retry_sends_only_the_missing_parts(
    tmp_path: Path, make_stack, api_user
) -> None:
    log = tmp_path / "put_part.log"
    with small_disk(tmp_path / "bucket", size_mib=40) as bucket:
        (bucket / "ballast").mkdir()
        ballast = disk_fill(bucket / "ballast", leave_mib=10)
        stack = make_stack(
            env={"LOCAL_STORAGE_ROOT": str(bucket), "TEST_STORAGE_LOG": str(log), "UPLOAD_PART_CONCURRENCY": "2"},
            workers=1,
        )
        body = os.urandom(24 * MIB)  # 24 parts of 1 MiB; about 10 fit
        upload_id = data_of(upload_file(stack.url, body, headers=api_user.headers))["uploadFile"]["id"]

        failed = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"})
        assert failed["status"] == "FAILED", failed
        assert "disk is full" in failed["error"] and str(bucket) in failed["error"], failed["error"]
        row = FileUpload.objects.get(id=upload_id)
        confirmed = set(row.parts.values_list("part_number", flat=True))
        assert 0 < len(confirmed) < 24, confirmed

        # Nothing in view: no object at its key, nothing outside the hidden area but the ballast.
        assert not (bucket / row.storage_key).exists()
        visible = {p.relative_to(bucket).parts[0] for p in bucket.rglob("*") if p.is_file()}
        assert visible <= {".incomplete", "ballast"}, visible

        first_run = put_part_log(log, key=row.storage_key)
        ballast.unlink()
        assert data_of(graphql(stack.url, RETRY, {"id": upload_id}, api_user.headers))["retryUpload"]["status"] == (
            "QUEUED"
        )
        done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"})
        assert done["status"] == "COMPLETED", done
        assert (bucket / row.storage_key).read_bytes() == body

        retried = [e["part"] for e in put_part_log(log, key=row.storage_key)[len(first_run) :]]
        assert sorted(retried) == sorted(set(range(1, 25)) - confirmed), "the retry sent a part the bucket had"
        assert not list((bucket / ".incomplete").iterdir()), "the assembled object left its temporary files"
        stack.stop()
