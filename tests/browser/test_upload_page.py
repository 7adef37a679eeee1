"""The upload page in Chromium: bars that move part by part, cancel, retry, download, reload, reconnect.

Each test logs in through Django's form, then uses the page as a person would (labels, roles and
buttons by their accessible names). Waits are Playwright's: `expect` and `wait_for_function` poll the
page until a condition holds.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, expect

from backend.uploads.models import FileUpload
from tests.browser.conftest import ARTIFACTS, off_the_loop
from tests.integration.test_sessions import make_password_user
from tests.support.client import data_of, upload_file
from tests.support.uploads import incoming_entries

PASSWORD = "pages and parts"


def log_in(page: Page) -> Any:
    """A new user logs in through the form the page redirects to; back on `/`."""
    user = off_the_loop(lambda: make_password_user(PASSWORD))
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Uploads", exact=True)).to_be_visible()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator("#list-summary")).not_to_have_text("Loading…")
    return user


def make_file(directory: Path, name: str, size: int) -> Path:
    """Bytes no sniffer takes for anything but application/octet-stream (they start with NUL)."""
    path = directory / name
    path.write_bytes(b"\x00" + random.Random(name).randbytes(size - 1))
    return path


def row(page: Page, name: str) -> Locator:
    return page.locator("li.upload").filter(
        has=page.locator(".upload-name", has_text=re.compile(f"^{re.escape(name)}$"))
    )


def bar_values(page: Page, name: str, phase: str | None = None, since: int = 0) -> list[float]:
    """The values the page gave `name`'s bar (in `phase`), from the `since`-th record on."""
    records = page.evaluate("() => window.barValues")[since:]
    return [r["value"] for r in records if r["name"] == name and (phase is None or r["phase"] == phase)]


def wait_bar_steps(page: Page, name: str, steps: int, since: int = 0, phase: str = "copying") -> None:
    """Wait until `name`'s bar has shown `steps` distinct `phase` values strictly between 0 and 1."""
    page.wait_for_function(
        """([name, steps, since, phase]) => new Set(window.barValues.slice(since)
             .filter((r) => r.name === name && r.phase === phase && r.value > 0 && r.value < 1)
             .map((r) => r.value)).size >= steps""",
        arg=[name, steps, since, phase],
    )


def records(page: Page) -> int:
    return page.evaluate("() => window.barValues.length")


def assert_climbs_to_done(values: list[float]) -> None:
    """Never backwards, at least three distinct values on the way, and 100% at the end."""
    assert values == sorted(values), values
    assert len({v for v in values if 0 < v < 1}) >= 3, values
    assert values[-1] == 1, values


def download(page: Page, name: str) -> bytes:
    with page.expect_download() as info:
        page.get_by_role("link", name=f"Download {name}").click()
    return Path(info.value.path()).read_bytes()


def announced(page: Page) -> Locator:
    """What the polite live region has said (its recent messages)."""
    return page.locator("#announcer p")


def test_two_files_at_once_cancel_one_retry_it_and_download_both(page: Page, tmp_path: Path) -> None:
    log_in(page)
    small = make_file(tmp_path, "small.bin", 2 * 1024 * 1024)  # 8 parts
    large = make_file(tmp_path, "large.bin", 5 * 1024 * 1024)  # 20 parts
    page.get_by_label("Choose files or drop them here").set_input_files([small, large])

    # Each file has one bar; it sends first, then follows the copy to the bucket.
    expect(page.get_by_role("progressbar")).to_have_count(2)
    wait_bar_steps(page, "large.bin", 2)
    page.get_by_role("button", name="Cancel large.bin").click()
    expect(row(page, "large.bin")).to_have_attribute("data-status", "CANCELLED")
    expect(row(page, "large.bin").locator(".upload-detail")).to_contain_text("Cancelled at part")
    cancelled_at = bar_values(page, "large.bin", "copying")
    assert max(cancelled_at) < 1, cancelled_at

    expect(row(page, "small.bin")).to_have_attribute("data-status", "COMPLETED")
    assert bar_values(page, "small.bin")[0] == 0 and "sending" in {
        r["phase"] for r in page.evaluate("() => window.barValues") if r["name"] == "small.bin"
    }
    assert_climbs_to_done(bar_values(page, "small.bin", "copying"))
    expect(row(page, "small.bin").locator(".upload-detail")).to_have_text("Stored: 8 parts · 2.0 MiB")
    assert download(page, "small.bin") == small.read_bytes()

    # Retried after the cancel, the large file starts over and runs to completion.
    retried_from = records(page)
    page.get_by_role("button", name="Retry large.bin").click()
    wait_bar_steps(page, "large.bin", 3, since=retried_from)
    expect(row(page, "large.bin").locator(".upload-detail")).to_contain_text("Copying to the bucket: part")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "upload-page.png"), full_page=True)
    expect(row(page, "large.bin")).to_have_attribute("data-status", "COMPLETED")
    assert_climbs_to_done(bar_values(page, "large.bin", "copying", since=retried_from))
    assert download(page, "large.bin") == large.read_bytes()

    expect(announced(page).filter(has_text="large.bin: cancelled")).to_have_count(1)
    expect(announced(page).filter(has_text="large.bin: completed")).to_have_count(1)
    expect(page.locator("#list-summary")).to_have_text("2 uploads")


