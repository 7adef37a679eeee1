"""The upload path end to end: real server over TCP, real RQ workers, real Redis."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings
from django.utils import timezone

from backend.uploads.models import FileUpload
from tests.support.client import data_of, error_codes, graphql, upload_file
from tests.support.uploads import Gate, incoming_entries, open_staging_files, staging_entries, upload_wait_for_status

MIB = 1024 * 1024


def test_multipart_upload_is_stored_byte_identical(stack, api_user) -> None:
    content = os.urandom(5 * MIB + 12345)
    response = upload_file(stack.url, content, filename="photo.bin", headers=api_user.headers)
    upload = data_of(response)["uploadFile"]
    assert upload["status"] == "QUEUED"
    assert upload["size"] == len(content)
    assert upload["sha256"] == hashlib.sha256(content).hexdigest()
    assert upload["partsTotal"] == 6

    done = upload_wait_for_status(stack.url, api_user.headers, upload["id"], {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED", done
    assert (done["partsUploaded"], done["bytesUploaded"], done["progress"]) == (6, len(content), 1.0)
    downloaded = httpx.get(done["downloadUrl"], timeout=30)
    assert downloaded.status_code == 200
    assert hashlib.sha256(downloaded.content).hexdigest() == hashlib.sha256(content).hexdigest()
    assert not (Path(os.environ["UPLOAD_STAGING_DIR"]) / upload["id"]).exists()


def test_empty_file_completes_as_an_empty_object(stack, api_user) -> None:
    upload = data_of(upload_file(stack.url, b"", filename="empty.txt", headers=api_user.headers))["uploadFile"]
    assert (upload["status"], upload["size"], upload["partsTotal"]) == ("QUEUED", 0, 0)
    assert upload["sha256"] == hashlib.sha256(b"").hexdigest()
    assert upload["progress"] == 0.0

    done = upload_wait_for_status(stack.url, api_user.headers, upload["id"], {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED", done
    assert (done["partsTotal"], done["partsUploaded"], done["bytesUploaded"], done["progress"]) == (0, 0, 0, 1.0)
    stored = Path(os.environ["LOCAL_STORAGE_ROOT"]) / done["storageKey"]
    assert stored.is_file() and stored.stat().st_size == 0
    downloaded = httpx.get(done["downloadUrl"], timeout=30)
    assert (downloaded.status_code, downloaded.content) == (200, b"")


# --- checksums: refused uploads leave nothing behind -------------------------------------------


def _assert_refused(response: httpx.Response, code: str, user, staged_before: set[str]) -> None:
    assert response.status_code == 200, response.text
    assert error_codes(response) == [code], response.json()
    assert response.json()["data"] is None
    assert not FileUpload.objects.filter(owner=user.user).exists()
    assert staging_entries() <= staged_before
    assert incoming_entries() == []


def test_checksum_mismatch_is_refused_without_a_trace(stack, api_user) -> None:
    content = os.urandom(2 * MIB + 1)
    before = staging_entries()
    response = upload_file(stack.url, content, headers=api_user.headers, sha256=hashlib.sha256(b"other").hexdigest())
    _assert_refused(response, "CHECKSUM_MISMATCH", api_user, before)


@pytest.mark.parametrize(
    "sha256",
    ["abc", "g" * 64, "0" * 63, "0" * 65, " " + "0" * 63, "0x" + "0" * 62, ""],
    ids=["short", "not-hex", "63", "65", "space", "0x", "empty"],
)
def test_malformed_sha256_is_bad_user_input(stack, api_user, sha256: str) -> None:
    before = staging_entries()
    response = upload_file(stack.url, b"some bytes", headers=api_user.headers, sha256=sha256)
    _assert_refused(response, "BAD_USER_INPUT", api_user, before)


def test_uppercase_sha256_is_accepted(stack, api_user) -> None:
    content = os.urandom(1000)
    digest = hashlib.sha256(content).hexdigest()
    upload = data_of(upload_file(stack.url, content, headers=api_user.headers, sha256=digest.upper()))["uploadFile"]
    assert upload["sha256"] == digest
    done = upload_wait_for_status(stack.url, api_user.headers, upload["id"], {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED", done


# --- the mutation does not wait for the bucket ---------------------------------------------------


def test_upload_answers_while_the_bucket_has_not_taken_one_part(make_stack, api_user, tmp_path) -> None:
    # The worker holds part 1 at a gate until after the answer: a mutation that waited for the
    # bucket would never answer (the client gives up after 120 s and the test fails).
    gate = Gate(tmp_path / "gate", part=1)
    held = make_stack(env={"UPLOAD_PART_CONCURRENCY": "1"}, faults=gate.plan)
    content = os.urandom(MIB + 1)  # two parts

    upload = data_of(upload_file(held.url, content, headers=api_user.headers))["uploadFile"]
    assert upload["status"] == "QUEUED"
    gate.reached()
    row = FileUpload.objects.get(id=upload["id"])
    assert (row.status, row.parts_uploaded) == ("UPLOADING", 0), "answered, and the bucket has no part yet"

    gate.open()
    done = upload_wait_for_status(held.url, api_user.headers, upload["id"], {"COMPLETED", "FAILED"}, timeout=30)
    assert done["status"] == "COMPLETED", done


def test_queueing_uploads_reuses_the_servers_redis_connection(make_stack, api_user) -> None:
    # A new connection per enqueue (connect, handshakes, RQ's INFO) was a third of a small answer.
    quiet = make_stack(workers=0)
    redis_server = redis.Redis.from_url(quiet.env["REDIS_URL"])
    data_of(upload_file(quiet.url, os.urandom(1024), headers=api_user.headers))  # connections made once
    before = redis_server.info("stats")["total_connections_received"]
    for _ in range(5):
        assert data_of(upload_file(quiet.url, os.urandom(1024), headers=api_user.headers))["uploadFile"]["id"]
    after = redis_server.info("stats")["total_connections_received"]
    redis_server.close()
    assert after - before <= 1, f"{after - before} Redis connections for 5 uploads"


# --- listing ---------------------------------------------------------------------------------

LIST_QUERY = """query($first: Int, $after: String, $status: UploadStatus) {
  uploads(first: $first, after: $after, status: $status) {
    totalCount pageInfo { hasNextPage endCursor } edges { cursor node { id status } } } }"""


def _listed_rows(user, statuses: list[str]) -> list[tuple[str, str]]:
    """Rows of `user` made directly with chosen statuses and creation times, the third and fourth
    sharing one (the id breaks the tie). Returns (id, status) newest first: the order to expect.
    """
    now = timezone.now().replace(microsecond=0)
    minutes_ago = [10, 9, 8, 8, 7]
    made = []
    for index, status in enumerate(statuses):
        row = FileUpload.objects.create(
            owner=user,
            filename=f"file-{index}.txt",
            content_type="text/plain",
            size=10,
            sha256="0" * 64,
            status=status,
            storage_backend="local",
            storage_key=f"uploads/listing/{uuid.uuid4()}",
        )
        FileUpload.objects.filter(id=row.id).update(created_at=now - timedelta(minutes=minutes_ago[index]))
        made.append(FileUpload.objects.get(id=row.id))
    made.sort(key=lambda r: (r.created_at, r.id.hex), reverse=True)
    return [(str(r.id), r.status) for r in made]


def _ids(page: dict) -> list[str]:
    return [edge["node"]["id"] for edge in page["edges"]]


def _list(url: str, headers: dict[str, str], **variables) -> dict:
    return data_of(graphql(url, LIST_QUERY, variables, headers))["uploads"]


def test_uploads_pages_newest_first_with_cursors(stack, api_user, make_user) -> None:
    statuses = ["COMPLETED", "FAILED", "COMPLETED", "CANCELLED", "COMPLETED"]
    expected = _listed_rows(api_user.user, statuses)
    _listed_rows(make_user().user, ["COMPLETED"])  # someone else's: never listed
    expected_ids = [upload_id for upload_id, _ in expected]

    seen, after, pages = [], None, 0
    while True:
        page = _list(stack.url, api_user.headers, first=2, after=after)
        pages += 1
        assert page["totalCount"] == 5
        assert page["edges"][-1]["cursor"] == page["pageInfo"]["endCursor"]
        seen += _ids(page)
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert (seen, pages) == (expected_ids, 3)

    whole = _list(stack.url, api_user.headers)
    assert _ids(whole) == expected_ids
    assert whole["pageInfo"] == {"hasNextPage": False, "endCursor": whole["edges"][-1]["cursor"]}

    completed_ids = [upload_id for upload_id, status in expected if status == "COMPLETED"]
    first = _list(stack.url, api_user.headers, status="COMPLETED", first=2)
    assert (first["totalCount"], first["pageInfo"]["hasNextPage"]) == (3, True)
    rest = _list(stack.url, api_user.headers, status="COMPLETED", after=first["pageInfo"]["endCursor"])
    assert (rest["totalCount"], rest["pageInfo"]["hasNextPage"]) == (3, False)
    assert _ids(first) + _ids(rest) == completed_ids

    failed = _list(stack.url, api_user.headers, status="FAILED")
    assert (failed["totalCount"], [e["node"]["status"] for e in failed["edges"]]) == (1, ["FAILED"])
    assert _list(stack.url, api_user.headers, status="QUEUED") == {
        "totalCount": 0,
        "pageInfo": {"hasNextPage": False, "endCursor": None},
        "edges": [],
    }
    none = _list(stack.url, api_user.headers, first=0)
    assert (none["edges"], none["totalCount"], none["pageInfo"]["hasNextPage"]) == ([], 5, True)
    assert len(_list(stack.url, api_user.headers, first=100)["edges"]) == 5


@pytest.mark.parametrize(
    "variables",
    [{"first": 101}, {"first": 1000}, {"first": -1}, {"after": "not a cursor"}, {"after": "bm90IGEgY3Vyc29y"}],
    ids=["101", "1000", "negative", "garbage-cursor", "base64-garbage-cursor"],
)
def test_uploads_refuses_bad_arguments(stack, api_user, variables) -> None:
    response = graphql(stack.url, LIST_QUERY, variables, api_user.headers)
    assert response.status_code == 200
    assert error_codes(response) == ["BAD_USER_INPUT"], response.json()


# --- probes ----------------------------------------------------------------------------------


def test_healthz(stack) -> None:
    response = httpx.get(f"{stack.url}/healthz", timeout=10)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_reports_every_dependency(stack) -> None:
    response = httpx.get(f"{stack.url}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "redis": "ok", "database": "ok", "storage": "ok", "staging": "ok"}


# --- requests refused before GraphQL runs ----------------------------------------------------


def _assert_refusal(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert [e["extensions"]["code"] for e in body["errors"]] == [code]
    assert body["errors"][0]["message"]


def _multipart(operations: str | None, files_map: str | None, files: dict[str, bytes]) -> dict:
    parts: dict = {}
    if operations is not None:
        parts["operations"] = (None, operations, "application/json")
    if files_map is not None:
        parts["map"] = (None, files_map, "application/json")
    for name, content in files.items():
        parts[name] = ("f.bin", content, "application/octet-stream")
    return parts


def test_multipart_without_content_length_is_411(stack, api_user) -> None:
    def body():
        yield b'--xyz\r\nContent-Disposition: form-data; name="operations"\r\n\r\n{}\r\n--xyz--\r\n'

    headers = {**api_user.headers, "Content-Type": "multipart/form-data; boundary=xyz"}
    response = httpx.post(f"{stack.url}/graphql", content=body(), headers=headers, timeout=10)
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    _assert_refusal(response, 411, "LENGTH_REQUIRED")


def _raw_request(url: str, head: str) -> tuple[int, dict]:
    """Send only the request head; read the answer the server gives before any body arrives."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode())
        received = b""
        while b"\r\n\r\n" not in received or not _body_complete(received):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    head_bytes, _, body = received.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return status, json.loads(body)


