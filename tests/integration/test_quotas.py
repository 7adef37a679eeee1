"""Quotas (CONTRACT section 10): refused before the bytes are stored, atomic under a race, freed by delete."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from typing import Any

import pytest
from django.db import close_old_connections, connection, transaction

from backend.quotas.errors import QuotaExceeded
from backend.quotas.models import UserQuota
from backend.quotas.services import quota_reserve
from backend.uploads.models import FileUpload, UploadStatus
from tests.support.client import data_of, error_codes, graphql, upload_file
from tests.support.uploads import open_staging_files, staging_entries, upload_wait_for_status

ME = "{ me { username quota { usedBytes limitBytes } } }"
DELETE = "mutation($id: ID!) { deleteUpload(id: $id) }"
RETRY = "mutation($id: ID!) { retryUpload(id: $id) { status } }"
CANCEL = "mutation($id: ID!) { cancelUpload(id: $id) { status } }"


def quota_of(url: str, headers: dict[str, str]) -> dict[str, Any]:
    return data_of(graphql(url, ME, headers=headers))["me"]["quota"]


def test_me_answers_the_username_and_an_unlimited_quota(stack, api_user) -> None:
    me = data_of(graphql(stack.url, ME, headers=api_user.headers))["me"]
    assert me == {"username": api_user.username, "quota": {"usedBytes": 0, "limitBytes": None}}


def test_me_without_credentials_is_unauthenticated(stack) -> None:
    assert error_codes(graphql(stack.url, ME)) == ["UNAUTHENTICATED"]


def test_a_file_over_the_free_quota_is_refused_and_leaves_nothing(make_stack, api_user, tmp_path) -> None:
    staging = tmp_path / "staging"
    quota = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_QUOTA_BYTES": "1000"}, workers=1)
    first = data_of(upload_file(quota.url, b"a" * 600, headers=api_user.headers))["uploadFile"]
    assert quota_of(quota.url, api_user.headers) == {"usedBytes": 600, "limitBytes": 1000}

    refused = upload_file(quota.url, b"b" * 401, headers=api_user.headers)
    assert refused.status_code == 200  # the body was within the envelope allowance: read, then refused
    assert error_codes(refused) == ["QUOTA_EXCEEDED"]
    assert "600 of 1000" in refused.json()["errors"][0]["message"]
    assert FileUpload.objects.filter(owner=api_user.user).count() == 1
    upload_wait_for_status(quota.url, api_user.headers, first["id"], {"COMPLETED"})
    assert staging_entries(staging) == set()
    assert open_staging_files(quota.server.process.pid, staging) == []

    # Exactly the free bytes fit.
    data_of(upload_file(quota.url, b"c" * 400, headers=api_user.headers))
    assert quota_of(quota.url, api_user.headers) == {"usedBytes": 1000, "limitBytes": 1000}


def _raw_post_head(port: int, *, length: int, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """Send only the head of a multipart POST that announces `length` bytes; the server's answer."""
    lines = [
        "POST /graphql HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: multipart/form-data; boundary=xyz",
        f"Content-Length: {length}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_a_content_length_over_the_quota_is_413_before_the_body_is_sent(make_stack, api_user, tmp_path) -> None:
    staging = tmp_path / "staging"
    quota = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_QUOTA_BYTES": str(1024 * 1024)}, workers=0)
    # Nothing of the body is sent: an answer proves the server decided from the header alone.
    status, body = _raw_post_head(quota.server.port, length=3 * 1024 * 1024, headers=api_user.headers)
    assert status == 413
    assert body["errors"][0]["extensions"]["code"] == "QUOTA_EXCEEDED"
    # A real client sending a whole body gets the same answer, and nothing is staged.
    refused = upload_file(quota.url, b"x" * (3 * 1024 * 1024), headers=api_user.headers)
    assert refused.status_code == 413
    assert error_codes(refused) == ["QUOTA_EXCEEDED"]
    assert staging_entries(staging) == set()
    assert not FileUpload.objects.filter(owner=api_user.user).exists()
    # Bad credentials are the view's to answer, not the quota's.
    bad = upload_file(quota.url, b"x" * (3 * 1024 * 1024), headers={"Authorization": "Bearer not-a-token"})
    assert (bad.status_code, error_codes(bad)) == (401, ["UNAUTHENTICATED"])


def test_deleting_frees_quota_at_once_and_a_failed_or_cancelled_upload_holds_none(
    make_stack, api_user, tmp_path
) -> None:
    staging = tmp_path / "staging"
    quota = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_QUOTA_BYTES": "1000"}, workers=0)
    first = data_of(upload_file(quota.url, b"a" * 1000, headers=api_user.headers))["uploadFile"]
    assert error_codes(upload_file(quota.url, b"b" * 10, headers=api_user.headers)) == ["QUOTA_EXCEEDED"]

    # Cancelled, it holds nothing; retried, it takes its bytes back, and only if they fit.
    data_of(graphql(quota.url, CANCEL, {"id": first["id"]}, api_user.headers))
    assert quota_of(quota.url, api_user.headers)["usedBytes"] == 0
    second = data_of(upload_file(quota.url, b"b" * 10, headers=api_user.headers))["uploadFile"]
    assert error_codes(graphql(quota.url, RETRY, {"id": first["id"]}, api_user.headers)) == ["QUOTA_EXCEEDED"]
    assert FileUpload.objects.get(id=first["id"]).status == UploadStatus.CANCELLED

    # Deleting the second frees its bytes at once: the retry now fits.
    assert data_of(graphql(quota.url, DELETE, {"id": second["id"]}, api_user.headers))["deleteUpload"] is True
    assert quota_of(quota.url, api_user.headers)["usedBytes"] == 0
    assert data_of(graphql(quota.url, RETRY, {"id": first["id"]}, api_user.headers))["retryUpload"]["status"] == (
        "QUEUED"
    )
    assert quota_of(quota.url, api_user.headers) == {"usedBytes": 1000, "limitBytes": 1000}


def test_the_admin_override_replaces_the_setting_and_zero_is_unlimited(make_stack, api_user) -> None:
    quota = make_stack(env={"UPLOAD_QUOTA_BYTES": "1000"}, workers=0)
    UserQuota.objects.create(user=api_user.user, limit_bytes=5)
    assert quota_of(quota.url, api_user.headers) == {"usedBytes": 0, "limitBytes": 5}
    assert error_codes(upload_file(quota.url, b"123456", headers=api_user.headers)) == ["QUOTA_EXCEEDED"]
    UserQuota.objects.filter(user=api_user.user).update(limit_bytes=0)
    assert quota_of(quota.url, api_user.headers) == {"usedBytes": 0, "limitBytes": None}
    data_of(upload_file(quota.url, b"x" * 5000, headers=api_user.headers))


# --- the race ---------------------------------------------------------------------------------


def _new_upload(user: Any, size: int) -> FileUpload:
    upload_id = uuid.uuid4()
    return FileUpload.objects.create(
        id=upload_id,
        owner=user,
        filename="race.bin",
        content_type="application/octet-stream",
        size=size,
        sha256="0" * 64,
        status=UploadStatus.QUEUED,
        storage_backend="local",
        storage_key=f"uploads/race/{upload_id}",
    )


def test_two_reservations_for_the_last_bytes_cannot_both_pass(api_user) -> None:
    """The check and the reservation are one step: B may not read the total until A's row is in.

    A reserves and then holds its transaction open; B reserves meanwhile. Were the check not
    atomic with the row, B would sum a total without A's bytes and pass at once.
    """
    UserQuota.objects.create(user=api_user.user, limit_bytes=1000)
    a_reserved, b_done = threading.Event(), threading.Event()
    outcome: dict[str, str] = {}

    def reserve(name: str, before: threading.Event | None, hold: bool) -> None:
        try:
            if before is not None:
                assert before.wait(10)
            with transaction.atomic():
                quota_reserve(user=api_user.user, size=600)
                if hold:
                    a_reserved.set()
                    # sync-ok: the window a non-atomic reservation would need to let B through; with
                    # the lock B cannot finish before this transaction commits, so the wait runs out.
                    b_done.wait(1.5)
                _new_upload(api_user.user, 600)
            outcome[name] = "accepted"
        except QuotaExceeded:
            outcome[name] = "refused"
        finally:
            if name == "b":
                b_done.set()
            close_old_connections()
            connection.close()

    a = threading.Thread(target=reserve, args=("a", None, True))
    b = threading.Thread(target=reserve, args=("b", a_reserved, False))
    a.start()
    b.start()
    a.join(30)
    b.join(30)
    assert outcome == {"a": "accepted", "b": "refused"}
    assert FileUpload.objects.filter(owner=api_user.user).count() == 1


def test_quota_reserve_outside_a_transaction_is_a_programming_error(api_user) -> None:
    UserQuota.objects.create(user=api_user.user, limit_bytes=1000)
    with pytest.raises(RuntimeError):
        quota_reserve(user=api_user.user, size=1)


def test_two_uploads_racing_over_http_for_the_last_bytes_one_wins(make_stack, api_user, tmp_path) -> None:
    staging = tmp_path / "staging"
    race = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_QUOTA_BYTES": "1000"}, workers=0)
    race.add_server()  # two processes: the two requests really run at once
    start = threading.Barrier(2)
    answers: list[Any] = [None, None]

    def send(index: int) -> None:
        start.wait(10)
        answers[index] = upload_file(race.servers[index].url, bytes([65 + index]) * 600, headers=api_user.headers)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    codes = sorted(str(error_codes(answer)) for answer in answers)
    assert codes == ["['QUOTA_EXCEEDED']", "[]"], [a.json() for a in answers]
    assert FileUpload.objects.filter(owner=api_user.user).count() == 1
    accepted = FileUpload.objects.get(owner=api_user.user)
    assert staging_entries(staging) == {str(accepted.id)}  # the loser's bytes are gone


def test_a_session_upload_over_the_quota_is_413_before_the_body_too(make_stack, tmp_path) -> None:
    from tests.integration.test_sessions import browser_login, make_password_user

    quota = make_stack(env={"UPLOAD_QUOTA_BYTES": str(1024 * 1024)}, workers=0)
    browser = browser_login(quota.url, make_password_user("pw-for-the-quota"), "pw-for-the-quota")
    try:
        cookie = f"sessionid={browser.sessionid}; csrftoken={browser.csrftoken}"
        status, body = _raw_post_head(
            quota.server.port, length=3 * 1024 * 1024, headers={"Cookie": cookie, "X-CSRFToken": browser.csrftoken}
        )
        assert (status, body["errors"][0]["extensions"]["code"]) == (413, "QUOTA_EXCEEDED")
        small = browser.upload(b"fits", **{"X-CSRFToken": browser.csrftoken})
        assert data_of(small)["uploadFile"]["size"] == 4
    finally:
        browser.http.close()
