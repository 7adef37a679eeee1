"""The tus 1.0.0 protocol at /uploads/, request by request: real uvicorn, workers and Redis."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from backend.uploads.models import FileUpload
from tests.support.client import data_of, graphql
from tests.support.tus import TUS, code_of, metadata, tus_create, tus_delete, tus_head, tus_patch
from tests.support.uploads import upload_wait_for_status

MIB = 1024 * 1024
LIST = "{ uploads(first: 100) { edges { node { id } } } }"


def _staged(location: str) -> Path:
    return Path(os.environ["UPLOAD_STAGING_DIR"]) / location.rsplit("/", 1)[1]


def _id(location: str) -> str:
    return location.rsplit("/", 1)[1]


def test_options_answers_the_servers_capabilities_without_credentials(stack) -> None:
    answer = httpx.options(f"{stack.url}/uploads/", timeout=10)
    assert answer.status_code == 204
    assert answer.headers["Tus-Version"] == "1.0.0" and answer.headers["Tus-Resumable"] == "1.0.0"
    assert set(answer.headers["Tus-Extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
    }
    assert answer.headers["Tus-Max-Size"] == str(5 * 1024**3)
    assert set(answer.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "md5", "crc32", "sha256"}


def test_requests_need_the_tus_version_and_credentials(stack, api_user) -> None:
    no_version = httpx.post(f"{stack.url}/uploads/", headers={**api_user.headers, "Upload-Length": "1"}, timeout=10)
    assert (no_version.status_code, code_of(no_version)) == (412, "PRECONDITION_FAILED")
    assert no_version.headers["Tus-Version"] == "1.0.0"
    old = httpx.post(f"{stack.url}/uploads/", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "1"}, timeout=10)
    assert old.status_code == 412
    anonymous = tus_create(stack.url, {}, length=10)
    assert (anonymous.status_code, code_of(anonymous)) == (401, "UNAUTHENTICATED")
    bad_token = tus_create(stack.url, {"Authorization": "Bearer nope"}, length=10)
    assert (bad_token.status_code, code_of(bad_token)) == (401, "UNAUTHENTICATED")
    assert not FileUpload.objects.filter(owner=api_user.user).exists()


def test_create_head_patch_in_chunks_then_the_upload_completes(stack, api_user) -> None:
    content = os.urandom(3 * MIB + 100)
    digest = hashlib.sha256(content).hexdigest()
    created = tus_create(
        stack.url, api_user.headers, length=len(content), Upload_Metadata=metadata(filename="big.bin", sha256=digest)
    )
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    assert location.startswith(f"{stack.url}/uploads/")
    expires = parsedate_to_datetime(created.headers["Upload-Expires"])
    assert expires.tzinfo is not None
    head = tus_head(location, api_user.headers)
    assert head.status_code == 200
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("0", str(len(content)))
    assert head.headers["Cache-Control"] == "no-store"
    assert head.headers["Tus-Resumable"] == "1.0.0"
    assert "sha256" in head.headers["Upload-Metadata"]

    offset = 0
    for size in (MIB, 2 * MIB, 100):
        answer = tus_patch(location, api_user.headers, offset, content[offset : offset + size])
        assert answer.status_code == 204, answer.text
        offset += size
        assert answer.headers["Upload-Offset"] == str(offset)
    assert "Upload-Expires" not in answer.headers, "a whole upload no longer expires"
    done = upload_wait_for_status(stack.url, api_user.headers, _id(location), {"COMPLETED", "FAILED"})
    assert (done["status"], done["sha256"], done["filename"]) == ("COMPLETED", digest, "big.bin")
    assert httpx.get(done["downloadUrl"], timeout=30).content == content
    assert tus_head(location, api_user.headers).headers["Upload-Offset"] == str(len(content))


def test_creation_with_upload_stores_the_body_and_answers_the_offset(stack, api_user) -> None:
    content = os.urandom(500_000)
    created = tus_create(stack.url, api_user.headers, length=1_000_000, content=content)
    assert created.status_code == 201, created.text
    assert created.headers["Upload-Offset"] == str(len(content))
    location = created.headers["Location"]
    assert _staged(location).read_bytes() == content
    rest = os.urandom(500_000)
    assert tus_patch(location, api_user.headers, len(content), rest).status_code == 204
    done = upload_wait_for_status(stack.url, api_user.headers, _id(location), {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED" and done["filename"] == "upload"
    assert httpx.get(done["downloadUrl"], timeout=30).content == content + rest


def test_offsets_content_type_and_length_are_enforced(stack, api_user) -> None:
    location = tus_create(stack.url, api_user.headers, length=100).headers["Location"]
    assert tus_patch(location, api_user.headers, 0, b"a" * 40).status_code == 204
    for wrong in (0, 39, 41, 100):
        answer = tus_patch(location, api_user.headers, wrong, b"b" * 10)
        assert (answer.status_code, code_of(answer)) == (409, "OFFSET_MISMATCH")
        assert answer.headers["Upload-Offset"] == "40"
    plain = tus_patch(location, api_user.headers, 40, b"c", Content_Type="application/octet-stream")
    assert plain.status_code == 415
    past = tus_patch(location, api_user.headers, 40, b"d" * 61)
    assert (past.status_code, code_of(past)) == (413, "FILE_TOO_LARGE")
    assert _staged(location).read_bytes() == b"a" * 40
    assert tus_head(location, api_user.headers).headers["Upload-Offset"] == "40"


@pytest.mark.parametrize(
    "algorithm,digest",
    [
        ("sha1", lambda b: hashlib.sha1(b).digest()),
        ("md5", lambda b: hashlib.md5(b).digest()),
        ("sha256", lambda b: hashlib.sha256(b).digest()),
        ("crc32", lambda b: zlib.crc32(b).to_bytes(4, "big")),
    ],
)
def test_chunk_checksums_are_verified(stack, api_user, algorithm, digest) -> None:
    location = tus_create(stack.url, api_user.headers, length=20).headers["Location"]
    good = base64.b64encode(digest(b"0123456789")).decode()
    bad = base64.b64encode(digest(b"something else")).decode()
    refused = tus_patch(location, api_user.headers, 0, b"0123456789", Upload_Checksum=f"{algorithm} {bad}")
    assert (refused.status_code, code_of(refused)) == (460, "CHECKSUM_MISMATCH")
    assert tus_head(location, api_user.headers).headers["Upload-Offset"] == "0"
    assert _staged(location).read_bytes() == b""
    accepted = tus_patch(location, api_user.headers, 0, b"0123456789", Upload_Checksum=f"{algorithm} {good}")
    assert accepted.status_code == 204 and accepted.headers["Upload-Offset"] == "10"


def test_an_unknown_checksum_algorithm_is_a_bad_request(stack, api_user) -> None:
    location = tus_create(stack.url, api_user.headers, length=20).headers["Location"]
    for header in ("sha3 AAAA", "SHA1 AAAA", "sha1 not-base64!", "sha1"):
        answer = tus_patch(location, api_user.headers, 0, b"x", Upload_Checksum=header)
        assert (answer.status_code, code_of(answer)) == (400, "BAD_REQUEST"), header
    assert tus_head(location, api_user.headers).headers["Upload-Offset"] == "0"


def test_a_deferred_length_is_set_by_a_later_patch(stack, api_user) -> None:
    created = tus_create(stack.url, api_user.headers, Upload_Defer_Length="1")
    location = created.headers["Location"]
    head = tus_head(location, api_user.headers)
    assert head.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in head.headers
    assert tus_patch(location, api_user.headers, 0, b"hello ").status_code == 204
    last = tus_patch(location, api_user.headers, 6, b"world", Upload_Length="11")
    assert last.status_code == 204 and last.headers["Upload-Offset"] == "11"
    done = upload_wait_for_status(stack.url, api_user.headers, _id(location), {"COMPLETED", "FAILED"})
    assert (done["status"], done["size"]) == ("COMPLETED", 11)
    assert httpx.get(done["downloadUrl"], timeout=30).content == b"hello world"


def test_delete_cancels_and_removes_the_bytes_then_answers_gone(stack, api_user) -> None:
    location = tus_create(stack.url, api_user.headers, length=100).headers["Location"]
    tus_patch(location, api_user.headers, 0, b"x" * 50)
    assert tus_delete(location, api_user.headers).status_code == 204
    assert not _staged(location).exists()
    assert FileUpload.objects.get(id=_id(location)).status == "CANCELLED"
    for answer in (
        tus_delete(location, api_user.headers),
        tus_patch(location, api_user.headers, 50, b"y"),
    ):
        assert (answer.status_code, code_of(answer)) == (410, "GONE")
    assert tus_head(location, api_user.headers).status_code == 410


def test_concatenation_of_partial_uploads_makes_one_upload(stack, api_user, make_user) -> None:
    pieces = [os.urandom(700_000), os.urandom(5), os.urandom(1_300_000)]
    locations = []
    for piece in pieces:
        created = tus_create(stack.url, api_user.headers, length=len(piece), Upload_Concat="partial")
        assert created.status_code == 201, created.text
        assert tus_patch(created.headers["Location"], api_user.headers, 0, piece).status_code == 204
        locations.append(created.headers["Location"])
    assert tus_head(locations[0], api_user.headers).headers["Upload-Concat"] == "partial"
    listed = {e["node"]["id"] for e in data_of(graphql(stack.url, LIST, None, api_user.headers))["uploads"]["edges"]}
    assert not listed & {_id(loc) for loc in locations}, "partial uploads are not listed"

    # Another user cannot use them; a missing one is not found either.
    stranger = make_user()
    concat = "final;" + " ".join(locations)
    theirs = tus_create(stack.url, stranger.headers, Upload_Concat=concat)
    assert (theirs.status_code, code_of(theirs)) == (404, "NOT_FOUND")
    missing = tus_create(stack.url, api_user.headers, Upload_Concat=f"final;{locations[0]} /uploads/{'0' * 32}")
    assert (missing.status_code, code_of(missing)) == (404, "NOT_FOUND")

    # Relative and absolute URLs both name them; the final upload is hashed once, here.
    relative = [locations[0], "/uploads/" + _id(locations[1]), locations[2]]
    whole = b"".join(pieces)
    final = tus_create(
        stack.url,
        api_user.headers,
        Upload_Concat="final;" + " ".join(relative),
        Upload_Metadata=metadata(filename="joined.bin"),
    )
    assert final.status_code == 201, final.text
    head = tus_head(final.headers["Location"], api_user.headers)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(whole))
    assert head.headers["Upload-Concat"].startswith("final;")
    patch = tus_patch(final.headers["Location"], api_user.headers, len(whole), b"x")
    assert patch.status_code == 403
    done = upload_wait_for_status(stack.url, api_user.headers, _id(final.headers["Location"]), {"COMPLETED", "FAILED"})
    assert (done["status"], done["filename"], done["sha256"]) == (
        "COMPLETED",
        "joined.bin",
        hashlib.sha256(whole).hexdigest(),
    )
    assert httpx.get(done["downloadUrl"], timeout=30).content == whole
    for location in locations:
        assert not _staged(location).exists()
        assert tus_head(location, api_user.headers).status_code == 404


def test_every_route_is_owner_only(stack, make_user) -> None:
    owner, other = make_user(), make_user()
    location = tus_create(stack.url, owner.headers, length=10).headers["Location"]
    for answer in (
        tus_head(location, other.headers),
        tus_patch(location, other.headers, 0, b"x"),
        tus_delete(location, other.headers),
    ):
        assert answer.status_code == 404
    assert tus_head(location, owner.headers).headers["Upload-Offset"] == "0"
    assert FileUpload.objects.get(id=_id(location)).status == "RECEIVING"


def test_method_override_is_honoured(stack, api_user) -> None:
    location = tus_create(stack.url, api_user.headers, length=5).headers["Location"]
    headers = {**TUS, **api_user.headers, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0"}
    headers["Content-Type"] = "application/offset+octet-stream"
    answer = httpx.post(location, headers=headers, content=b"abcde", timeout=10)
    assert answer.status_code == 204 and answer.headers["Upload-Offset"] == "5"
    deleted = httpx.post(location, headers={**TUS, **api_user.headers, "X-HTTP-Method-Override": "DELETE"}, timeout=10)
    assert deleted.status_code in (204, 410)


def test_an_offset_staging_no_longer_covers_moves_back_to_what_is_there(stack, api_user) -> None:
    content = os.urandom(200)
    location = tus_create(stack.url, api_user.headers, length=len(content)).headers["Location"]
    assert tus_patch(location, api_user.headers, 0, content[:100]).status_code == 204
    # What an OS crash can do with UPLOAD_RECEIVING_FSYNC off: the file lost its tail, the row did not.
    os.truncate(_staged(location), 40)
    refused = tus_patch(location, api_user.headers, 100, content[100:])
    assert (refused.status_code, code_of(refused)) == (409, "OFFSET_MISMATCH")
    assert refused.headers["Upload-Offset"] == "40"
    assert tus_head(location, api_user.headers).headers["Upload-Offset"] == "40"
    assert tus_patch(location, api_user.headers, 40, content[40:]).status_code == 204
    done = upload_wait_for_status(stack.url, api_user.headers, _id(location), {"COMPLETED", "FAILED"})
    assert done["sha256"] == hashlib.sha256(content).hexdigest()
