"""Who may see what: per-user isolation, credentials over HTTP, and the token commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from backend.tokens.models import ApiToken
from backend.tokens.services import token_create
from backend.uploads.models import FileUpload
from tests.support.client import UPLOAD_QUERY, data_of, error_codes, graphql, upload_file
from tests.support.uploads import incoming_entries, staging_entries, upload_wait_for_status

ROOT = Path(__file__).resolve().parents[2]

LIST = "{ uploads { totalCount edges { node { id } } } }"
CANCEL = "mutation($id: ID!) { cancelUpload(id: $id) { id status } }"
RETRY = "mutation($id: ID!) { retryUpload(id: $id) { id status } }"
DELETE = "mutation($id: ID!) { deleteUpload(id: $id) }"


# --- isolation -------------------------------------------------------------------------------


def test_users_cannot_see_or_touch_each_others_uploads(stack, make_user) -> None:
    alice, bob = make_user(), make_user()
    upload = data_of(upload_file(stack.url, b"alice's notes", headers=alice.headers))["uploadFile"]
    done = upload_wait_for_status(stack.url, alice.headers, upload["id"], {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED"

    for query in (UPLOAD_QUERY, CANCEL, RETRY, DELETE):
        response = graphql(stack.url, query, {"id": upload["id"]}, bob.headers)
        assert response.status_code == 200
        assert error_codes(response) == ["NOT_FOUND"], (query, response.json())
    # The answer for someone else's upload is the answer for one that does not exist.
    missing = graphql(stack.url, UPLOAD_QUERY, {"id": str(uuid.uuid4())}, bob.headers)
    assert (
        missing.json()["errors"][0]["message"]
        == graphql(stack.url, UPLOAD_QUERY, {"id": upload["id"]}, bob.headers).json()["errors"][0]["message"]
    )

    assert data_of(graphql(stack.url, LIST, headers=bob.headers))["uploads"] == {"totalCount": 0, "edges": []}
    mine = data_of(graphql(stack.url, LIST, headers=alice.headers))["uploads"]
    assert [e["node"]["id"] for e in mine["edges"]] == [upload["id"]]
    # Bob's attempts changed nothing (the download URL is signed afresh on each read).
    after = data_of(graphql(stack.url, UPLOAD_QUERY, {"id": upload["id"]}, alice.headers))["upload"]
    assert {**after, "downloadUrl": None} == {**done, "downloadUrl": None}


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "", "../etc", "0" * 33])
@pytest.mark.parametrize("query", [UPLOAD_QUERY, CANCEL, RETRY, DELETE], ids=["upload", "cancel", "retry", "delete"])
def test_malformed_id_is_bad_user_input(stack, api_user, query, bad_id) -> None:
    response = graphql(stack.url, query, {"id": bad_id}, api_user.headers)
    assert response.status_code == 200
    assert error_codes(response) == ["BAD_USER_INPUT"], response.json()


# --- credentials over HTTP -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (LIST, "uploads"),
        (UPLOAD_QUERY, "upload"),
        (CANCEL, "cancelUpload"),
        (RETRY, "retryUpload"),
        (DELETE, "deleteUpload"),
    ],
)
def test_no_credentials_answers_unauthenticated_per_field(stack, query, field) -> None:
    response = graphql(stack.url, query, {"id": str(uuid.uuid4())})
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    assert [(e["path"], e["extensions"]["code"]) for e in body["errors"]] == [([field], "UNAUTHENTICATED")]


def test_no_credentials_still_answers_public_fields(stack) -> None:
    assert data_of(graphql(stack.url, "{ __typename }")) == {"__typename": "Query"}
    # Root fields are non-null: the first refusal nulls `data`, and graphql-core stops the rest.
    response = graphql(stack.url, f'{{ a: uploads {{ totalCount }} b: upload(id: "{uuid.uuid4()}") {{ id }} }}')
    assert response.status_code == 200
    assert response.json()["data"] is None
    assert set(error_codes(response)) == {"UNAUTHENTICATED"}


def test_upload_without_credentials_is_refused_and_leaves_nothing(stack) -> None:
    before = staging_entries()
    rows = FileUpload.objects.count()
    response = upload_file(stack.url, os.urandom(2048))
    assert response.status_code == 200
    assert error_codes(response) == ["UNAUTHENTICATED"]
    assert staging_entries() <= before
    assert incoming_entries() == []
    assert FileUpload.objects.count() == rows


def _assert_401(stack, headers: dict[str, str]) -> None:
    response = graphql(stack.url, LIST, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["UNAUTHENTICATED"]
    # The same refusal before a multipart upload is read.
    upload = upload_file(stack.url, b"bytes", headers=headers)
    assert upload.status_code == 401
    assert upload.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-real-token",
        "Bearer " + "x" * 43,
        "Bearer " + "x" * 1000,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Token abc",
    ],
    ids=["unknown", "unknown-long", "huge", "empty", "basic", "other-scheme"],
)
def test_bad_token_is_401_json(stack, authorization) -> None:
    _assert_401(stack, {"Authorization": authorization})


def test_revoked_token_is_401(stack, api_user) -> None:
    assert graphql(stack.url, LIST, headers=api_user.headers).status_code == 200
    ApiToken.objects.filter(user=api_user.user).update(revoked_at=timezone.now())
    _assert_401(stack, api_user.headers)


def test_expired_token_is_401(stack, api_user) -> None:
    token = token_create(user=api_user.user, expires_in_days=1)
    headers = {"Authorization": f"Bearer {token}"}
    assert graphql(stack.url, LIST, headers=headers).status_code == 200
    ApiToken.objects.filter(user=api_user.user).update(expires_at=timezone.now() - timedelta(seconds=1))
    _assert_401(stack, headers)


# --- manage.py createtoken / revoketoken -----------------------------------------------------


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    """The management command as a real process with the test session's environment."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60
    )


def created_token(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    token = done.stdout.splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{32,}", token), done.stdout
    return token


def authorised(stack, token: str) -> int:
    return graphql(stack.url, LIST, headers={"Authorization": f"Bearer {token}"}).status_code


def test_createtoken_prints_a_working_token_and_revoketoken_revokes_it(stack) -> None:
    username = f"cli-{uuid.uuid4().hex[:8]}"
    first = created_token(manage("createtoken", username, "--create"))
    assert authorised(stack, first) == 200
    second = created_token(manage("createtoken", username, "--expires", "2"))
    assert authorised(stack, second) == 200
    tokens = ApiToken.objects.filter(user__username=username)
    assert tokens.get(prefix=first[:8]).expires_at is None
    expires_in = tokens.get(prefix=second[:8]).expires_at - timezone.now()
    assert timedelta(days=2) - timedelta(minutes=5) < expires_in <= timedelta(days=2)
    # Only a hash is stored.
    assert not ApiToken.objects.filter(token_hash__in=[first, second]).exists()

    revoked = manage("revoketoken", first)
    assert revoked.returncode == 0, revoked.stderr
    assert (authorised(stack, first), authorised(stack, second)) == (401, 200)

    everything = manage("revoketoken", "--user", username)
    assert everything.returncode == 0, everything.stderr
    assert authorised(stack, second) == 401
    assert not tokens.filter(revoked_at__isnull=True).exists()
