"""Resumable uploads through GraphQL (createUpload, uploadChunk): real server, workers and Redis."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from backend.uploads.models import FileUpload
from tests.support.client import data_of, error_codes, subscriber, upload_file
from tests.support.resumable import QUERY, create_upload, upload_chunk
from tests.support.uploads import upload_wait_for_status

MIB = 1024 * 1024


def _staged(upload_id: str) -> Path:
    return Path(os.environ["UPLOAD_STAGING_DIR"]) / upload_id


def test_create_upload_answers_receiving_with_its_resume_url(stack, api_user) -> None:
    before = datetime.now().astimezone()
    created = data_of(create_upload(stack.url, api_user.headers, filename="../notes.txt", size=3 * MIB))["createUpload"]
    assert (created["status"], created["mode"], created["filename"]) == ("RECEIVING", "RESUMABLE", "notes.txt")
    assert (created["size"], created["bytesReceived"], created["bytesUploaded"], created["sha256"]) == (
        3 * MIB,
        0,
        0,
        None,
    )
    assert created["resumeUrl"] == f"{stack.url}/uploads/{created['id']}"
    assert created["partSize"] == MIB and created["partsTotal"] == 3
    expires = datetime.fromisoformat(created["expiresAt"])
    assert before + timedelta(seconds=86400 - 60) < expires < before + timedelta(seconds=86400 + 60)
    assert _staged(created["id"]).stat().st_size == 0


def test_single_uploads_report_mode_single_with_every_byte_received(stack, api_user) -> None:
    content = os.urandom(1000)
    upload = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]
    got = data_of(
        httpx.post(
            f"{stack.url}/graphql", json={"query": QUERY, "variables": {"id": upload["id"]}}, headers=api_user.headers
        )
    )["upload"]
    assert (got["mode"], got["bytesReceived"], got["resumeUrl"], got["expiresAt"]) == ("SINGLE", 1000, None, None)


def test_direct_and_single_modes_are_refused_by_create_upload(stack, api_user) -> None:
    for mode in ("DIRECT", "SINGLE"):
        response = create_upload(stack.url, api_user.headers, filename="a.bin", size=10, mode=mode)
        assert error_codes(response) == ["BAD_USER_INPUT"], response.json()
    assert not FileUpload.objects.filter(owner=api_user.user).exists()


def test_create_upload_refusals_store_nothing(make_stack, api_user) -> None:
    stack = make_stack(env={"UPLOAD_MAX_BYTES": str(4 * MIB), "UPLOAD_MAX_ACTIVE_PER_USER": "1"}, workers=0)
    cases = [
        ({"filename": "a", "size": 4 * MIB + 1}, "FILE_TOO_LARGE"),
        ({"filename": "a", "size": -1}, "BAD_USER_INPUT"),
        ({"filename": "a", "size": 10, "sha256": "abc"}, "BAD_USER_INPUT"),
    ]
    for fields, code in cases:
        assert error_codes(create_upload(stack.url, api_user.headers, **fields)) == [code], fields
    assert not FileUpload.objects.filter(owner=api_user.user).exists()
    data_of(create_upload(stack.url, api_user.headers, filename="first", size=10))
    # RECEIVING counts as active: the second is over the cap of one.
    assert error_codes(create_upload(stack.url, api_user.headers, filename="second", size=10)) == [
        "TOO_MANY_ACTIVE_UPLOADS"
    ]
    assert FileUpload.objects.filter(owner=api_user.user).count() == 1


def test_chunks_append_in_order_then_the_upload_is_queued_and_completed(stack, api_user) -> None:
    content = os.urandom(2 * MIB + 777)
    digest = hashlib.sha256(content).hexdigest()
    created = data_of(create_upload(stack.url, api_user.headers, filename="c.bin", size=len(content), sha256=digest))
    upload_id = created["createUpload"]["id"]
    cuts = [0, MIB, MIB + 5, len(content)]

    async def follow() -> list[dict[str, Any]]:
        async with subscriber(stack.ws_url, api_user.token) as session:
            sub_id = await session.subscribe(upload_id)
            first = await session.receive()
            events = [first["payload"]["data"]["uploadProgress"]]
            for start, end in itertools.pairwise(cuts):
                chunk = await asyncio.to_thread(
                    upload_chunk, stack.url, api_user.headers, upload_id, start, content[start:end]
                )
                got = data_of(chunk)["uploadChunk"]
                assert got["bytesReceived"] == end
                assert got["status"] == ("QUEUED" if end == len(content) else "RECEIVING")
            return await session.events_until_complete(sub_id, events)

    events = asyncio.run(follow())
    assert events[0]["status"] == "RECEIVING" and events[0]["bytesReceived"] == 0
    receiving = [e for e in events if e["status"] == "RECEIVING"]
    assert [e["bytesReceived"] for e in receiving] == sorted(e["bytesReceived"] for e in receiving)
    assert events[-1]["status"] == "COMPLETED"
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(set(sequences)), "RECEIVING and transfer events share one sequence"
    assert "QUEUED" in [e["status"] for e in events]

    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED" and done["sha256"] == digest and done["size"] == len(content)
    assert httpx.get(done["downloadUrl"], timeout=30).content == content


def test_a_chunk_at_the_wrong_offset_is_refused_with_the_current_offset(stack, api_user) -> None:
    upload_id = data_of(create_upload(stack.url, api_user.headers, filename="o.bin", size=100))["createUpload"]["id"]
    data_of(upload_chunk(stack.url, api_user.headers, upload_id, 0, b"x" * 40))
    for offset in (0, 39, 41):
        response = upload_chunk(stack.url, api_user.headers, upload_id, offset, b"y" * 10)
        errors = response.json()["errors"]
        assert [e["extensions"]["code"] for e in errors] == ["OFFSET_MISMATCH"]
        assert errors[0]["extensions"]["offset"] == 40
    past = upload_chunk(stack.url, api_user.headers, upload_id, 40, b"z" * 61)
    assert error_codes(past) == ["FILE_TOO_LARGE"]
    assert _staged(upload_id).read_bytes() == b"x" * 40
    assert FileUpload.objects.get(id=upload_id).bytes_received == 40


def test_a_declared_sha256_that_does_not_match_ends_the_upload_failed(stack, api_user) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    upload_id = data_of(create_upload(stack.url, api_user.headers, filename="s.bin", size=5, sha256=wrong))[
        "createUpload"
    ]["id"]
    assert error_codes(upload_chunk(stack.url, api_user.headers, upload_id, 0, b"hello")) == ["CHECKSUM_MISMATCH"]
    row = FileUpload.objects.get(id=upload_id)
    assert row.status == "FAILED" and "CHECKSUM_MISMATCH" in row.error
    assert not _staged(upload_id).exists()


def test_cancel_while_receiving_removes_the_bytes_and_refuses_more(stack, api_user) -> None:
    upload_id = data_of(create_upload(stack.url, api_user.headers, filename="x.bin", size=100))["createUpload"]["id"]
    data_of(upload_chunk(stack.url, api_user.headers, upload_id, 0, b"a" * 10))
    cancel = "mutation($id: ID!) { cancelUpload(id: $id) { status } }"
    answer = httpx.post(
        f"{stack.url}/graphql", json={"query": cancel, "variables": {"id": upload_id}}, headers=api_user.headers
    )
    assert data_of(answer)["cancelUpload"]["status"] == "CANCELLED"
    assert not _staged(upload_id).exists()
    assert error_codes(upload_chunk(stack.url, api_user.headers, upload_id, 10, b"b")) == ["GONE"]
    retry = "mutation($id: ID!) { retryUpload(id: $id) { status } }"
    again = httpx.post(
        f"{stack.url}/graphql", json={"query": retry, "variables": {"id": upload_id}}, headers=api_user.headers
    )
    assert error_codes(again) == ["INVALID_STATE"], "nothing to retry: the bytes never all arrived"


def test_chunks_of_someone_elses_upload_are_not_found(stack, make_user) -> None:
    owner, other = make_user(), make_user()
    upload_id = data_of(create_upload(stack.url, owner.headers, filename="mine", size=10))["createUpload"]["id"]
    assert error_codes(upload_chunk(stack.url, other.headers, upload_id, 0, b"x")) == ["NOT_FOUND"]
    assert FileUpload.objects.get(id=upload_id).bytes_received == 0
