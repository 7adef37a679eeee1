"""The Django admin and the django-rq dashboard over HTTP against the running server: a staff user
logs in through /admin/login/, filters and searches uploads, runs the actions (which go through the
services), issues a token that is shown once, and revokes it."""

from __future__ import annotations

import hashlib
import html
import os
import re
import uuid
from typing import Any

import httpx
import pytest

from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.staging import staging_path
from tests.support.client import data_of, graphql, upload_file
from tests.support.processes import wait_until

UPLOADS = "/admin/uploads/fileupload/"
TOKENS = "/admin/tokens/apitoken/"
MIB = 1024 * 1024


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def _messages(page: httpx.Response) -> list[str]:
    return [html.unescape(m).strip() for m in re.findall(r'<li class="[a-z]+">(.*?)</li>', page.text, re.S)]


class Admin:
    """A browser-like session on the admin: cookies, the CSRF token of the last form."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, follow_redirects=True, timeout=30)

    def login(self, username: str, password: str) -> httpx.Response:
        page = self.client.get("/admin/login/", params={"next": "/admin/"})
        return self.client.post(
            "/admin/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": _csrf(page), "next": "/admin/"},
        )

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params)

    def action(self, name: str, ids: list[str], path: str = UPLOADS) -> httpx.Response:
        """Run a changelist action on the rows `ids`, as the action form does; the page after it."""
        page = self.client.get(path)
        response = self.client.post(
            path,
            data={"action": name, "_selected_action": ids, "index": "0", "csrfmiddlewaretoken": _csrf(page)},
        )
        assert response.status_code == 200, response.text[:500]
        return response


@pytest.fixture
def staff(django_user: Any) -> Any:
    return django_user(is_staff=True, is_superuser=True)


@pytest.fixture
def django_user() -> Any:
    from django.contrib.auth import get_user_model

    def make(**flags: bool) -> tuple[str, str]:
        username, password = f"admin-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        get_user_model().objects.create_user(username=username, password=password, **flags)
        return username, password

    return make


def _status(upload_id: str) -> str:
    return FileUpload.objects.get(id=upload_id).status


def test_admin_lists_filters_searches_and_acts_through_the_services(make_stack, api_user, staff) -> None:
    stack = make_stack(workers=0)  # no worker: uploads stay QUEUED until the test adds one
    tag = uuid.uuid4().hex[:8]
    report = data_of(upload_file(stack.url, b"report body", filename=f"report-{tag}.txt", headers=api_user.headers))
    photo = data_of(upload_file(stack.url, b"photo body", filename=f"photo-{tag}.bin", headers=api_user.headers))
    report_id, photo_id = report["uploadFile"]["id"], photo["uploadFile"]["id"]
    admin = Admin(stack.url)
    assert admin.login(*staff).url.path == "/admin/"

    # Filters and search.
    queued = admin.get(UPLOADS, status__exact="QUEUED").text
    assert report_id in queued and photo_id in queued
    completed = admin.get(UPLOADS, status__exact="COMPLETED").text
    assert report_id not in completed and photo_id not in completed
    assert photo_id in admin.get(UPLOADS, storage_backend__exact="local").text
    by_name = admin.get(UPLOADS, q=f"report-{tag}").text
    assert report_id in by_name and photo_id not in by_name
    by_id = admin.get(UPLOADS, q=photo_id).text
    assert photo_id in by_id and report_id not in by_id
    nothing = admin.get(UPLOADS, q="no-such-upload-anywhere")
    assert nothing.status_code == 200 and report_id not in nothing.text

    # Cancel: one moves, then a second cancel of it is refused with the contract's code.
    page = admin.action("cancel_uploads", [report_id])
    assert any(m.startswith("Cancelled 1") for m in _messages(page)), _messages(page)
    assert _status(report_id) == UploadStatus.CANCELLED
    page = admin.action("cancel_uploads", [report_id, photo_id])
    messages = _messages(page)
    assert any(report_id in m and "INVALID_STATE" in m for m in messages), messages
    assert any(m.startswith("Cancelled 1") and photo_id in m for m in messages), messages
    assert _status(photo_id) == UploadStatus.CANCELLED

    # Retry: CANCELLED -> QUEUED; retrying a QUEUED one is refused.
    page = admin.action("retry_uploads", [report_id])
    assert any(m.startswith("Queued again 1") for m in _messages(page)), _messages(page)
    assert _status(report_id) == UploadStatus.QUEUED
    page = admin.action("retry_uploads", [report_id])
    assert any(report_id in m and "INVALID_STATE" in m for m in _messages(page)), _messages(page)

    # Delete goes through the service: rows, staged bytes and ledger go; Django's ORM delete is not offered.
    assert "delete_selected" not in admin.get(UPLOADS).text
    assert admin.get(f"{UPLOADS}{photo_id}/delete/").status_code == 403
    page = admin.action("delete_uploads", [report_id, photo_id])
    assert any(m.startswith("Deleted 2") for m in _messages(page)), _messages(page)
    assert not FileUpload.objects.filter(id__in=[report_id, photo_id]).exists()
    assert not staging_path(uuid.UUID(report_id)).exists() and not staging_path(uuid.UUID(photo_id)).exists()

    # An upload's page: read-only fields and the part ledger; a POST to it is refused.
    stack.add_worker()
    sent = os.urandom(3 * MIB)
    done = data_of(upload_file(stack.url, sent, filename=f"big-{tag}.bin", headers=api_user.headers))["uploadFile"]
    wait_until(lambda: _status(done["id"]) == UploadStatus.COMPLETED, what="completion")
    page = admin.get(f"{UPLOADS}{done['id']}/change/")
    assert page.status_code == 200
    assert hashlib.sha256(sent).hexdigest() in page.text
    assert "100.0%" in page.text
    assert 'name="_save"' not in page.text  # view-only: nothing to save
    ledger = re.findall(r'<td class="field-part_number">\s*<p>(\d+)</p>', page.text)
    assert ledger == ["1", "2", "3"], ledger
    refused = admin.client.post(f"{UPLOADS}{done['id']}/change/", data={"csrfmiddlewaretoken": _csrf(page)})
    assert refused.status_code == 403
    assert admin.get(f"{UPLOADS}add/").status_code == 403


def test_admin_issues_a_token_once_and_revokes_it(stack, api_user, staff) -> None:
    admin = Admin(stack.url)
    admin.login(*staff)
    form = admin.get(f"{TOKENS}add/")
    assert form.status_code == 200
    added = admin.client.post(
        f"{TOKENS}add/",
        data={"user": str(api_user.user.pk), "expires_in_days": "2", "csrfmiddlewaretoken": _csrf(form)},
    )
    shown = [m for m in _messages(added) if m.startswith("New token for")]
    assert len(shown) == 1, _messages(added)
    token = re.search(r"New token for \S+: (\S+) ", shown[0]).group(1)  # type: ignore[union-attr]
    headers = {"Authorization": f"Bearer {token}"}
    assert data_of(graphql(stack.url, "{ uploads { totalCount } }", headers=headers))

    # Shown once; the list and the token's page show its prefix, never the token or its hash.
    listing = admin.get(TOKENS, q=api_user.username)
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert token[:8] in listing.text
    assert token not in listing.text and digest not in listing.text
    row = re.search(rf'href="{TOKENS}(\d+)/change/[^"]*">{re.escape(token[:8])}', listing.text)
    assert row, listing.text[:2000]
    detail = admin.get(f"{TOKENS}{row.group(1)}/change/")
    assert detail.status_code == 200 and token not in detail.text and digest not in detail.text
    assert "token_hash" not in detail.text

    page = admin.action("revoke_tokens", [row.group(1)], path=TOKENS)
    assert any(m.startswith("Revoked 1 of 1") for m in _messages(page)), _messages(page)
    assert graphql(stack.url, "{ uploads { totalCount } }", headers=headers).status_code == 401
    again = admin.action("revoke_tokens", [row.group(1)], path=TOKENS)
    assert any("already revoked" in m for m in _messages(again)), _messages(again)


def test_admin_and_rq_dashboard_are_for_staff_only(stack, api_user, django_user, staff) -> None:
    anonymous = httpx.Client(base_url=stack.url, timeout=30)
    for path in ("/admin/rq/", "/admin/rq/queues/0/", UPLOADS):
        response = anonymous.get(path)
        assert response.status_code == 302 and response.headers["location"].startswith("/admin/login/"), path
    assert anonymous.get("/admin/rq/stats.json").status_code == 401
    # An API token opens the API, not the dashboard's token-guarded views.
    assert anonymous.get("/admin/rq/stats.json", headers=api_user.headers).status_code == 401
    assert anonymous.get("/admin/rq/metrics", headers=api_user.headers).status_code == 401
    assert anonymous.get("/admin/rq/stats.json/guessedtoken123").status_code == 401

    member = Admin(stack.url)
    refused = member.login(*django_user())  # a user, not staff
    assert refused.url.path == "/admin/login/"
    assert member.get("/admin/rq/").url.path == "/admin/login/"

    admin = Admin(stack.url)
    admin.login(*staff)
    dashboard = admin.get("/admin/rq/")
    assert dashboard.status_code == 200 and dashboard.url.path == "/admin/rq/"
    assert "default" in dashboard.text
    assert admin.get("/admin/rq/stats.json").json()["queues"][0]["name"] == "default"
