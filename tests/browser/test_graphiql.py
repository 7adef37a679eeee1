"""GraphiQL in Chromium with no way off this machine: every request to another origin is refused,
so a page that needed a CDN would stay on "Loading...". The editor must render from the project's
own static files, run the default tab's query, and show a subscription's events as they arrive
(graphql-transport-ws, authenticated by the session cookie alone).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from playwright.sync_api import Page, Route, expect

from backend.tokens.services import token_create
from tests.browser.conftest import ARTIFACTS, off_the_loop
from tests.browser.test_upload_page import log_in
from tests.support.client import data_of, upload_file

# Each value the result pane shows, in order (a subscription's events replace each other there).
RESULT_RECORDER = """
(() => {
  const seen = (window.resultTexts = []);
  const record = () => {
    const pane = document.querySelector(".result-window");
    const text = pane ? pane.innerText : "";
    if (text && text !== seen[seen.length - 1]) seen.push(text);
  };
  new MutationObserver(record).observe(document, { subtree: true, childList: true, characterData: true });
})();
"""


def run_operation(page: Page, name: str) -> None:
    """The run button; with several operations in the tab, GraphiQL asks which one."""
    page.get_by_role("button", name=re.compile("Execute query")).click()
    page.get_by_role("menuitem", name=name).click()


def test_graphiql_renders_offline_runs_a_query_and_shows_a_subscriptions_events(page: Page, web_stack: Any) -> None:
    left_the_origin: list[str] = []

    def only_this_origin(route: Route) -> None:
        if route.request.url.startswith(web_stack.url):
            route.continue_()
        else:
            left_the_origin.append(route.request.url)
            route.abort("internetdisconnected")

    page.context.route("**/*", only_this_origin)
    user = log_in(page)
    token = off_the_loop(lambda: token_create(user=user))
    # 64 parts of 256 KiB, 150 ms apart: about ten seconds of events to watch.
    upload = data_of(
        upload_file(web_stack.url, os.urandom(16 * 1024 * 1024), headers={"Authorization": f"Bearer {token}"})
    )["uploadFile"]

    page.add_init_script(RESULT_RECORDER)
    page.goto("/graphql")
    expect(page.locator(".graphiql-container .CodeMirror").first).to_be_visible()
    expect(page.locator(".graphiql-query-editor")).to_contain_text("query Uploads")
    # The page fills UploadProgress's variable with the newest upload: this one.
    expect(page.locator(".graphiql-editor-tool")).to_contain_text(upload["id"])

    run_operation(page, "Uploads")
    expect(page.locator(".result-window")).to_contain_text(upload["id"])
    expect(page.locator(".result-window")).to_contain_text('"totalCount": 1')

    run_operation(page, "UploadProgress")
    expect(page.locator(".result-window")).to_contain_text('"status": "COMPLETED"', timeout=90_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "graphiql.png"), full_page=True)

    parts = []
    for text in page.evaluate("() => window.resultTexts"):
        match = re.search(r'"partsUploaded":\s*(\d+)', text)
        if match and '"uploadProgress"' in text:
            parts.append(int(match.group(1)))
    assert len(set(parts)) >= 3, f"the subscription's events did not show one after another: {parts}"
    assert parts == sorted(parts) and parts[-1] == 64, parts
    assert left_the_origin == [], f"the page asked other origins for: {json.dumps(left_the_origin)}"