def test_reload_and_a_server_restart_mid_upload_resume_the_bar(page: Page, web_stack: Any, tmp_path: Path) -> None:
    log_in(page)
    # 96 parts, about 15 s: time for a reload and a server restart (seconds under load) on the way.
    big = make_file(tmp_path, "big.bin", 24 * 1024 * 1024)
    page.get_by_label("Choose files or drop them here").set_input_files(big)
    wait_bar_steps(page, "big.bin", 2)
    before_reload = max(bar_values(page, "big.bin", "copying"))

    # A new page knows the upload only from the list, which follows the active ones.
    page.reload()
    expect(row(page, "big.bin")).to_have_attribute("data-status", re.compile("QUEUED|UPLOADING"))
    wait_bar_steps(page, "big.bin", 2)
    after_reload = bar_values(page, "big.bin", "copying")
    assert min(after_reload) >= before_reload, (before_reload, after_reload)

    # The server goes away and comes back on the same port: the socket reconnects and resubscribes.
    web_stack.server.stop()
    expect(page.locator("#connection")).to_have_text("Live progress is reconnecting…")
    expect(page.locator("#connection")).to_be_visible()
    web_stack.server.start()
    restarted_from = records(page)
    expect(page.locator("#connection")).to_be_hidden()
    expect(announced(page).filter(has_text="Live progress is back")).to_have_count(1)
    # The snapshot of the new subscription, then the parts after it, to the end.
    wait_bar_steps(page, "big.bin", 2, since=restarted_from)
    expect(row(page, "big.bin")).to_have_attribute("data-status", "COMPLETED")
    assert min(bar_values(page, "big.bin", "copying", since=restarted_from)) >= max(after_reload)
    assert_climbs_to_done(bar_values(page, "big.bin", "copying"))
    assert download(page, "big.bin") == big.read_bytes()


def test_sending_shows_its_own_progress_and_a_cancel_while_sending_creates_nothing(page: Page, tmp_path: Path) -> None:
    user = log_in(page)
    slow = make_file(tmp_path, "slow.bin", 3 * 1024 * 1024)
    # Chromium's network emulation holds the request body to 1 MiB/s: about three seconds of sending.
    network = page.context.new_cdp_session(page)
    network.send("Network.enable")
    conditions = {"offline": False, "latency": 0, "downloadThroughput": -1}
    network.send("Network.emulateNetworkConditions", {**conditions, "uploadThroughput": 1024 * 1024})
    page.get_by_label("Choose files or drop them here").set_input_files(slow)

    wait_bar_steps(page, "slow.bin", 3, phase="sending")
    expect(row(page, "slow.bin").locator(".upload-detail")).to_contain_text("Sending to the server: ")
    page.get_by_role("button", name="Cancel slow.bin").click()
    expect(row(page, "slow.bin")).to_have_attribute("data-status", "NOT_SENT")
    expect(row(page, "slow.bin").locator(".upload-detail")).to_have_text(
        "Not sent: cancelled before it reached the server (ABORTED)"
    )
    expect(announced(page).filter(has_text="slow.bin: not sent")).to_have_count(1)
    assert max(bar_values(page, "slow.bin", "sending")) < 1
    assert not off_the_loop(lambda: FileUpload.objects.filter(owner=user).exists())
    assert incoming_entries() == []

    # The page still holds the file: Retry sends it again, and this time it goes all the way.
    network.send("Network.emulateNetworkConditions", {**conditions, "uploadThroughput": -1})
    page.get_by_role("button", name="Retry slow.bin").click()
    expect(row(page, "slow.bin")).to_have_attribute("data-status", "COMPLETED")
    assert download(page, "slow.bin") == slow.read_bytes()


