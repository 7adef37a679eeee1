"""Browsers: login, CSRF on session requests, websocket Origin and sessions, GraphiQL, CORS.

Everything runs over real HTTP and websockets against a real server process (CONTRACT section 5;
CVE-2024-47082: a cross-site multipart POST needs no preflight, so only the CSRF check stops it).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from backend.uploads.models import FileUpload
from tests.support.client import UPLOAD_MUTATION, Subscriber, data_of, error_codes, graphql, upload_file
from tests.support.processes import wait_until

UPLOADS_QUERY = "{ uploads { totalCount edges { node { id } } } }"
EVIL = "https://evil.example"


# --- a browser, as far as the server can tell ------------------------------------------------


@dataclass
class Browser:
    """An httpx client with a cookie jar, logged in through Django's form like a person would."""

    url: str
    http: httpx.Client
    user: Any

    @property
    def sessionid(self) -> str:
        return self.http.cookies["sessionid"]

    @property
    def csrftoken(self) -> str:
        return self.http.cookies["csrftoken"]

    def graphql(self, query: str, variables: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
        return self.http.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)

    def upload(self, content: bytes, **headers: str) -> httpx.Response:
        return self.http.post("/graphql", files=_multipart(content), headers=headers)


def _multipart(content: bytes) -> dict[str, Any]:
    operations = {"query": UPLOAD_MUTATION, "variables": {"file": None, "sha256": None}}
    return {
        "operations": (None, json.dumps(operations), "application/json"),
        "map": (None, json.dumps({"0": ["variables.file"]}), "application/json"),
        "0": ("page.bin", content, "application/octet-stream"),
    }


