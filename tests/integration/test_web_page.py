"""The web page at `/` as the server delivers it: login first, the page, its static files.

What the page does in a browser is tested in tests/browser (`make test-browser`); these run in
`make test` and need no browser.
"""

from __future__ import annotations

import re

import httpx

from tests.integration.test_sessions import browser_login, make_password_user

PASSWORD = "a page for people"


def test_page_needs_login_then_shows_the_picker_and_sets_the_csrf_cookie(stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as anonymous:
        answer = anonymous.get("/")
        assert answer.status_code == 302 and answer.headers["location"] == "/accounts/login/?next=/"

    browser = browser_login(stack.url, make_password_user(PASSWORD), PASSWORD)
    try:
        browser.http.cookies.delete("csrftoken")
        page = browser.http.get("/")
        assert page.status_code == 200
        # The script copies this cookie into X-CSRFToken; the page sets it even when it was missing.
        assert browser.http.cookies.get("csrftoken")
        html = page.text
        assert re.search(r'<label class="dropzone"[^>]*>.*?<input type="file" id="file-input" multiple', html, re.S)
        assert 'data-graphql-path="/graphql"' in html
        assert f'data-max-bytes="{5 * 1024**3}"' in html
        assert 'role="status" aria-live="polite"' in html
        assert '<script type="module" src="/static/web/uploads.js"></script>' in html
        script = browser.http.get("/static/web/uploads.js")
        assert script.status_code == 200 and "graphql-transport-ws" in script.text
    finally:
        browser.http.close()


def test_static_files_are_served_with_debug_off(make_stack) -> None:
    stack = make_stack(
        env={"DEBUG": "false", "SECRET_KEY": "a-real-secret-" + "s" * 40, "ALLOWED_HOSTS": "127.0.0.1"},
        workers=0,
    )
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        assert http.get("/").headers["location"] == "/accounts/login/?next=/"
        for path, kind in (
            ("/static/web/uploads.js", "text/javascript"),
            ("/static/web/uploads.css", "text/css"),
            ("/static/admin/css/base.css", "text/css"),
        ):
            answer = http.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"].startswith(kind), answer.headers
            assert "max-age=" in answer.headers["cache-control"]
        assert http.get("/static/web/missing.js").status_code == 404