def test_list_pages_keyboard_drop_refusals_delete_and_session_end(page: Page, web_stack: Any, tmp_path: Path) -> None:
    user = log_in(page)
    from backend.tokens.services import token_create

    headers = {"Authorization": f"Bearer {off_the_loop(lambda: token_create(user=user))}"}
    for number in range(12):
        content = b"\x00" + f"earlier {number}".encode()
        data_of(upload_file(web_stack.url, content, filename=f"earlier-{number:02}.bin", headers=headers))
    page.reload()

    # Ten a page, newest first; the cursor pages forward and back.
    expect(page.locator("#list-summary")).to_have_text("12 uploads")
    expect(page.locator("li.upload")).to_have_count(10)
    expect(page.locator("li.upload .upload-name").first).to_have_text("earlier-11.bin")
    expect(page.locator("#page-label")).to_have_text("Page 1 of 2")
    expect(page.get_by_role("button", name="Newer")).to_be_disabled()
    page.get_by_role("button", name="Older").click()
    expect(page.locator("#page-label")).to_have_text("Page 2 of 2")
    expect(page.locator("li.upload .upload-name")).to_have_text(["earlier-01.bin", "earlier-00.bin"])
    expect(page.get_by_role("button", name="Older")).to_be_disabled()
    page.get_by_role("button", name="Newer").click()
    expect(page.locator("li.upload")).to_have_count(10)
    expect(row(page, "earlier-11.bin")).to_have_attribute("data-status", "COMPLETED")

    # The picker opens from the keyboard: Tab from the last control of the header, then Space.
    page.get_by_role("button", name="Log out").focus()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Choose files or drop them here")).to_be_focused()
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(make_file(tmp_path, "too-big.bin", 33 * 1024 * 1024))
    # Over UPLOAD_MAX_BYTES (32 MiB here): refused on the page, nothing sent.
    expect(row(page, "too-big.bin")).to_have_attribute("data-status", "NOT_SENT")
    expect(row(page, "too-big.bin").locator(".upload-detail")).to_have_text(
        "Not sent: larger than the limit of 32.0 MiB"
    )

    # A dropped file the server refuses (text is not an allowed type here) says why, and can be removed.
    dropped = page.evaluate_handle(
        """() => { const data = new DataTransfer();
                   data.items.add(new File(["just some text"], "note.txt", {type: "text/plain"}));
                   return data; }"""
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})
    expect(row(page, "note.txt")).to_have_attribute("data-status", "NOT_SENT")
    expect(row(page, "note.txt").locator(".upload-detail")).to_contain_text("(UNSUPPORTED_MEDIA_TYPE)")
    expect(announced(page).filter(has_text="note.txt: not sent")).to_have_count(1)
    page.get_by_role("button", name="Remove note.txt").click()
    expect(row(page, "note.txt")).to_have_count(0)
    assert not off_the_loop(
        lambda: FileUpload.objects.filter(owner=user, filename__in=["note.txt", "too-big.bin"]).exists()
    )

    # Delete removes the row and the upload.
    deleted = row(page, "earlier-11.bin").get_attribute("data-upload-id")
    page.get_by_role("button", name="Delete earlier-11.bin").click()
    expect(row(page, "earlier-11.bin")).to_have_count(0)
    expect(page.locator("#list-summary")).to_have_text("11 uploads")
    expect(announced(page).filter(has_text="earlier-11.bin: deleted")).to_have_count(1)
    assert not off_the_loop(lambda: FileUpload.objects.filter(id=deleted).exists())

    # Logged out elsewhere: the next request answers UNAUTHENTICATED and the page says to log in again.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    assert page.request.post("/accounts/logout/", form={"csrfmiddlewaretoken": token}).ok
    page.get_by_label("Choose files or drop them here").set_input_files(make_file(tmp_path, "late.bin", 1024))
    expect(page.get_by_role("alert")).to_contain_text("Your session has ended. Log in again")
    expect(row(page, "late.bin").locator(".upload-detail")).to_contain_text("(UNAUTHENTICATED)")
    expect(page.get_by_label("Choose files or drop them here")).to_be_disabled()
    assert page.get_by_role("link", name="Log in again").get_attribute("href") == "/accounts/login/?next=/"
