"""Many servers, one upload: the writer lock across two uvicorn processes, and a server SIGKILLed mid-PATCH;
what a PATCH that is refused anyway hears while another request holds the lock, or Redis is down."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from django.utils import timezone

from backend.uploads.models import FileUpload
from tests.support.processes import RedisServer, wait_until
from tests.support.tus import code_of, tus_create, tus_delete, tus_head, tus_patch
from tests.support.uploads import upload_wait_for_status

MIB = 1024 * 1024


def _open_patch(server_url: str, location: str, token: str, offset: int, length: int, first: bytes) -> socket.socket:
    """A PATCH of `length` bytes whose first bytes are sent and the rest held back: a slow client."""
    host = urlsplit(server_url)
    sock = socket.create_connection((host.hostname, host.port))
    head = (
        f"PATCH {urlsplit(location).path} HTTP/1.1\r\nHost: {host.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory=tmp_path / "redis", persistent=False).start()
    yield server
    server.stop(signal.SIGKILL)


def _refusal(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, code_of(answer)


def test_while_the_owner_writes_others_hear_not_found_and_the_owner_hears_gone_before_locked(
    make_stack, make_user, own_redis: RedisServer
) -> None:
    owner, stranger = make_user(), make_user()
    stack = make_stack(workers=0, redis_url=own_redis.url)
    location = tus_create(stack.url, owner.headers, length=2 * MIB).headers["Location"]
    lock_key = f"uploads:writer-lock:{location.rsplit('/', 1)[1]}"
    held = redis.Redis.from_url(own_redis.url)
    slow = _open_patch(stack.url, location, owner.token, 0, 2 * MIB, b"a" * 1000)
    try:
        token = wait_until(lambda: held.get(lock_key), what="the owner's PATCH to take the lock")
        assert _refusal(tus_patch(location, stranger.headers, 0, b"x")) == (404, "NOT_FOUND")
        assert held.get(lock_key) == token  # the stranger never took, nor released, the owner's lock
        assert _refusal(tus_patch(location, owner.headers, 0, b"x")) == (423, "UPLOAD_LOCKED")
        assert tus_delete(location, owner.headers).status_code == 204
        # Cancelled while the lock is still held: what the upload is comes before who writes to it.
        assert held.get(lock_key) == token
        assert _refusal(tus_patch(location, owner.headers, 0, b"x")) == (410, "GONE")
    finally:
        slow.close()


def test_refusals_about_the_upload_need_no_redis(make_stack, make_user, own_redis: RedisServer) -> None:
    """With Redis down only a PATCH that would write hears 503: NOT_FOUND and GONE are answered
    before the lock, so a request refused anyway never holds (nor waits for) the owner's lock."""
    owner, stranger = make_user(), make_user()
    stack = make_stack(workers=0, redis_url=own_redis.url)
    receiving, cancelled, expired = (
        tus_create(stack.url, owner.headers, length=10).headers["Location"] for _ in range(3)
    )
    assert tus_delete(cancelled, owner.headers).status_code == 204
    expired_id = expired.rsplit("/", 1)[1]
    FileUpload.objects.filter(id=expired_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    own_redis.stop(signal.SIGKILL)

    assert _refusal(tus_patch(receiving, stranger.headers, 0, b"x")) == (404, "NOT_FOUND")
    assert _refusal(tus_patch(cancelled, owner.headers, 0, b"x")) == (410, "GONE")
    assert _refusal(tus_patch(expired, owner.headers, 0, b"x")) == (410, "GONE")
    assert FileUpload.objects.get(id=expired_id).status == "FAILED"
    assert _refusal(tus_patch(receiving, owner.headers, 0, b"x")) == (503, "SERVICE_UNAVAILABLE")


def test_a_second_writer_on_another_server_is_locked_out_until_a_killed_holder_frees_the_lock(
    make_stack, api_user
) -> None:
    stack = make_stack(env={"UPLOAD_LOCK_TTL_SECONDS": "3"})
    server_a, server_b = stack.server, stack.add_server()
    content = os.urandom(8 * MIB)
    location_a = tus_create(server_a.url, api_user.headers, length=len(content)).headers["Location"]
    upload_id = location_a.rsplit("/", 1)[1]
    location_b = f"{server_b.url}/uploads/{upload_id}"

    slow = _open_patch(server_a.url, location_a, api_user.token, 0, len(content), content[: 3 * MIB + 12345])
    try:
        # Server A commits the offset at each part-size checkpoint (1 MiB here) while the body comes in.
        wait_until(lambda: FileUpload.objects.get(id=upload_id).bytes_received >= 2 * MIB, what="A's checkpoints")
        locked = tus_patch(location_b, api_user.headers, FileUpload.objects.get(id=upload_id).bytes_received, b"x")
        assert (locked.status_code, code_of(locked)) == (423, "UPLOAD_LOCKED")
        server_a.kill()  # SIGKILL mid-PATCH: no finally, no lock release, no last checkpoint
    finally:
        slow.close()

    # What HEAD reports is really in staging, byte for byte, even though A died mid-write.
    offset = int(tus_head(location_b, api_user.headers).headers["Upload-Offset"])
    staged = (Path(os.environ["UPLOAD_STAGING_DIR"]) / upload_id).read_bytes()
    assert 2 * MIB <= offset <= len(staged)
    assert staged[:offset] == content[:offset]

    # The dead holder's lock frees itself within its TTL; then B takes the upload from the offset.
    def resumed() -> httpx.Response | None:
        answer = tus_patch(location_b, api_user.headers, offset, content[offset:])
        return answer if answer.status_code != 423 else None

    answer = wait_until(resumed, timeout=30, interval=0.2, what="the killed holder's lock to expire")
    assert answer.status_code == 204, answer.text
    assert answer.headers["Upload-Offset"] == str(len(content))
    done = upload_wait_for_status(server_b.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED"
    assert httpx.get(done["downloadUrl"], timeout=30).content == content


def test_the_running_digest_is_caught_up_when_chunks_alternate_between_servers(make_stack, api_user) -> None:
    stack = make_stack(workers=1)
    servers = [stack.server, stack.add_server()]
    content = os.urandom(4 * MIB + 99)
    location = tus_create(servers[0].url, api_user.headers, length=len(content)).headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    offset, turn = 0, 0
    while offset < len(content):
        chunk = content[offset : offset + MIB]
        answer = tus_patch(f"{servers[turn % 2].url}/uploads/{upload_id}", api_user.headers, offset, chunk)
        assert answer.status_code == 204, answer.text
        offset, turn = offset + len(chunk), turn + 1
    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"})
    assert done["sha256"] == hashlib.sha256(content).hexdigest()
