"""tus-js-client (npm, in Node) against this server: abort and resume, parallel uploads, data in the POST."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx

from backend.uploads.models import FileUpload
from tests.support.tusjs import last_event, tus_js
from tests.support.uploads import upload_wait_for_status

MIB = 1024 * 1024


def _file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    content = os.urandom(size)
    path = tmp_path / "input.bin"
    path.write_bytes(content)
    return path, content


def _completed(stack, api_user, url: str, content: bytes) -> dict:
    upload_id = url.rsplit("/", 1)[1]
    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED", done
    assert done["sha256"] == hashlib.sha256(content).hexdigest()
    assert httpx.get(done["downloadUrl"], timeout=60).content == content
    return done


def _options(stack, api_user, path: Path, **extra) -> dict:
    return {"endpoint": f"{stack.url}/uploads/", "token": api_user.token, "file": str(path), **extra}


def test_an_upload_aborted_midway_resumes_from_its_url(stack, api_user, tmp_path) -> None:
    path, content = _file(tmp_path, 12 * MIB + 3)
    chunk = 2 * MIB
    first = tus_js(
        _options(stack, api_user, path, chunkSize=chunk, abortAfterBytes=5 * MIB, metadata={"filename": "resume.bin"})
    )
    aborted = last_event(first, "aborted")
    url = aborted["url"]
    assert url.startswith(f"{stack.url}/uploads/")
    assert FileUpload.objects.get(id=url.rsplit("/", 1)[1]).status == "RECEIVING"

    second = tus_js(_options(stack, api_user, path, chunkSize=chunk, uploadUrl=url))
    resumed_at = last_event(second, "head")["offset"]
    assert last_event(second, "success")["url"] == url
    assert 0 < resumed_at <= aborted["bytesSent"]
    assert aborted["bytesSent"] - resumed_at <= chunk, "bytes sent again after the resume stay within a chunk"
    posts = [e for e in second if e["event"] == "request" and e["method"] == "POST"]
    assert posts == [], "resuming creates no new upload"
    done = _completed(stack, api_user, url, content)
    assert done["filename"] == "resume.bin"


def test_one_patch_cut_off_midway_keeps_what_arrived(stack, api_user, tmp_path) -> None:
    path, content = _file(tmp_path, 24 * MIB)
    first = tus_js(_options(stack, api_user, path, abortAfterBytes=9 * MIB))  # chunkSize Infinity: one PATCH
    aborted = last_event(first, "aborted")
    second = tus_js(_options(stack, api_user, path, uploadUrl=aborted["url"]))
    resumed_at = last_event(second, "head")["offset"]
    # The client counts bytes handed to the socket; the server has what reached it.
    assert resumed_at > 0, "the bytes that arrived before the cut are kept"
    assert aborted["bytesSent"] - resumed_at <= 8 * MIB
    _completed(stack, api_user, aborted["url"], content)


def test_parallel_uploads_are_concatenated(stack, api_user, tmp_path) -> None:
    path, content = _file(tmp_path, 9 * MIB + 11)
    events = tus_js(_options(stack, api_user, path, parallelUploads=3, metadata={"filename": "parallel.bin"}))
    success = last_event(events, "success")
    posts = [e for e in events if e["event"] == "request" and e["method"] == "POST"]
    assert len(posts) == 4, "three partial uploads and the final one"
    done = _completed(stack, api_user, success["url"], content)
    assert done["filename"] == "parallel.bin"
    assert FileUpload.objects.filter(owner=api_user.user).count() == 1, "the partial uploads are gone"


def test_upload_data_during_creation(stack, api_user, tmp_path) -> None:
    path, content = _file(tmp_path, 3 * MIB + 5)
    events = tus_js(_options(stack, api_user, path, uploadDataDuringCreation=True, chunkSize=2 * MIB))
    methods = [e["method"] for e in events if e["event"] == "request"]
    assert methods == ["POST", "PATCH"], methods
    _completed(stack, api_user, last_event(events, "success")["url"], content)


def test_an_empty_file(stack, api_user, tmp_path) -> None:
    path, content = _file(tmp_path, 0)
    events = tus_js(_options(stack, api_user, path))
    done = _completed(stack, api_user, last_event(events, "success")["url"], content)
    assert done["size"] == 0