def _form_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def make_password_user(password: str) -> Any:
    """A user made the way `make run` makes `dev`: a username and a password, no token needed."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username=f"dev-{uuid.uuid4().hex[:8]}", password=password)


def browser_login(url: str, user: Any, password: str) -> Browser:
    http = httpx.Client(base_url=url, timeout=30)
    form = http.get("/accounts/login/")
    assert form.status_code == 200
    answer = http.post(
        "/accounts/login/",
        data={"username": user.username, "password": password, "csrfmiddlewaretoken": _form_token(form.text)},
    )
    assert answer.status_code == 302, answer.text
    assert "sessionid" in http.cookies
    return Browser(url=url, http=http, user=user)


@pytest.fixture
def browser(stack) -> Iterator[Browser]:
    password = "correct horse battery staple"
    logged_in = browser_login(stack.url, make_password_user(password), password)
    yield logged_in
    logged_in.http.close()


def staged_files() -> set[Path]:
    root = Path(os.environ["UPLOAD_STAGING_DIR"])
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert error_codes(response) == ["FORBIDDEN"]


def wait_completed(browser: Browser, upload_id: str) -> None:
    def status() -> bool:
        upload = FileUpload.objects.get(id=upload_id)
        assert upload.status not in {"FAILED", "CANCELLED"}, upload.error
        return upload.status == "COMPLETED"

    wait_until(status, timeout=60, what=f"upload {upload_id} to complete")


# --- 1. login and logout ----------------------------------------------------------------------


def test_login_form_logs_in_and_logout_ends_the_session(stack) -> None:
    password = "s3cret-for-the-form"
    user = make_password_user(password)
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        form = http.get("/accounts/login/")
        assert form.status_code == 200
        assert '<label for="id_username">' in form.text and '<label for="id_password">' in form.text
        assert 'autocomplete="current-password"' in form.text
        token = _form_token(form.text)

        # Django's own CSRF protection guards the form (no login CSRF).
        assert http.post("/accounts/login/", data={"username": user.username, "password": password}).status_code == 403

        wrong = http.post(
            "/accounts/login/", data={"username": user.username, "password": "nope", "csrfmiddlewaretoken": token}
        )
        assert wrong.status_code == 200 and 'role="alert"' in wrong.text
        assert "sessionid" not in http.cookies

        logged_in = http.post(
            "/accounts/login/",
            data={"username": user.username, "password": password, "csrfmiddlewaretoken": token, "next": "/graphql"},
        )
        assert logged_in.status_code == 302 and logged_in.headers["location"] == "/graphql"
        csrf = http.cookies["csrftoken"]  # login rotates it
        assert data_of(http.post("/graphql", json={"query": UPLOADS_QUERY}, headers={"X-CSRFToken": csrf}))

        logged_out = http.post("/accounts/logout/", data={"csrfmiddlewaretoken": csrf})
        assert logged_out.status_code == 200 and "Logged out" in logged_out.text
        after = http.post("/graphql", json={"query": UPLOADS_QUERY}, headers={"X-CSRFToken": http.cookies["csrftoken"]})
        assert after.status_code == 200 and error_codes(after) == ["UNAUTHENTICATED"]


# --- 2. CSRF on session requests --------------------------------------------------------------


def test_session_post_without_csrf_header_is_forbidden_and_starts_nothing(browser: Browser) -> None:
    before = staged_files()
    assert_forbidden(browser.graphql(UPLOADS_QUERY))
    assert_forbidden(browser.upload(os.urandom(256 * 1024)))
    assert not FileUpload.objects.filter(owner=browser.user).exists()
    assert staged_files() - before == set()


def test_session_post_with_a_wrong_csrf_header_is_forbidden_and_stages_nothing(browser: Browser) -> None:
    before = staged_files()
    wrong = "x" * 64
    assert_forbidden(browser.graphql(UPLOADS_QUERY, **{"X-CSRFToken": wrong}))
    assert_forbidden(browser.upload(os.urandom(256 * 1024), **{"X-CSRFToken": wrong}))
    assert not FileUpload.objects.filter(owner=browser.user).exists()
    assert staged_files() - before == set()


def test_session_post_with_csrf_header_works_for_json_and_multipart(browser: Browser) -> None:
    assert data_of(browser.graphql(UPLOADS_QUERY, **{"X-CSRFToken": browser.csrftoken}))["uploads"]["totalCount"] == 0
    content = os.urandom(300 * 1024)
    upload = data_of(browser.upload(content, **{"X-CSRFToken": browser.csrftoken}))["uploadFile"]
    assert upload["status"] == "QUEUED" and upload["sha256"] == hashlib.sha256(content).hexdigest()
    assert FileUpload.objects.get(id=upload["id"]).owner_id == browser.user.id
    wait_completed(browser, upload["id"])


def test_bearer_request_needs_no_csrf_token(stack, api_user) -> None:
    assert data_of(graphql(stack.url, UPLOADS_QUERY, headers=api_user.headers))["uploads"]["totalCount"] == 0
    upload = data_of(upload_file(stack.url, b"bearer bytes", headers=api_user.headers))["uploadFile"]
    assert FileUpload.objects.get(id=upload["id"]).owner_id == api_user.user.id


def test_with_both_credentials_the_token_decides(browser: Browser, make_user) -> None:
    other = make_user()
    bad = {"Authorization": "Bearer " + "b" * 43}
    # A good session does not rescue a bad token, with or without the CSRF header.
    for headers in (bad, {**bad, "X-CSRFToken": browser.csrftoken}):
        refused = browser.graphql(UPLOADS_QUERY, **headers)
        assert refused.status_code == 401 and error_codes(refused) == ["UNAUTHENTICATED"]
        refused = browser.upload(b"not for anyone", **headers)
        assert refused.status_code == 401 and error_codes(refused) == ["UNAUTHENTICATED"]

    # A good token needs no CSRF header beside the session cookie, and acts as its own user.
    upload = data_of(browser.upload(b"the token's upload", **other.headers))["uploadFile"]
    assert FileUpload.objects.get(id=upload["id"]).owner_id == other.user.id
    assert not FileUpload.objects.filter(owner=browser.user).exists()


def test_cross_site_multipart_post_with_the_session_cookie_starts_no_upload(browser: Browser) -> None:
    """What a foreign page's <form enctype="multipart/form-data"> or no-cors fetch sends: no preflight."""
    before = staged_files()
    content = os.urandom(2 * 1024 * 1024)
    body, content_type = _encoded_multipart(content)
    cookie = f"sessionid={browser.sessionid}; csrftoken={browser.csrftoken}"
    headers = {
        "Content-Type": content_type,
        "Cookie": cookie,
        "Origin": EVIL,
        "Referer": f"{EVIL}/innocent.html",
        "Sec-Fetch-Site": "cross-site",
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-Dest": "document",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
        "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
    }
    response = httpx.post(f"{browser.url}/graphql", content=body, headers=headers, timeout=30)
    assert_forbidden(response)
    assert "access-control-allow-origin" not in response.headers
    # The same, carrying the cookie's value as a form field the way Django's own forms do.
    body, content_type = _encoded_multipart(content, extra={"csrfmiddlewaretoken": browser.csrftoken})
    response = httpx.post(
        f"{browser.url}/graphql", content=body, headers={**headers, "Content-Type": content_type}, timeout=30
    )
    assert_forbidden(response)
    assert not FileUpload.objects.filter(owner=browser.user).exists()
    assert staged_files() - before == set()


