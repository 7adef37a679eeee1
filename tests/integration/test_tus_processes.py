"""Many servers, one upload: the writer lock across two uvicorn processes, and a server SIGKILLed mid-PATCH."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from backend.uploads.models import FileUpload
from tests.support.processes import wait_until
from tests.support.tus import code_of, tus_create, tus_head, tus_patch
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
