"""Hostile input on the tus routes (CONTRACT section 8), byte for byte on raw sockets where needed.

Every refusal answers its status with the contract's JSON code, never a 500; after each case the
server still serves, nothing of a refused or deleted upload is left in staging (nor held open by
the server), and the uploads that legitimately exist are unharmed.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.uploads.models import FileUpload
from tests.integration.test_hostile_input import Target, exchange
from tests.support.processes import wait_until
from tests.support.tus import TUS, code_of, metadata, tus_create, tus_delete, tus_head, tus_patch
from tests.support.uploads import open_staging_files, staging_entries, upload_wait_for_status

MAX = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def target(session_root: Path) -> Iterator[Target]:
    from tests.conftest import _new_stack

    staging = session_root / f"hostile-tus-{uuid.uuid4().hex[:6]}"
    env = {"UPLOAD_STAGING_DIR": str(staging), "REQUEST_IDLE_TIMEOUT_SECONDS": "2", "UPLOAD_MAX_BYTES": str(MAX)}
    stack = _new_stack(session_root, env=env, workers=1, faults=None, server="uvicorn")
    yield Target(stack=stack, staging=staging)
    stack.stop()


@pytest.fixture
def user(make_user: Callable[..., Any]) -> Any:
    return make_user()


def _live() -> set[str]:
    """The staged files that may exist: those of uploads still receiving, queued or uploading."""
    rows = FileUpload.objects.filter(status__in=("RECEIVING", "QUEUED", "UPLOADING"))
    return {str(upload_id) for upload_id in rows.values_list("id", flat=True)}


def assert_unharmed(target: Target, user: Any) -> None:
    assert httpx.get(f"{target.url}/healthz", timeout=10).json() == {"status": "ok"}
    options = httpx.options(f"{target.url}/uploads/", timeout=10)
    assert options.status_code == 204
    wait_until(lambda: staging_entries(target.staging) <= _live(), timeout=30, what="no staged leftovers")
    held = open_staging_files(target.stack.server.process.pid, target.staging)
    assert held == [], f"the server holds staged files open: {held}"


def _raw(target: Target, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Any:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{target.stack.server.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return exchange(target, ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"), body)


def _location_path(location: str) -> str:
    return "/uploads/" + location.rsplit("/", 1)[1]


BAD_INTEGERS = ["-1", "1e3", "0x10", "+5", "5 5", "", "99999999999999999999", "9223372036854775808", "1.0", "١٢"]


@pytest.mark.parametrize("value", BAD_INTEGERS)
def test_malformed_upload_lengths_are_bad_requests(target, user, value) -> None:
    answer = _raw(target, "POST", "/uploads/", {**TUS, **user.headers, "Upload-Length": value, "Content-Length": "0"})
    assert (answer.status, answer.code) == (400, "BAD_REQUEST"), answer
    assert not FileUpload.objects.filter(owner=user.user).exists()
    assert_unharmed(target, user)


@pytest.mark.parametrize("value", BAD_INTEGERS)
def test_malformed_offsets_are_bad_requests(target, user, value) -> None:
    location = tus_create(target.url, user.headers, length=10).headers["Location"]
    headers = {**TUS, **user.headers, "Content-Type": "application/offset+octet-stream"}
    answer = _raw(
        target, "PATCH", _location_path(location), {**headers, "Upload-Offset": value, "Content-Length": "1"}, b"x"
    )
    assert (answer.status, answer.code) == (400, "BAD_REQUEST"), answer
    assert tus_head(location, user.headers).headers["Upload-Offset"] == "0"
    assert_unharmed(target, user)


@pytest.mark.parametrize(
    "headers",
    [
        {"Upload-Length": str(MAX + 1)},
        {"Upload-Length": str(2**62)},
    ],
)
def test_lengths_over_the_limit_are_refused_before_a_byte(target, user, headers) -> None:
    answer = tus_create(target.url, user.headers, **{k.replace("-", "_"): v for k, v in headers.items()})
    assert (answer.status_code, code_of(answer)) == (413, "FILE_TOO_LARGE")
    assert not FileUpload.objects.filter(owner=user.user).exists()
    assert_unharmed(target, user)


@pytest.mark.parametrize(
    "headers",
    [
        {},  # neither a length nor a deferred one
        {"Upload-Length": "5", "Upload-Defer-Length": "1"},
        {"Upload-Defer-Length": "0"},
        {"Upload-Defer-Length": "yes"},
        {"Upload-Concat": "partial;x"},
        {"Upload-Concat": "final;"},
        {"Upload-Concat": "final;http://elsewhere.example/files/abc"},
        {"Upload-Concat": "final;/uploads/not-an-id"},
        {"Upload-Concat": "whole"},
        {"Upload-Length": "5", "Upload-Metadata": "filename"},  # a key without a value is fine: control
        {"Upload-Length": "5", "Upload-Metadata": "filename !!!"},
        {"Upload-Length": "5", "Upload-Metadata": "a b c"},
        {"Upload-Length": "5", "Upload-Metadata": ","},
        {"Upload-Length": "5", "Upload-Metadata": "filename aGk=,filename aGk="},
        {"Upload-Length": "5", "Upload-Metadata": "file\x7fname aGk="},
        {"Upload-Length": "5", "Upload-Metadata": "filename " + base64.b64encode(b"\xff\xfe").decode()},
        {"Upload-Length": "5", "Upload-Metadata": metadata(sha256="not hex")},
    ],
)
def test_malformed_creation_headers_are_bad_requests(target, user, headers) -> None:
    answer = _raw(target, "POST", "/uploads/", {**TUS, **user.headers, **headers, "Content-Length": "0"})
    if headers == {"Upload-Length": "5", "Upload-Metadata": "filename"}:
        assert answer.status == 201
        tus_delete(answer.headers["location"], user.headers)
    else:
        assert (answer.status, answer.code) == (400, "BAD_REQUEST"), (headers, answer)
        assert not FileUpload.objects.filter(owner=user.user).exists()
    assert_unharmed(target, user)


def test_bad_chunks_change_nothing(target, user) -> None:
    location = tus_create(target.url, user.headers, length=100).headers["Location"]
    assert tus_patch(location, user.headers, 0, b"a" * 10).status_code == 204
    cases = [
        (tus_patch(location, user.headers, 10, b"b", Upload_Checksum="whirlpool AAAA"), 400, "BAD_REQUEST"),
        (tus_patch(location, user.headers, 10, b"b", Upload_Checksum="sha1 " + "A" * 28), 460, "CHECKSUM_MISMATCH"),
        (tus_patch(location, user.headers, 10, b"b" * 91), 413, "FILE_TOO_LARGE"),
        (tus_patch(location, user.headers, 10, b"b", Upload_Length="50"), 400, "BAD_REQUEST"),
        (tus_patch(location, user.headers, 10, b"b", Content_Type="text/plain"), 415, "UNSUPPORTED_MEDIA_TYPE"),
        (
            httpx.patch(location, headers={**TUS, **user.headers}, content=b"b", timeout=10),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            tus_patch(location.replace(location.rsplit("/", 1)[1], str(uuid.uuid4())), user.headers, 0, b"b"),
            404,
            "NOT_FOUND",
        ),
        (tus_patch(f"{target.url}/uploads/not-an-id", user.headers, 0, b"b"), 404, "NOT_FOUND"),
        (tus_patch(f"{location}/more", user.headers, 10, b"b"), 404, "NOT_FOUND"),
        (httpx.get(location, headers={**TUS, **user.headers}, timeout=10), 405, "BAD_REQUEST"),
        (httpx.put(location, headers={**TUS, **user.headers}, content=b"b", timeout=10), 405, "BAD_REQUEST"),
    ]
    for answer, status, code in cases:
        assert (answer.status_code, code_of(answer)) == (status, code), answer.request.headers
    headers = {**TUS, **user.headers, "Content-Type": "application/offset+octet-stream", "Content-Length": "1"}
    no_offset = _raw(target, "PATCH", _location_path(location), headers, b"b")
    assert (no_offset.status, no_offset.code) == (400, "BAD_REQUEST")
    assert tus_head(location, user.headers).headers["Upload-Offset"] == "10"
    assert (target.staging / location.rsplit("/", 1)[1]).read_bytes() == b"a" * 10
    assert_unharmed(target, user)


def test_a_body_longer_than_its_content_length_writes_only_what_it_declared(target, user) -> None:
    location = tus_create(target.url, user.headers, length=100).headers["Location"]
    headers = {**TUS, **user.headers, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    answer = _raw(
        target, "PATCH", _location_path(location), {**headers, "Content-Length": "10"}, b"0123456789" + b"X" * 50
    )
    assert answer.status == 204 and answer.headers["upload-offset"] == "10"
    assert (target.staging / location.rsplit("/", 1)[1]).read_bytes() == b"0123456789"
    assert_unharmed(target, user)


def test_a_body_shorter_than_its_content_length_keeps_what_arrived(target, user) -> None:
    content = bytes(range(256)) * 8192  # 2 MiB
    sent = 1024 * 1024 + 5000
    location = tus_create(target.url, user.headers, length=len(content)).headers["Location"]
    head = (
        f"PATCH {_location_path(location)} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {user.token}\r\n"
        "Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {len(content)}\r\n\r\n"
    ).encode()
    exchange(target, head, content[:sent], then="vanish")

    def resumed() -> tuple[int, httpx.Response] | None:
        offset = int(tus_head(location, user.headers).headers["Upload-Offset"])
        staged = (target.staging / location.rsplit("/", 1)[1]).read_bytes()
        assert staged[:offset] == content[:offset]
        answer = tus_patch(location, user.headers, offset, content[offset:])
        return (offset, answer) if answer.status_code == 204 else None

    offset, _ = wait_until(resumed, timeout=15, what="the cut-off PATCH to end and the rest to be taken")
    # uvicorn drops what it had read but not yet handed over when it sees the hang-up (its 64 KiB
    # high-water buffer); everything handed over is kept.
    assert sent - 128 * 1024 <= offset <= sent
    done = upload_wait_for_status(target.url, user.headers, location.rsplit("/", 1)[1], {"COMPLETED", "FAILED"})
    assert done["sha256"] == hashlib.sha256(content).hexdigest()
    assert_unharmed(target, user)


def test_a_stalled_body_is_cut_off_and_keeps_what_arrived(target, user) -> None:
    location = tus_create(target.url, user.headers, length=100).headers["Location"]
    head = (
        f"PATCH {_location_path(location)} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {user.token}\r\n"
        "Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        "Content-Length: 50\r\n\r\n"
    ).encode()
    answer = exchange(target, head, b"s" * 30, then="stall")
    assert (answer.status, answer.code) == (408, "REQUEST_TIMEOUT")
    assert tus_head(location, user.headers).headers["Upload-Offset"] == "30"
    assert_unharmed(target, user)


def test_concurrent_patches_one_writes_the_others_are_refused(target, user) -> None:
    content = b"c" * (3 * 1024 * 1024)
    location = tus_create(target.url, user.headers, length=len(content)).headers["Location"]
    answers: list[httpx.Response] = []
    start = threading.Barrier(6)

    def send() -> None:
        start.wait()
        answers.append(tus_patch(location, user.headers, 0, content))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(204) == 1, statuses
    assert set(statuses) <= {204, 409, 423}, statuses
    for answer in answers:
        if answer.status_code != 204:
            assert code_of(answer) in ("UPLOAD_LOCKED", "OFFSET_MISMATCH")
    assert tus_head(location, user.headers).headers["Upload-Offset"] == str(len(content))
    assert_unharmed(target, user)


def test_final_uploads_of_what_is_not_a_complete_partial_of_ones_own(target, user, make_user) -> None:
    whole = tus_create(target.url, user.headers, length=3).headers["Location"]
    unfinished = tus_create(target.url, user.headers, length=3, Upload_Concat="partial").headers["Location"]
    stranger = make_user()
    theirs = tus_create(target.url, stranger.headers, length=1, Upload_Concat="partial").headers["Location"]
    tus_patch(theirs, stranger.headers, 0, b"t")
    cases = [
        (f"final;{whole}", 404, "NOT_FOUND"),  # not a partial upload
        (f"final;{theirs}", 404, "NOT_FOUND"),
        (f"final;/uploads/{uuid.uuid4()}", 404, "NOT_FOUND"),
        (f"final;{unfinished}", 400, "BAD_REQUEST"),
    ]
    for concat, status, code in cases:
        answer = tus_create(target.url, user.headers, Upload_Concat=concat)
        assert (answer.status_code, code_of(answer)) == (status, code), concat
    with_length = tus_create(target.url, user.headers, length=3, Upload_Concat=f"final;{unfinished}")
    assert (with_length.status_code, code_of(with_length)) == (400, "BAD_REQUEST")
    assert FileUpload.objects.filter(owner=user.user).count() == 2
    assert FileUpload.objects.get(id=theirs.rsplit("/", 1)[1]).bytes_received == 1
    assert_unharmed(target, user)


def test_delete_twice_and_requests_after_it(target, user) -> None:
    location = tus_create(target.url, user.headers, length=10).headers["Location"]
    tus_patch(location, user.headers, 0, b"d" * 5)
    assert tus_delete(location, user.headers).status_code == 204
    for answer in (tus_delete(location, user.headers), tus_patch(location, user.headers, 5, b"e")):
        assert (answer.status_code, code_of(answer)) == (410, "GONE")
    assert tus_head(location, user.headers).status_code == 410
    assert not (target.staging / location.rsplit("/", 1)[1]).exists()
    assert_unharmed(target, user)


def test_requests_to_an_expired_upload_are_gone(target, user) -> None:
    from django.utils import timezone

    location = tus_create(target.url, user.headers, length=10).headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    FileUpload.objects.filter(id=upload_id).update(expires_at=timezone.now() - timezone.timedelta(seconds=1))
    for answer in (tus_patch(location, user.headers, 0, b"x"), tus_delete(location, user.headers)):
        assert (answer.status_code, code_of(answer)) == (410, "GONE")
    assert tus_head(location, user.headers).status_code == 410
    assert FileUpload.objects.get(id=upload_id).status == "FAILED"
    assert_unharmed(target, user)


def test_chunked_bodies_without_a_content_length(target, user) -> None:
    location = tus_create(target.url, user.headers, length=10).headers["Location"]
    headers = {**TUS, **user.headers, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}

    def pieces(data: bytes) -> Iterator[bytes]:
        yield data[:3]
        yield data[3:]

    too_long = httpx.patch(location, headers=headers, content=pieces(b"q" * 11), timeout=10)
    assert (too_long.status_code, code_of(too_long)) == (413, "FILE_TOO_LARGE")
    offset = tus_head(location, user.headers).headers["Upload-Offset"]
    assert offset == "0", "a refused chunk keeps nothing past the last committed offset"
    fits = httpx.patch(location, headers=headers, content=pieces(b"q" * 10), timeout=10)
    assert fits.status_code == 204 and fits.headers["Upload-Offset"] == "10"
    assert_unharmed(target, user)
