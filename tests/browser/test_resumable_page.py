"""The page sends resumably (tus): a network that drops mid-upload is waited out and the upload goes
on; a reload mid-upload lists it paused at N%, and choosing the same file again continues from the
server's offset. Chromium's network emulation holds its uplink to 1 MiB/s, so an upload takes seconds,
and it reaches the server through a TCP proxy (tests/support/proxy.py) that counts the bytes arriving."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from backend.uploads.models import FileUpload
from tests.browser.conftest import BAR_RECORDER, off_the_loop
from tests.browser.test_upload_page import download, log_in, make_file, row, wait_bar_steps
from tests.support.processes import wait_until
from tests.support.proxy import TcpProxy

MIB = 1024 * 1024


@pytest.fixture
def proxy(web_stack: Any) -> Iterator[TcpProxy]:
    port = urlsplit(web_stack.url).port
    assert port is not None
    proxy = TcpProxy(upstream_port=port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied_page(chromium: Browser, proxy: TcpProxy) -> Iterator[Page]:
    context = chromium.new_context(base_url=proxy.url, accept_downloads=True, viewport={"width": 900, "height": 800})
    context.add_init_script(BAR_RECORDER)
    page = context.new_page()
    network = context.new_cdp_session(page)
    network.send("Network.enable")
    conditions = {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": MIB}
    network.send("Network.emulateNetworkConditions", conditions)
    yield page
    context.close()


def uploads_of(user: Any) -> list[FileUpload]:
    return off_the_loop(lambda: list(FileUpload.objects.filter(owner=user)))


def test_a_network_dropped_mid_upload_resumes_by_itself(proxied_page: Page, proxy: TcpProxy, tmp_path: Path) -> None:
    page = proxied_page
    user = log_in(page)
    path = make_file(tmp_path, "trip.bin", 4 * MIB)
    page.get_by_label("Choose files or drop them here").set_input_files(path)
    wait_bar_steps(page, "trip.bin", 2, phase="sending")

    # The network goes: the browser says it is offline, and the connections it had are cut.
    page.context.set_offline(True)
    proxy.drop_connections()
    expect(row(page, "trip.bin")).to_have_attribute("data-sending", "waiting")
    expect(row(page, "trip.bin").locator(".upload-detail")).to_contain_text("sending again when the network is back")
    (waiting,) = uploads_of(user)
    assert (waiting.status, waiting.mode) == ("RECEIVING", "RESUMABLE")
    assert 0 < waiting.bytes_received < 4 * MIB

    page.context.set_offline(False)
    expect(row(page, "trip.bin")).to_have_attribute("data-status", "COMPLETED")
    (done,) = uploads_of(user)  # the same upload, taken up again, not a second one
    assert done.id == waiting.id
    assert done.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert download(page, "trip.bin") == path.read_bytes()


def test_a_reload_mid_upload_shows_it_paused_and_the_same_file_resumes_it(
    proxied_page: Page, proxy: TcpProxy, tmp_path: Path
) -> None:
    page = proxied_page
    user = log_in(page)
    size = 6 * MIB
    path = make_file(tmp_path, "long.bin", size)
    page.get_by_label("Choose files or drop them here").set_input_files(path)
    wait_until(lambda: any(u.bytes_received >= MIB for u in uploads_of(user)), what="a MiB of long.bin on the server")

    page.reload()
    paused = row(page, "long.bin")
    expect(paused).to_have_attribute("data-status", "PAUSED")
    expect(paused.locator(".upload-detail")).to_contain_text(re.compile(r"^Paused at \d+%: .* on the server"))
    expect(paused.locator(".upload-detail")).to_contain_text("choose the same file to go on from there")
    shown = int(re.search(r"Paused at (\d+)%", paused.locator(".upload-detail").inner_text()).group(1))
    assert 0 < shown < 100
    # What the old page still had on the way is lost with it; count the bytes from here on.
    proxy.drop_connections()

    # Another file of the same size is not taken for it.
    other = tmp_path / "other"
    other.mkdir()
    (other / "long.bin").write_bytes(b"\x00" * size)
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Resume long.bin").click()
    chooser.value.set_files(other / "long.bin")
    expect(paused.locator(".upload-detail")).to_contain_text("is not the file this upload was started with")
    expect(paused).to_have_attribute("data-status", "PAUSED")

    # The same file, chosen in the main picker, continues the paused upload from the server's offset.
    page.get_by_label("Choose files or drop them here").set_input_files(path)
    expect(paused).to_have_attribute("data-resumed-at", re.compile(r"^\d+$"))
    resumed_at = int(paused.get_attribute("data-resumed-at") or "0")
    assert resumed_at >= shown * size // 100
    expect(paused).to_have_attribute("data-status", "COMPLETED")
    expect(page.locator("li.upload")).to_have_count(1)

    (upload,) = uploads_of(user)
    assert upload.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # From the server's side: the bytes before the offset never came again. What reached it since the
    # page was reloaded is the rest of the file plus requests' heads and GraphQL (well under 64 KiB).
    assert size - resumed_at <= proxy.sent < size - resumed_at + 64 * 1024, (resumed_at, proxy.sent)
    assert download(page, "long.bin") == path.read_bytes()