def _encoded_multipart(content: bytes, extra: dict[str, str] | None = None) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", data=extra or {}, files=_multipart(content))
    return request.read(), request.headers["content-type"]


# --- 3. websockets from browsers --------------------------------------------------------------


def _ws_headers(browser: Browser) -> dict[str, str]:
    return {"Cookie": f"sessionid={browser.sessionid}; csrftoken={browser.csrftoken}"}


async def _init(ws: Any, payload: dict[str, Any] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "connection_init"}
    if payload is not None:
        message["payload"] = payload
    await ws.send(json.dumps(message))
    return json.loads(await ws.recv())


def test_websocket_with_the_session_cookie_authenticates_and_subscribes(stack, browser: Browser) -> None:
    upload = data_of(browser.upload(os.urandom(1024 * 1024 + 7), **{"X-CSRFToken": browser.csrftoken}))["uploadFile"]
    origin = stack.url  # a page served by this server

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(
            stack.ws_url, subprotocols=["graphql-transport-ws"], origin=origin, additional_headers=_ws_headers(browser)
        ) as ws:
            assert (await _init(ws, None))["type"] == "connection_ack"
            subscriber = Subscriber(ws)
            return await asyncio.wait_for(
                subscriber.events_until_complete(await subscriber.subscribe(upload["id"])), 60
            )

    events = asyncio.run(run())
    assert events and events[-1]["status"] == "COMPLETED" and events[-1]["uploadId"] == upload["id"]