def _body_complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def test_content_length_over_the_limit_is_refused_before_the_body(stack, api_user) -> None:
    too_long = settings.UPLOAD_MAX_BYTES + MIB + 1
    head = (
        "POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {api_user.headers['Authorization']}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {too_long}\r\n\r\n"
    )
    status, body = _raw_request(stack.url, head)
    assert status == 413
    assert body["errors"][0]["extensions"]["code"] == "FILE_TOO_LARGE"


def test_file_over_the_limit_inside_the_envelope_allowance_is_413(make_stack, api_user, tmp_path) -> None:
    staging = tmp_path / "staging"
    small = make_stack(env={"UPLOAD_MAX_BYTES": str(MIB), "UPLOAD_STAGING_DIR": str(staging)})
    # Content-Length passes the header check (limit + 1 MiB); the file itself is one byte over.
    response = upload_file(small.url, os.urandom(MIB + 1), headers=api_user.headers)
    _assert_refusal(response, 413, "FILE_TOO_LARGE")
    assert staging_entries(staging) == set()
    assert open_staging_files(small.server.process.pid, staging) == []
    assert not FileUpload.objects.filter(owner=api_user.user).exists()

    exactly = os.urandom(MIB)
    upload = data_of(upload_file(small.url, exactly, headers=api_user.headers))["uploadFile"]
    done = upload_wait_for_status(small.url, api_user.headers, upload["id"], {"COMPLETED", "FAILED"})
    assert (done["status"], done["size"]) == ("COMPLETED", MIB)
    assert staging_entries(staging) == set()


