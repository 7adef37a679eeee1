"""`uploadFiles`: several files in one request, all accepted or none (CONTRACT section 2)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import httpx

from backend.uploads.models import FileUpload
from tests.support.client import UPLOAD_FIELDS, data_of, error_codes, subscriber
from tests.support.uploads import open_staging_files, staging_entries, upload_wait_for_status

BATCH = f"mutation($files: [Upload!]!) {{ uploadFiles(files: $files) {{ {UPLOAD_FIELDS} }} }}"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def upload_files(url: str, contents: list[tuple[str, bytes]], headers: dict[str, str]) -> httpx.Response:
    operations = {"query": BATCH, "variables": {"files": [None] * len(contents)}}
    files: dict[str, Any] = {
        "operations": (None, json.dumps(operations), "application/json"),
        "map": (None, json.dumps({str(i): [f"variables.files.{i}"] for i in range(len(contents))}), "application/json"),
    }
    for index, (name, content) in enumerate(contents):
        files[str(index)] = (name, content, "application/octet-stream")
    return httpx.post(f"{url}/graphql", files=files, headers=headers, timeout=60)


def test_a_batch_becomes_one_upload_per_file_each_with_its_own_transfer_and_progress(make_stack, api_user) -> None:
    stack = make_stack(workers=2)
    contents = [("a.txt", b"first file\n"), ("b.bin", b"\x00\x01" * 700_000), ("c.txt", b"")]
    uploads = data_of(upload_files(stack.url, contents, api_user.headers))["uploadFiles"]
    assert [u["filename"] for u in uploads] == ["a.txt", "b.bin", "c.txt"]
    assert len({u["id"] for u in uploads}) == 3
    assert all(u["status"] == "QUEUED" for u in uploads)
    for upload, (_, content) in zip(uploads, contents, strict=True):
        assert upload["size"] == len(content)
        assert upload["sha256"] == hashlib.sha256(content).hexdigest()

    async def follow_all() -> list[list[dict[str, Any]]]:
        async with subscriber(stack.ws_url, api_user.token) as sub:
            ids = [await sub.subscribe(u["id"]) for u in uploads]
            by_sub: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
            open_ids = set(ids)
            while open_ids:
                message = await asyncio.wait_for(sub.receive(), timeout=60)
                if message["type"] == "complete":
                    open_ids.discard(message["id"])
                elif message["type"] == "next":
                    by_sub[message["id"]].append(message["payload"]["data"]["uploadProgress"])
            return [by_sub[i] for i in ids]

    streams = asyncio.run(follow_all())
    for upload, events in zip(uploads, streams, strict=True):
        assert {e["uploadId"] for e in events} == {upload["id"]}  # each its own progress
        assert events[-1]["status"] == "COMPLETED"
    for upload in uploads:
        done = upload_wait_for_status(stack.url, api_user.headers, upload["id"], {"COMPLETED"})
        assert done["downloadUrl"]
    assert FileUpload.objects.get(id=uploads[1]["id"]).parts_total == 2  # 1.4 MB in 1 MiB parts


def test_a_batch_with_one_refused_file_accepts_none_and_stages_nothing(make_stack, api_user, tmp_path) -> None:
    staging = tmp_path / "staging"
    stack = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_ALLOWED_TYPES": "image/png"}, workers=1)
    refused = upload_files(
        stack.url, [("one.png", PNG), ("two.txt", b"plain text"), ("three.png", PNG)], api_user.headers
    )
    assert refused.status_code == 200
    assert error_codes(refused) == ["UNSUPPORTED_MEDIA_TYPE"]
    message = refused.json()["errors"][0]["message"]
    assert message.startswith("file 2 (two.txt): ") and message.endswith("no file was accepted")
    assert not FileUpload.objects.filter(owner=api_user.user).exists()
    assert staging_entries(staging) == set()
    assert open_staging_files(stack.server.process.pid, staging) == []
    # The same files without the refused one go through.
    accepted = data_of(upload_files(stack.url, [("one.png", PNG), ("three.png", PNG)], api_user.headers))
    assert len(accepted["uploadFiles"]) == 2


def test_a_batch_over_the_quota_as_a_whole_is_refused_though_each_file_fits(make_stack, api_user, tmp_path) -> None:
    staging = tmp_path / "staging"
    stack = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_QUOTA_BYTES": "1000"}, workers=0)
    refused = upload_files(stack.url, [("a", b"a" * 400), ("b", b"b" * 400), ("c", b"c" * 400)], api_user.headers)
    assert error_codes(refused) == ["QUOTA_EXCEEDED"]
    assert "file 3 (c)" in refused.json()["errors"][0]["message"]
    assert not FileUpload.objects.filter(owner=api_user.user).exists()
    assert staging_entries(staging) == set()


def test_a_batch_over_the_active_uploads_limit_is_refused(make_stack, api_user, tmp_path) -> None:
    staging = tmp_path / "staging"
    stack = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_MAX_ACTIVE_PER_USER": "2"}, workers=0)
    refused = upload_files(stack.url, [("a", b"a"), ("b", b"b"), ("c", b"c")], api_user.headers)
    assert error_codes(refused) == ["TOO_MANY_ACTIVE_UPLOADS"]
    assert not FileUpload.objects.filter(owner=api_user.user).exists()
    assert staging_entries(staging) == set()


def test_an_empty_batch_is_bad_user_input_and_too_many_files_is_400(stack, api_user) -> None:
    operations = {"query": BATCH, "variables": {"files": []}}
    empty = httpx.post(f"{stack.url}/graphql", json=operations, headers=api_user.headers, timeout=30)
    assert error_codes(empty) == ["BAD_USER_INPUT"]
    eleven = upload_files(stack.url, [(f"f{i}", b"x") for i in range(11)], api_user.headers)
    assert eleven.status_code == 400
    assert error_codes(eleven) == ["BAD_REQUEST"]
