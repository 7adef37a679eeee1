"""The GraphQL view's own CSRF check, through Django's test client with CSRF checks enforced.

The view is exempt from CsrfViewMiddleware (bearer clients have no CSRF token) and runs Django's
check itself for session-authenticated requests only (CONTRACT section 5). `enforce_csrf_checks`
makes the test client behave like a browser would: without it, Django waives the check.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from backend.tokens.services import token_create
from backend.uploads.models import FileUpload
from tests.support.client import UPLOAD_MUTATION

QUERY = {"query": "{ uploads { totalCount } }"}


@pytest.fixture
def user() -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username=f"csrf-{uuid.uuid4().hex[:8]}", password="pw-for-csrf")


@pytest.fixture
def session_client(user: Any) -> Client:
    """Logged in, holding the csrftoken cookie the GraphiQL page hands out."""
    client = browser_client()
    client.force_login(user)
    page = client.get("/graphql", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    assert "csrftoken" in page.cookies
    return client


def post_json(client: Client, body: dict[str, Any], **extra: str) -> Any:
    return client.post("/graphql", data=json.dumps(body), content_type="application/json", **extra)


def post_upload(client: Client, **extra: str) -> Any:
    operations = {"query": UPLOAD_MUTATION, "variables": {"file": None}}
    data = {
        "operations": json.dumps(operations),
        "map": json.dumps({"0": ["variables.file"]}),
        "0": SimpleUploadedFile("x.bin", os.urandom(64 * 1024), content_type="application/octet-stream"),
    }
    return client.post("/graphql", data=data, **extra)


def browser_client() -> Client:
    """Django's client with CSRF enforced, as a host in the development ALLOWED_HOSTS."""
    return Client(enforce_csrf_checks=True, HTTP_HOST="localhost")


def codes(response: Any) -> list[str]:
    return [e["extensions"]["code"] for e in json.loads(response.content)["errors"]]


def staged_files() -> set[Path]:
    root = Path(os.environ["UPLOAD_STAGING_DIR"])
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_graphiql_render_sets_the_csrf_cookie_for_anonymous_visitors() -> None:
    page = browser_client().get("/graphql", HTTP_ACCEPT="text/html")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    assert page.cookies["csrftoken"].value


@pytest.mark.parametrize("header", [None, "", "not-the-token-" * 4])
def test_session_post_without_a_valid_csrf_header_is_forbidden(
    session_client: Client, user: Any, header: str | None
) -> None:
    extra = {} if header is None else {"HTTP_X_CSRFTOKEN": header}
    before = staged_files()
    for response in (post_json(session_client, QUERY, **extra), post_upload(session_client, **extra)):
        assert response.status_code == 403
        assert response["Content-Type"] == "application/json"
        assert codes(response) == ["FORBIDDEN"]
    assert not FileUpload.objects.filter(owner=user).exists()
    assert staged_files() - before == set()


def test_session_post_with_the_csrf_header_runs(session_client: Client) -> None:
    token = session_client.cookies["csrftoken"].value
    response = post_json(session_client, QUERY, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
    assert json.loads(response.content) == {"data": {"uploads": {"totalCount": 0}}}


def test_session_post_with_a_header_but_no_csrf_cookie_is_forbidden(user: Any) -> None:
    client = browser_client()
    client.force_login(user)
    response = post_json(client, QUERY, HTTP_X_CSRFTOKEN="a" * 32)
    assert response.status_code == 403 and codes(response) == ["FORBIDDEN"]


def test_bearer_request_needs_no_csrf_token(user: Any) -> None:
    response = post_json(browser_client(), QUERY, HTTP_AUTHORIZATION=f"Bearer {token_create(user=user)}")
    assert response.status_code == 200
    assert json.loads(response.content) == {"data": {"uploads": {"totalCount": 0}}}


def test_with_both_credentials_a_bad_token_decides(session_client: Client) -> None:
    token = session_client.cookies["csrftoken"].value
    response = post_json(session_client, QUERY, HTTP_AUTHORIZATION="Bearer " + "z" * 43, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 401 and codes(response) == ["UNAUTHENTICATED"]


def test_with_both_credentials_a_good_token_needs_no_csrf_header(session_client: Client) -> None:
    from django.contrib.auth import get_user_model

    other = get_user_model().objects.create_user(username=f"other-{uuid.uuid4().hex[:8]}")
    response = post_json(session_client, QUERY, HTTP_AUTHORIZATION=f"Bearer {token_create(user=other)}")
    assert response.status_code == 200 and "errors" not in json.loads(response.content)


def test_anonymous_post_needs_no_csrf_and_answers_unauthenticated() -> None:
    response = post_json(browser_client(), QUERY)
    assert response.status_code == 200 and codes(response) == ["UNAUTHENTICATED"]
