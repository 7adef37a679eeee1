"""Direct-to-bucket uploads (CONTRACT section 9) against moto in server mode, over real HTTP.

The client side is real: presigned URLs from signUploadParts, each part PUT to moto with httpx and
the headers it was signed with, confirmUploadPart with the ETag moto answered, completeUpload; a
real worker completes and verifies the object. moto checks neither checksums nor URL expiry (see
NOTES), so a part with the wrong bytes is caught here by its size or ETag, and a corrupted file by
the worker's read-back of the declared sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from django.utils import timezone

from backend.uploads.models import FileUpload, UploadPart, UploadStatus
from tests.support.client import data_of, error_codes, graphql, subscriber
from tests.support.direct import (
    direct_complete,
    direct_confirm,
    direct_create,
    direct_sign,
    direct_upload,
    part_sha256,
    put_part,
)
from tests.support.moto import PART, Moto, moto_start, s3_env
from tests.support.processes import ROOT, wait_until

CANCEL = "mutation($id: ID!) { cancelUpload(id: $id) { status } }"
DELETE = "mutation($id: ID!) { deleteUpload(id: $id) }"
QUERY = "query($id: ID!) { upload(id: $id) { status error sha256 size contentType downloadUrl } }"


@pytest.fixture(scope="module")
def moto(session_root: Path) -> Iterator[Moto]:
    server = moto_start(session_root, "moto-direct")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bucket(moto: Moto) -> str:
    name = f"direct-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def s3_stack(session_root: Path, moto: Moto, bucket: str) -> Iterator[Any]:
    from tests.conftest import _new_stack

    env = s3_env(moto, bucket, DIRECT_UPLOAD_URL_TTL="1")
    stack = _new_stack(session_root, env=env, workers=1, faults=None, server="uvicorn")
    yield stack
    stack.stop()


def _wait_status(upload_id: str, *statuses: str) -> FileUpload:
    def reached() -> FileUpload | None:
        row = FileUpload.objects.get(id=upload_id)
        return row if row.status in statuses else None

    return wait_until(reached, timeout=60, what=f"upload {upload_id} to reach {statuses}")


def _open_uploads(moto: Moto, bucket: str) -> list[dict[str, Any]]:
    return moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def _object_exists(moto: Moto, bucket: str, key: str) -> bool:
    return "Contents" in moto.client().list_objects_v2(Bucket=bucket, Prefix=key)


def _started(url: str, headers: dict[str, str], size: int, **kwargs: Any) -> dict[str, Any]:
    return data_of(direct_create(url, headers, filename="d.bin", size=size, **kwargs))["createUpload"]


def _signed(url: str, headers: dict[str, str], upload_id: str, number: int, data: bytes) -> dict[str, Any]:
    parts = [{"partNumber": number, "sha256": part_sha256(data)}]
    return data_of(direct_sign(url, headers, upload_id, parts))["signUploadParts"][0]


# --- the whole flow ----------------------------------------------------------------------------


def test_direct_upload_with_live_progress_completes_verified(s3_stack, api_user, moto, bucket):
    content = os.urandom(3 * PART + 12345)
    digest = hashlib.sha256(content).hexdigest()
    created = _started(s3_stack.url, api_user.headers, len(content), sha256=digest)
    assert (created["status"], created["mode"], created["partSize"], created["partsTotal"]) == (
        "RECEIVING",
        "DIRECT",
        PART,
        4,
    )
    assert created["sha256"] is None and created["storageBackend"] == "s3"

    async def run() -> list[dict[str, Any]]:
        async with subscriber(s3_stack.ws_url, api_user.token) as sub:
            sub_id = await sub.subscribe(created["id"])
            first = await sub.receive()  # the snapshot: joined before any part is reported
            assert first["payload"]["data"]["uploadProgress"]["status"] == "RECEIVING"

            def client() -> None:
                chunks = [content[i : i + PART] for i in range(0, len(content), PART)]
                signed = data_of(
                    direct_sign(
                        s3_stack.url,
                        api_user.headers,
                        created["id"],
                        [{"partNumber": n, "sha256": part_sha256(c)} for n, c in enumerate(chunks, 1)],
                    )
                )["signUploadParts"]
                for part in signed:
                    assert part["headers"] == [
                        {"name": "x-amz-checksum-sha256", "value": part_sha256(chunks[part["partNumber"] - 1])}
                    ]
                    etag = put_part(part, chunks[part["partNumber"] - 1])
                    data_of(direct_confirm(s3_stack.url, api_user.headers, created["id"], part["partNumber"], etag))
                data_of(direct_complete(s3_stack.url, api_user.headers, created["id"]))

            await asyncio.to_thread(client)
            return await sub.events_until_complete(sub_id)

    events = asyncio.run(run())
    receiving = [e for e in events if e["status"] == "RECEIVING"]
    assert [e["partNumber"] for e in receiving] == [1, 2, 3, 4]
    assert [e["bytesUploaded"] for e in receiving] == [PART, 2 * PART, 3 * PART, len(content)]
    assert [e["status"] for e in events[len(receiving) :]] == ["QUEUED", "UPLOADING", "COMPLETED"]
    assert [e["sequence"] for e in events] == sorted({e["sequence"] for e in events})

    done = data_of(graphql(s3_stack.url, QUERY, {"id": created["id"]}, headers=api_user.headers))["upload"]
    assert (done["status"], done["sha256"], done["size"]) == ("COMPLETED", digest, len(content))
    assert httpx.get(done["downloadUrl"]).content == content
    assert _open_uploads(moto, bucket) == []


def test_without_a_declared_sha256_none_is_reported(s3_stack, api_user):
    content = b"%PDF-1.4 " + os.urandom(PART)
    queued = direct_upload(s3_stack.url, api_user.headers, content, filename="doc.pdf")
    assert queued["status"] == "QUEUED"
    row = _wait_status(queued["id"], UploadStatus.COMPLETED)
    assert row.sha256 is None and row.content_type == "application/pdf"


def test_an_empty_file_is_one_plain_put(s3_stack, api_user, moto, bucket):
    queued = direct_upload(s3_stack.url, api_user.headers, b"", sha256=hashlib.sha256(b"").hexdigest())
    assert queued["partsTotal"] == 0
    row = _wait_status(queued["id"], UploadStatus.COMPLETED)
    assert row.sha256 == hashlib.sha256(b"").hexdigest()
    assert moto.client().head_object(Bucket=bucket, Key=row.storage_key)["ContentLength"] == 0


def test_declared_sha256_the_bytes_do_not_match_fails_and_removes_the_object(s3_stack, api_user, moto, bucket):
    content = os.urandom(PART + 10)
    queued = direct_upload(s3_stack.url, api_user.headers, content, sha256="0" * 64)
    row = _wait_status(queued["id"], UploadStatus.FAILED, UploadStatus.COMPLETED)
    assert row.status == UploadStatus.FAILED
    assert row.error.startswith("CHECKSUM_MISMATCH: ") and hashlib.sha256(content).hexdigest() in row.error
    assert row.sha256 is None
    assert not _object_exists(moto, bucket, row.storage_key)


# --- hostile cases ------------------------------------------------------------------------------


def test_another_users_upload_is_not_found_on_every_mutation(s3_stack, api_user, make_user):
    created = _started(s3_stack.url, api_user.headers, PART)
    other = make_user().headers
    upload_id = created["id"]
    answers = [
        direct_sign(s3_stack.url, other, upload_id, [{"partNumber": 1, "sha256": part_sha256(b"x")}]),
        direct_confirm(s3_stack.url, other, upload_id, 1, '"abc"'),
        direct_complete(s3_stack.url, other, upload_id),
        graphql(s3_stack.url, CANCEL, {"id": upload_id}, headers=other),
        graphql(s3_stack.url, DELETE, {"id": upload_id}, headers=other),
    ]
    assert [error_codes(a) for a in answers] == [["NOT_FOUND"]] * 5
    assert FileUpload.objects.get(id=upload_id).status == UploadStatus.RECEIVING


def test_part_numbers_out_of_range_and_missing_checksums_are_bad_input(s3_stack, api_user):
    upload_id = _started(s3_stack.url, api_user.headers, 2 * PART)["id"]
    for number in (0, 3, 10_001):
        answer = direct_sign(
            s3_stack.url, api_user.headers, upload_id, [{"partNumber": number, "sha256": part_sha256(b"")}]
        )
        assert error_codes(answer) == ["BAD_USER_INPUT"], number
    assert error_codes(direct_sign(s3_stack.url, api_user.headers, upload_id, [{"partNumber": 1}])) == [
        "BAD_USER_INPUT"
    ]
    bad = direct_sign(s3_stack.url, api_user.headers, upload_id, [{"partNumber": 1, "sha256": "not base64!"}])
    assert error_codes(bad) == ["BAD_USER_INPUT"]
    for number in (0, 10_001):
        assert error_codes(direct_confirm(s3_stack.url, api_user.headers, upload_id, number, '"x"')) == [
            "BAD_USER_INPUT"
        ]
    no_size = graphql(
        s3_stack.url,
        'mutation { createUpload(input: {filename: "a", mode: DIRECT}) { id } }',
        headers=api_user.headers,
    )
    assert error_codes(no_size) == ["BAD_USER_INPUT"]


def test_confirming_a_part_never_put_or_with_another_etag_or_size_is_refused(s3_stack, api_user):
    content = os.urandom(PART + 100)
    upload_id = _started(s3_stack.url, api_user.headers, len(content))["id"]
    never = direct_confirm(s3_stack.url, api_user.headers, upload_id, 1, '"0123456789abcdef0123456789abcdef"')
    assert error_codes(never) == ["BAD_USER_INPUT"] and "not in the bucket" in never.json()["errors"][0]["message"]

    etag = put_part(_signed(s3_stack.url, api_user.headers, upload_id, 1, content[:PART]), content[:PART])
    wrong = direct_confirm(s3_stack.url, api_user.headers, upload_id, 1, '"ffffffffffffffffffffffffffffffff"')
    assert error_codes(wrong) == ["BAD_USER_INPUT"] and "ETag" in wrong.json()["errors"][0]["message"]
    # Part 2 put short (moto does not check the signed checksum): its size gives it away.
    short = content[PART:-1]
    etag2 = put_part(_signed(s3_stack.url, api_user.headers, upload_id, 2, content[PART:]), short)
    sized = direct_confirm(s3_stack.url, api_user.headers, upload_id, 2, etag2)
    assert error_codes(sized) == ["BAD_USER_INPUT"] and "must be 100" in sized.json()["errors"][0]["message"]
    row = FileUpload.objects.get(id=upload_id)
    assert (row.parts_uploaded, row.bytes_uploaded) == (0, 0)
    ok = data_of(direct_confirm(s3_stack.url, api_user.headers, upload_id, 1, etag))["confirmUploadPart"]
    assert (ok["partsUploaded"], ok["bytesUploaded"], ok["bytesReceived"]) == (1, PART, PART)
    again = data_of(direct_confirm(s3_stack.url, api_user.headers, upload_id, 1, etag))["confirmUploadPart"]
    assert again["partsUploaded"] == 1  # confirming twice counts once
    # Part 1 put again with other bytes: its ledger entry is replaced, still counted once.
    other = os.urandom(PART)
    etag_other = put_part(_signed(s3_stack.url, api_user.headers, upload_id, 1, other), other)
    replaced = data_of(direct_confirm(s3_stack.url, api_user.headers, upload_id, 1, etag_other))["confirmUploadPart"]
    assert (replaced["partsUploaded"], replaced["bytesUploaded"]) == (1, PART)
    assert list(UploadPart.objects.filter(upload_id=upload_id).values_list("part_number", "etag")) == [(1, etag_other)]


def test_completing_with_parts_missing_or_twice(s3_stack, api_user):
    content = os.urandom(3 * PART + 1)
    upload_id = _started(s3_stack.url, api_user.headers, len(content))["id"]
    missing = direct_complete(s3_stack.url, api_user.headers, upload_id)
    assert error_codes(missing) == ["BAD_USER_INPUT"] and "1-4" in missing.json()["errors"][0]["message"]
    chunk = content[PART : 2 * PART]
    etag = put_part(_signed(s3_stack.url, api_user.headers, upload_id, 2, chunk), chunk)
    data_of(direct_confirm(s3_stack.url, api_user.headers, upload_id, 2, etag))
    some = direct_complete(s3_stack.url, api_user.headers, upload_id)
    assert "1, 3-4" in some.json()["errors"][0]["message"]
    for number in (1, 3, 4):
        chunk = content[(number - 1) * PART : number * PART]
        etag = put_part(_signed(s3_stack.url, api_user.headers, upload_id, number, chunk), chunk)
        data_of(direct_confirm(s3_stack.url, api_user.headers, upload_id, number, etag))
    assert data_of(direct_complete(s3_stack.url, api_user.headers, upload_id))["completeUpload"]["status"] == "QUEUED"
    assert error_codes(direct_complete(s3_stack.url, api_user.headers, upload_id)) == ["INVALID_STATE"]
    _wait_status(upload_id, UploadStatus.COMPLETED)


def test_urls_expire_after_the_ttl_and_can_be_signed_again(s3_stack, api_user):
    upload_id = _started(s3_stack.url, api_user.headers, PART)["id"]
    before = time.time()
    first = _signed(s3_stack.url, api_user.headers, upload_id, 1, b"x" * PART)
    query = parse_qs(urlparse(first["url"]).query)
    assert query["X-Amz-Expires"] == ["1"]  # DIRECT_UPLOAD_URL_TTL=1
    assert "x-amz-checksum-sha256" in query["X-Amz-SignedHeaders"][0]
    expires = datetime.fromisoformat(first["expiresAt"]).timestamp()
    assert before + 0.5 <= expires <= time.time() + 1.5
    second = _signed(s3_stack.url, api_user.headers, upload_id, 1, b"x" * PART)
    assert datetime.fromisoformat(second["expiresAt"]) >= datetime.fromisoformat(first["expiresAt"])


# --- cancel, delete, expiry -----------------------------------------------------------------------


def _with_a_part(stack: Any, headers: dict[str, str]) -> dict[str, Any]:
    created = _started(stack.url, headers, 2 * PART)
    chunk = os.urandom(PART)
    put_part(_signed(stack.url, headers, created["id"], 1, chunk), chunk)
    return created


def _open_for(moto: Moto, bucket: str, key: str) -> list[dict[str, Any]]:
    return [u for u in _open_uploads(moto, bucket) if u["Key"] == key]


def test_cancel_and_delete_abort_the_multipart_upload(s3_stack, api_user, moto, bucket):
    cancelled = _with_a_part(s3_stack, api_user.headers)
    assert _open_for(moto, bucket, cancelled["storageKey"])
    answer = data_of(graphql(s3_stack.url, CANCEL, {"id": cancelled["id"]}, headers=api_user.headers))
    assert answer["cancelUpload"]["status"] == "CANCELLED"
    assert _open_for(moto, bucket, cancelled["storageKey"]) == []
    assert error_codes(direct_sign(s3_stack.url, api_user.headers, cancelled["id"], [{"partNumber": 1}])) == [
        "INVALID_STATE"
    ]

    deleted = _with_a_part(s3_stack, api_user.headers)
    assert data_of(graphql(s3_stack.url, DELETE, {"id": deleted["id"]}, headers=api_user.headers))["deleteUpload"]
    assert _open_for(moto, bucket, deleted["storageKey"]) == []
    assert not FileUpload.objects.filter(id=deleted["id"]).exists()


def test_an_expired_upload_is_aborted_by_the_sweep(s3_stack, api_user, moto, bucket):
    created = _with_a_part(s3_stack, api_user.headers)
    # As if UPLOAD_RECEIVING_TTL had passed with no part signed or confirmed.
    FileUpload.objects.filter(id=created["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    subprocess.run(
        [sys.executable, "manage.py", "sweep_uploads"], cwd=ROOT, env=s3_stack.env, check=True, capture_output=True
    )
    row = FileUpload.objects.get(id=created["id"])
    assert row.status == UploadStatus.FAILED and row.error.startswith("expired")
    assert _open_for(moto, bucket, created["storageKey"]) == []


def test_direct_uploads_are_not_offered_on_the_local_store(stack, api_user):
    answer = direct_create(stack.url, api_user.headers, filename="a", size=10)
    assert error_codes(answer) == ["BAD_USER_INPUT"] and "not offered" in answer.json()["errors"][0]["message"]


def test_s3_setup_puts_the_cors_rule_browsers_need(moto, monkeypatch, capsys):
    from django.core.management import call_command
    from django.test import override_settings

    from backend.uploads.storage.s3_bucket import CORS_RULE_ID

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    name = f"cors-{uuid.uuid4().hex[:12]}"
    client = moto.client()
    with override_settings(
        S3_BUCKET=name, S3_ENDPOINT_URL=moto.url, S3_PUBLIC_ENDPOINT_URL=moto.url, CORS_ALLOWED_ORIGINS=[]
    ):
        call_command("s3_setup", "--create-bucket")
        assert "no CORS rule" in capsys.readouterr().out
        # (moto refuses a preflight unless every rule allows its origin, so this one does too.)
        other = {
            "ID": "theirs",
            "AllowedOrigins": ["https://other.example", "https://app.example"],
            "AllowedMethods": ["GET"],
        }
        client.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": [other]})
    with override_settings(
        S3_BUCKET=name,
        S3_ENDPOINT_URL=moto.url,
        S3_PUBLIC_ENDPOINT_URL=moto.url,
        CORS_ALLOWED_ORIGINS=["https://app.example"],
    ):
        call_command("s3_setup", "--cors-origin", "http://localhost:8000")
        call_command("s3_setup")  # idempotent: the rule is replaced, not added again
    assert "may PUT parts and read their ETag" in capsys.readouterr().out
    rules = {r.get("ID"): r for r in client.get_bucket_cors(Bucket=name)["CORSRules"]}
    assert set(rules) == {"theirs", CORS_RULE_ID}
    assert rules[CORS_RULE_ID]["AllowedOrigins"] == ["https://app.example"]
    assert rules[CORS_RULE_ID]["ExposeHeaders"] == ["ETag"]
    # What a browser asks before its PUT, and what moto answers from the rule.
    preflight = httpx.options(
        f"{moto.url}/{name}/uploads/x?partNumber=1&uploadId=u",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "x-amz-checksum-sha256",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "ETag" in preflight.headers.get("access-control-expose-headers", "")


def test_the_cli_uploads_direct(s3_stack, api_user, moto, bucket, tmp_path):
    import json

    from tests.integration.test_cli import cli

    content = os.urandom(2 * PART + 5)
    path = tmp_path / "cli-direct.bin"
    path.write_bytes(content)
    done = cli(
        "--url", s3_stack.url, "--token", api_user.token, "--json", "upload", "--direct", str(path), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    (upload,) = json.loads(done.stdout)["uploads"]
    assert (upload["status"], upload["mode"], upload["partsTotal"]) == ("COMPLETED", "DIRECT", 3)
    assert upload["sha256"] == hashlib.sha256(content).hexdigest()  # declared by the CLI, verified by the worker
    key = FileUpload.objects.get(id=upload["id"]).storage_key
    assert moto.client().get_object(Bucket=bucket, Key=key)["Body"].read() == content