def test_websocket_without_credentials_is_closed_with_4403(stack) -> None:
    async def run() -> int | None:
        async with websockets.connect(stack.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(run()) == 4403


def test_websocket_from_a_foreign_origin_is_refused_even_with_the_session(stack, api_user, browser: Browser) -> None:
    async def handshake(origin: str, headers: dict[str, str]) -> int:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(
                stack.ws_url, subprotocols=["graphql-transport-ws"], origin=origin, additional_headers=headers
            ):
                pass
        return refused.value.response.status_code

    assert asyncio.run(handshake(EVIL, _ws_headers(browser))) == 403
    assert asyncio.run(handshake(f"http://evil.example:{stack.url.rsplit(':', 1)[1]}", {})) == 403


def test_websocket_with_no_origin_or_an_allowed_one_and_a_token_works(stack, api_user) -> None:
    async def init(origin: str | None) -> str:
        async with websockets.connect(stack.ws_url, subprotocols=["graphql-transport-ws"], origin=origin) as ws:
            return (await _init(ws, {"Authorization": f"Bearer {api_user.token}"}))["type"]

    assert asyncio.run(init(None)) == "connection_ack"
    assert asyncio.run(init("http://localhost:3000")) == "connection_ack"  # a host in ALLOWED_HOSTS


# --- 4. GraphiQL ------------------------------------------------------------------------------


def _graphiql_page(http: httpx.Client | None, url: str) -> httpx.Response:
    headers = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    return http.get("/graphql", headers=headers) if http else httpx.get(f"{url}/graphql", headers=headers, timeout=30)


def _default_operations(page: str) -> str:
    match = re.search(r'<script type="application/graphql" id="default-operations">(.*?)</script>', page, re.S)
    assert match, page
    return html.unescape(match.group(1))


def test_graphiql_page_loads_for_anyone_with_the_examples_and_the_files_note(stack) -> None:
    page = _graphiql_page(None, stack.url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "csrftoken" in page.cookies  # the page's HTTP requests send it back as X-CSRFToken
    text = page.text
    assert "GraphiQL cannot send files" in text
    assert "python -m backend.client" in text and "upload FILE" in text and "curl " in text
    assert "log in" in text and "/accounts/login/" in text
    document = _default_operations(text)
    assert "query Uploads" in document and "uploads(first: 10)" in document
    assert "subscription UploadProgress($id: ID!)" in document and "uploadProgress(id: $id)" in document
    assert f"curl {stack.url}/graphql" in document
    assert "subscriptionUrl" in text and '"X-CSRFToken": csrfToken()' in text


def test_graphiql_default_tab_runs_as_written_for_a_logged_in_user(stack, browser: Browser) -> None:
    """The page's own operations, sent the way the page sends them: HTTP with X-CSRFToken, ws with the cookie."""
    page = _graphiql_page(browser.http, stack.url)
    assert page.status_code == 200 and f"Signed in as <strong>{browser.user.username}</strong>" in page.text
    document = _default_operations(page.text)
    upload = data_of(browser.upload(os.urandom(2 * 1024 * 1024), **{"X-CSRFToken": browser.csrftoken}))["uploadFile"]

    listed = browser.http.post(
        "/graphql",
        json={"query": document, "operationName": "Uploads"},
        headers={"X-CSRFToken": browser.csrftoken, "Origin": stack.url},
    )
    edges = data_of(listed)["uploads"]["edges"]
    assert [edge["node"]["id"] for edge in edges] == [upload["id"]]

    async def subscribe() -> list[dict[str, Any]]:
        async with websockets.connect(
            stack.ws_url,
            subprotocols=["graphql-transport-ws"],
            origin=stack.url,
            additional_headers=_ws_headers(browser),
        ) as ws:
            assert (await _init(ws, None))["type"] == "connection_ack"
            await ws.send(
                json.dumps(
                    {
                        "id": "1",
                        "type": "subscribe",
                        "payload": {
                            "query": document,
                            "operationName": "UploadProgress",
                            "variables": {"id": upload["id"]},
                        },
                    }
                )
            )
            return await asyncio.wait_for(Subscriber(ws).events_until_complete("1"), 60)

    events = asyncio.run(subscribe())
    assert events[-1]["status"] == "COMPLETED" and events[-1]["bytesUploaded"] == 2 * 1024 * 1024


def test_graphiql_off_answers_404_json(make_stack) -> None:
    private = make_stack(env={"GRAPHIQL": "false"}, workers=0)
    page = _graphiql_page(None, private.url)
    assert page.status_code == 404, page.text
    assert page.headers["content-type"].startswith("application/json")
    assert error_codes(page) == ["NOT_FOUND"]


# --- 5. CORS ----------------------------------------------------------------------------------


def test_cors_allows_bearer_requests_from_configured_origins_only(make_stack, api_user) -> None:
    private = make_stack(env={"CORS_ALLOWED_ORIGINS": "https://app.example"}, workers=0)
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }

    allowed = httpx.options(f"{private.url}/graphql", headers={"Origin": "https://app.example", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    assert "POST" in allowed.headers["access-control-allow-methods"]
    # Cookies never ride along cross-origin: only bearer tokens are for other origins.
    assert "access-control-allow-credentials" not in allowed.headers

    answered = graphql(private.url, UPLOADS_QUERY, headers={"Origin": "https://app.example", **api_user.headers})
    assert answered.headers["access-control-allow-origin"] == "https://app.example"
    assert data_of(answered)["uploads"]["totalCount"] == 0

    refused = httpx.options(f"{private.url}/graphql", headers={"Origin": EVIL, **preflight})
    assert "access-control-allow-origin" not in refused.headers
    foreign = graphql(private.url, UPLOADS_QUERY, headers={"Origin": EVIL, **api_user.headers})
    assert "access-control-allow-origin" not in foreign.headers
