"""Uppy's @uppy/tus (the real npm package) in Chromium, from a page on another origin (CORS), with a
bearer token: the file arrives COMPLETED and byte-identical. From an origin not in
CORS_ALLOWED_ORIGINS the same page is refused by the browser, and nothing is created."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser

from backend.stack import free_port
from backend.uploads.models import FileUpload
from tests.browser.conftest import off_the_loop
from tests.support.client import UPLOAD_QUERY, data_of, graphql
from tests.support.processes import wait_until
from tests.support.uppy import static_site, uppy_bundle, uppy_ready

MIB = 1024 * 1024
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Uppy on another origin</title>
<script type="module">
  import { Uppy, Tus } from "./uppy.mjs";

  window.runUppy = async (endpoint, token) => {
    const data = await (await fetch("./file.bin")).blob();
    const uppy = new Uppy({ autoProceed: false });
    // Chunks of 1 MiB: several PATCHes, each a cross-origin request with the token.
    uppy.use(Tus, { endpoint, headers: { Authorization: `Bearer ${token}` }, chunkSize: 1024 * 1024, retryDelays: [] });
    let progress = 0;
    uppy.on("upload-progress", () => (progress += 1));
    uppy.addFile({ name: "from-uppy.bin", type: "application/octet-stream", data });
    const result = await uppy.upload();
    return {
      successful: result.successful.map((file) => file.response.uploadURL),
      failed: result.failed.map((file) => String(file.error)),
      progress,
    };
  };
  window.uppyReady = true;
</script>
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    reason = uppy_ready()
    if reason is not None:
        pytest.fail(reason)
    uppy_bundle(tmp_path)
    (tmp_path / "index.html").write_text(PAGE)
    return tmp_path


def run_uppy(chromium: Browser, origin: str, endpoint: str, token: str) -> dict[str, Any]:
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(f"{origin}/index.html")
        page.wait_for_function("() => window.uppyReady === true")
        return page.evaluate("([endpoint, token]) => window.runUppy(endpoint, token)", [endpoint, token])
    finally:
        context.close()


def test_uppy_tus_from_another_origin_completes_byte_identical(
    chromium: Browser, make_stack: Any, make_user: Any, site: Path
) -> None:
    api_user = off_the_loop(make_user)
    content = b"\x00" + os.urandom(3 * MIB + 12345)
    (site / "file.bin").write_bytes(content)
    port, stranger_port = free_port(), free_port()
    stack = make_stack(env={"CORS_ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"}, workers=1)
    endpoint = f"{stack.url}/uploads/"

    with static_site(site, port) as origin, static_site(site, stranger_port) as stranger:
        # A page from an origin the service does not allow: the browser refuses it the answers.
        refused = run_uppy(chromium, stranger, endpoint, api_user.token)
        assert refused["successful"] == [] and len(refused["failed"]) == 1, refused
        assert not off_the_loop(lambda: FileUpload.objects.filter(owner=api_user.user).exists())

        result = run_uppy(chromium, origin, endpoint, api_user.token)

    assert result["failed"] == [], result
    (url,) = result["successful"]
    assert url.startswith(endpoint) and result["progress"] >= 3, result
    upload_id = url.rsplit("/", 1)[-1]
    wait_until(
        lambda: off_the_loop(lambda: FileUpload.objects.get(id=upload_id).status) == "COMPLETED",
        what="the upload Uppy sent to complete",
    )
    upload = data_of(graphql(stack.url, UPLOAD_QUERY, {"id": upload_id}, api_user.headers))["upload"]
    assert (upload["filename"], upload["size"]) == ("from-uppy.bin", len(content))
    assert upload["sha256"] == hashlib.sha256(content).hexdigest()
    assert httpx.get(upload["downloadUrl"], timeout=30).content == content