UPLOAD_OPERATIONS = json.dumps(
    {"query": "mutation($file: Upload!) { uploadFile(file: $file) { id } }", "variables": {"file": None}}
)
GOOD_MAP = json.dumps({"0": ["variables.file"]})


@pytest.mark.parametrize(
    ("operations", "files_map", "files"),
    [
        ("{not json", GOOD_MAP, {"0": b"x"}),
        (None, GOOD_MAP, {"0": b"x"}),
        ('"a string"', GOOD_MAP, {"0": b"x"}),
        ("42", GOOD_MAP, {"0": b"x"}),
        (UPLOAD_OPERATIONS, "{not json", {"0": b"x"}),
        (UPLOAD_OPERATIONS, '["variables.file"]', {"0": b"x"}),
        (UPLOAD_OPERATIONS, '{"0": "variables.file"}', {"0": b"x"}),
        (UPLOAD_OPERATIONS, '{"0": [1]}', {"0": b"x"}),
        (UPLOAD_OPERATIONS, '{"1": ["variables.file"]}', {"0": b"x"}),
        (UPLOAD_OPERATIONS, '{"0": ["variables.nothing.here"]}', {"0": b"x"}),
        (UPLOAD_OPERATIONS, '{"0": ["query"]}', {"0": b"x"}),
        (UPLOAD_OPERATIONS, GOOD_MAP, {"0": b"x", "1": b"y"}),
    ],
    ids=[
        "operations-not-json",
        "operations-missing",
        "operations-string",
        "operations-number",
        "map-not-json",
        "map-a-list",
        "map-entry-not-a-list",
        "map-path-not-a-string",
        "map-names-a-missing-file",
        "map-path-missing",
        "map-path-not-a-placeholder",
        "file-not-in-map",
    ],
)
def test_malformed_multipart_requests_are_400(stack, api_user, operations, files_map, files) -> None:
    before = staging_entries()
    response = httpx.post(
        f"{stack.url}/graphql", files=_multipart(operations, files_map, files), headers=api_user.headers, timeout=10
    )
    _assert_refusal(response, 400, "BAD_REQUEST")
    assert staging_entries() <= before
    assert incoming_entries() == []
    assert open_staging_files(stack.server.process.pid) == []
    assert not FileUpload.objects.filter(owner=api_user.user).exists()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=xyz", b"this is not multipart at all"),
        ("multipart/form-data; boundary=xyz", b'--xyz\r\nContent-Disposition: form-data; name="0"; filename="a"\r\n'),
        ("multipart/form-data", b"--xyz\r\n\r\n--xyz--\r\n"),
        ("multipart/form-data; boundary=" + "b" * 100, b"--x--"),
        ("application/json", b"{not json"),
        ("application/json", b"[1, 2"),
    ],
    ids=["no-parts", "truncated-part", "no-boundary", "boundary-too-long", "json-broken", "json-truncated"],
)
def test_malformed_bodies_are_400_not_500(stack, api_user, content_type, body) -> None:
    before = staging_entries()
    headers = {**api_user.headers, "Content-Type": content_type}
    response = httpx.post(f"{stack.url}/graphql", content=body, headers=headers, timeout=10)
    _assert_refusal(response, 400, "BAD_REQUEST")
    assert staging_entries() <= before
    assert incoming_entries() == []
