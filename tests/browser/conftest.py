"""Browser tests: Playwright drives Debian's Chromium, headless, against a real stack.

Run by `make test-browser` (needs requirements/browser.txt and /usr/bin/chromium); `make test`
ignores this directory. Screenshots land in test-artifacts/ (gitignored).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# No sandbox (CI runs as root), and nothing that reaches out to Google's services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# Parts of 256 KiB, one at a time, 150 ms apart: a 2 MiB file moves its bar in 8 visible steps.
SLOW_PARTS = {
    "UPLOAD_PART_SIZE": str(256 * 1024),
    "UPLOAD_PART_CONCURRENCY": "1",
    "UPLOAD_PART_DELAY_MS": "150",
    "UPLOAD_MAX_BYTES": str(32 * 1024 * 1024),
    "UPLOAD_ALLOWED_TYPES": "application/octet-stream",
}
# Every value the page gives any <progress>, with the row's file name and the bar's phase, in order:
# the bars' history as the page showed it, read by the tests (the page itself keeps none).
BAR_RECORDER = """
(() => {
  const values = (window.barValues = []);
  const value = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, "value");
  Object.defineProperty(HTMLProgressElement.prototype, "value", {
    configurable: true,
    get() { return value.get.call(this); },
    set(v) {
      value.set.call(this, v);
      const row = this.closest("li");
      values.push({
        name: row ? row.querySelector(".upload-name").textContent : "",
        phase: this.dataset.phase,
        value: value.get.call(this),
        at: Math.round(performance.now()),
      });
    },
  });
})();
"""

expect.set_options(timeout=30_000)
T = TypeVar("T")


def off_the_loop(call: Callable[[], T]) -> T:
    """Run a database call in a thread of its own.

    Playwright's sync API keeps an asyncio loop running on the test's thread, where Django refuses
    ORM calls (SynchronousOnlyOperation). DJANGO_ALLOW_ASYNC_UNSAFE would silence that, but the
    stacks the tests start inherit this process's environment, and their servers must not.
    """
    from django.db import connection

    def run() -> T:
        try:
            return call()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (or set CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def web_stack(make_stack: Callable[..., Any]) -> Any:
    return make_stack(env=SLOW_PARTS, workers=2)


@pytest.fixture
def page(chromium: Browser, web_stack: Any, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = chromium.new_context(
        base_url=web_stack.url, accept_downloads=True, viewport={"width": 900, "height": 800}
    )
    context.add_init_script(BAR_RECORDER)
    page = context.new_page()
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failed.png"), full_page=True)
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep the call phase's report on the item, so the page fixture can screenshot a failure."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
