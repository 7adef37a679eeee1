"""The upload path end to end: real server over TCP, real RQ workers, real Redis."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx

from backend.uploads.models import FileUpload, UploadPart
from tests.support.client import UPLOAD_QUERY, data_of, graphql, upload_file
from tests.support.processes import wait_until

MIB = 1024 * 1024


def wait_for_status(url: str, headers: dict[str, str], upload_id: str, statuses: set[str], timeout: float = 60) -> dict:
    def current() -> dict | None:
        upload = data_of(graphql(url, UPLOAD_QUERY, {"id": upload_id}, headers))["upload"]
        return upload if upload["status"] in statuses else None

    return wait_until(current, timeout=timeout, what=f"upload {upload_id} to reach {statuses}")


def test_multipart_upload_is_stored_byte_identical(stack, api_user) -> None:
    content = os.urandom(5 * MIB + 12345)
    response = upload_file(stack.url, content, filename="photo.bin", headers=api_user.headers)
    upload = data_of(response)["uploadFile"]
    assert upload["status"] == "QUEUED"
    assert upload["size"] == len(content)
    assert upload["sha256"] == hashlib.sha256(content).hexdigest()
    assert upload["partsTotal"] == 6

    done = wait_for_status(stack.url, api_user.headers, upload["id"], {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED", done
    assert (done["partsUploaded"], done["bytesUploaded"], done["progress"]) == (6, len(content), 1.0)
    downloaded = httpx.get(done["downloadUrl"], timeout=30)
    assert downloaded.status_code == 200
    assert hashlib.sha256(downloaded.content).hexdigest() == hashlib.sha256(content).hexdigest()
    assert not (Path(os.environ["UPLOAD_STAGING_DIR"]) / upload["id"]).exists()
