"""Uppy's Companion S3 routes (`/s3/multipart...`), driven over real HTTP as `@uppy/aws-s3` 6 drives
them (its `CompanionS3` client: create, sign each part, PUT it, complete), against moto."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.uploads.models import FileUpload, UploadStatus
from tests.support.moto import PART, Moto, moto_start, s3_env
from tests.support.processes import wait_until


@pytest.fixture(scope="module")
def moto(session_root: Path) -> Iterator[Moto]:
    server = moto_start(session_root, "moto-companion")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bucket(moto: Moto) -> str:
    name = f"companion-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def s3_stack(session_root: Path, moto: Moto, bucket: str) -> Iterator[Any]:
    from tests.conftest import _new_stack

    stack = _new_stack(
        session_root, env=s3_env(moto, bucket, UPLOAD_MAX_ACTIVE_PER_USER="3"), workers=1, faults=None, server="uvicorn"
    )
    yield stack
    stack.stop()


def _create(url: str, headers: dict[str, str], **body: Any) -> httpx.Response:
    payload = {"filename": "photo.bin", "type": "application/octet-stream", "metadata": {}, **body}
    return httpx.post(f"{url}/s3/multipart", json=payload, headers=headers)


def _sign(url: str, headers: dict[str, str], created: dict[str, Any], number: int) -> httpx.Response:
    return httpx.get(
        f"{url}/s3/multipart/{created['uploadId']}/{number}", params={"key": created["key"]}, headers=headers
    )


def _uppy_upload(url: str, headers: dict[str, str], content: bytes) -> tuple[dict[str, Any], httpx.Response]:
    """What @uppy/aws-s3 does for one file: parts of max(5 MiB, size/10,000), one after another."""
    created = _create(url, headers).json()
    parts = []
    for number, start in enumerate(range(0, len(content), PART), 1):
        signed = _sign(url, headers, created, number).json()
        put = httpx.put(signed["url"], content=content[start : start + PART])
        assert put.status_code == 200, put.text
        parts.append({"PartNumber": number, "ETag": put.headers["etag"]})
    done = httpx.post(
        f"{url}/s3/multipart/{created['uploadId']}/complete",
        params={"key": created["key"]},
        json={"parts": parts},
        headers=headers,
    )
    return created, done


def _code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["errors"][0]["extensions"]["code"]


def test_an_uppy_upload_is_an_ordinary_direct_file_upload(s3_stack, api_user, moto, bucket):
    content = os.urandom(2 * PART + 777)
    created, done = _uppy_upload(s3_stack.url, api_user.headers, content)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["key"] == created["key"] and body["location"].endswith(f"/{bucket}/{created['key']}")
    row = FileUpload.objects.get(id=created["uploadId"])
    assert (row.mode, row.size, row.part_size, row.parts_total, row.parts_uploaded) == (
        "DIRECT",
        len(content),
        PART,
        3,
        3,
    )
    assert row.storage_key == created["key"]

    def completed() -> FileUpload | None:
        current = FileUpload.objects.get(id=row.id)
        return current if current.status == UploadStatus.COMPLETED else None

    wait_until(completed, timeout=60, what="the Uppy upload to complete")
    stored = moto.client().get_object(Bucket=bucket, Key=row.storage_key)["Body"].read()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(content).digest()


def test_listing_parts_and_aborting(s3_stack, api_user, moto, bucket):
    created = _create(s3_stack.url, api_user.headers).json()
    signed = _sign(s3_stack.url, api_user.headers, created, 1).json()
    assert signed["expires"] == 3600 and signed["headers"] == {}
    etag = httpx.put(signed["url"], content=os.urandom(PART)).headers["etag"]
    listed = httpx.get(
        f"{s3_stack.url}/s3/multipart/{created['uploadId']}", params={"key": created["key"]}, headers=api_user.headers
    )
    assert listed.json() == [{"PartNumber": 1, "Size": PART, "ETag": etag}]
    gone = httpx.delete(
        f"{s3_stack.url}/s3/multipart/{created['uploadId']}", params={"key": created["key"]}, headers=api_user.headers
    )
    assert (gone.status_code, gone.json()) == (200, {})
    assert FileUpload.objects.get(id=created["uploadId"]).status == UploadStatus.CANCELLED
    assert moto.client().list_multipart_uploads(Bucket=bucket, Prefix=created["key"]).get("Uploads", []) == []


def test_owner_only_credentials_and_refusals(s3_stack, api_user, make_user):
    created = _create(s3_stack.url, api_user.headers).json()
    other = make_user().headers
    upload, key = created["uploadId"], created["key"]
    routes = [
        ("GET", f"/s3/multipart/{upload}/1", None),
        ("GET", f"/s3/multipart/{upload}", None),
        ("POST", f"/s3/multipart/{upload}/complete", {"parts": [{"PartNumber": 1, "ETag": '"x"'}]}),
        ("DELETE", f"/s3/multipart/{upload}", None),
    ]
    for method, path, body in routes:
        theirs = httpx.request(method, s3_stack.url + path, params={"key": key}, json=body, headers=other)
        assert _code(theirs) == (404, "NOT_FOUND"), (method, path)
        wrong_key = httpx.request(
            method, s3_stack.url + path, params={"key": "uploads/x"}, json=body, headers=api_user.headers
        )
        assert _code(wrong_key) == (404, "NOT_FOUND"), (method, path)
        anonymous = httpx.request(method, s3_stack.url + path, params={"key": key}, json=body)
        assert _code(anonymous) == (401, "UNAUTHENTICATED"), (method, path)
    assert _code(_create(s3_stack.url, {})) == (401, "UNAUTHENTICATED")
    assert _code(_create(s3_stack.url, {"Authorization": "Bearer nope"})) == (401, "UNAUTHENTICATED")
    for number in (0, 10_001, "x"):
        assert _code(_sign(s3_stack.url, api_user.headers, created, number)) == (400, "BAD_USER_INPUT")
    assert _code(httpx.get(f"{s3_stack.url}/s3/params", headers=api_user.headers)) == (404, "NOT_FOUND")
    missing = httpx.post(
        f"{s3_stack.url}/s3/multipart/{upload}/complete",
        params={"key": key},
        json={"parts": [{"PartNumber": 1, "ETag": '"0"'}]},
        headers=api_user.headers,
    )
    assert _code(missing) == (400, "BAD_USER_INPUT")
    assert _code(_create(s3_stack.url, api_user.headers, filename="")) == (400, "BAD_USER_INPUT")


def test_a_session_post_needs_the_csrf_token(s3_stack, api_user):
    from django.contrib.auth.models import User

    user = User.objects.get(username=api_user.username)
    user.set_password("pw-direct-21")
    user.save()
    with httpx.Client(base_url=s3_stack.url) as browser:
        page = browser.get("/accounts/login/")
        token = browser.cookies["csrftoken"]
        browser.post(
            "/accounts/login/",
            data={"username": api_user.username, "password": "pw-direct-21", "csrfmiddlewaretoken": token},
            headers={"Referer": f"{s3_stack.url}/accounts/login/"},
        )
        assert page.status_code == 200 and "sessionid" in browser.cookies
        payload = {"filename": "a.bin", "type": "application/octet-stream", "metadata": {}}
        assert _code(browser.post("/s3/multipart", json=payload)) == (403, "FORBIDDEN")
        ok = browser.post("/s3/multipart", json=payload, headers={"X-CSRFToken": browser.cookies["csrftoken"]})
        assert ok.status_code == 200 and ok.json()["uploadId"]


def test_too_many_active_uploads_is_429_and_quota_is_413_while_signing(s3_stack, make_user):
    user = make_user()
    for _ in range(3):
        assert _create(s3_stack.url, user.headers).status_code == 200
    assert _code(_create(s3_stack.url, user.headers)) == (429, "TOO_MANY_ACTIVE_UPLOADS")

    from backend.quotas.models import UserQuota

    small = make_user()
    UserQuota.objects.update_or_create(user=small.user, defaults={"limit_bytes": 2 * PART})
    created = _create(s3_stack.url, small.headers).json()
    assert _sign(s3_stack.url, small.headers, created, 1).status_code == 200
    assert _sign(s3_stack.url, small.headers, created, 2).status_code == 200
    assert _code(_sign(s3_stack.url, small.headers, created, 3)) == (413, "QUOTA_EXCEEDED")
