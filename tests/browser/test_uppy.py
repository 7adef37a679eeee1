"""Uppy's `@uppy/aws-s3` 6 (npm, unchanged) in Chromium, uploading through the Companion routes.

Uppy, bundled by esbuild from tests/js, runs in the service's own page after a real login (the
server's origin, with the session cookie); every request it makes goes to the real server
and to moto: `POST /s3/multipart`, a signed URL per part, each part PUT straight to moto (which
answers the preflight from the CORS rule `s3_setup` put, exposing ETag), then `complete`. The
upload must end an ordinary COMPLETED FileUpload whose object is byte for byte the file.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from backend.uploads.models import FileUpload, UploadPart, UploadStatus
from tests.browser.conftest import off_the_loop
from tests.browser.test_upload_page import log_in
from tests.support.moto import PART, Moto, moto_start, s3_env
from tests.support.processes import ROOT, wait_until

JS = ROOT / "tests" / "js"


def pattern_bytes(size: int) -> bytes:
    """The file `uppy_page.mjs` builds: byte i is (31 i + 7) mod 251."""
    period = bytes((i * 31 + 7) % 251 for i in range(251))
    return (period * (size // 251 + 1))[:size]


@pytest.fixture(scope="module")
def moto(session_root: Path) -> Iterator[Moto]:
    server = moto_start(session_root, "moto-uppy")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def uppy_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("uppy") / "uppy.js"
    subprocess.run(
        [
            str(JS / "node_modules" / ".bin" / "esbuild"),
            "uppy_page.mjs",
            "--bundle",
            "--format=iife",
            f"--outfile={out}",
            "--log-level=warning",
        ],
        cwd=JS,
        check=True,
    )
    return out.read_text()


@pytest.fixture
def web_stack(make_stack: Any, moto: Moto) -> Any:
    bucket = f"uppy-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=bucket)
    stack = make_stack(env=s3_env(moto, bucket), workers=1)
    # The rule a browser needs to PUT parts to the bucket and read their ETag, as s3_setup puts it.
    env = {**stack.env, "CORS_ALLOWED_ORIGINS": stack.url}
    subprocess.run([sys.executable, "manage.py", "s3_setup"], cwd=ROOT, env=env, check=True, capture_output=True)
    stack.bucket = bucket
    return stack


def test_uppy_aws_s3_uploads_through_the_companion_routes(page: Page, web_stack: Any, moto: Moto, uppy_bundle: str):
    user = log_in(page)
    # Uppy runs in the service's own page (its origin, as a site embedding Uppy would), loaded as a script.
    page.add_script_tag(content=uppy_bundle)
    size = 2 * PART + 4321
    result = page.evaluate("args => window.uppyUpload(args)", {"size": size, "name": "from-uppy.bin"})
    assert result["failed"] == [] and result["parts"] == [1, 2, 3], result
    (body,) = result["successful"]

    def completed() -> FileUpload | None:
        row = FileUpload.objects.filter(owner_id=user.pk, storage_key=body["key"]).first()
        return row if row is not None and row.status == UploadStatus.COMPLETED else None

    row = off_the_loop(lambda: wait_until(completed, timeout=60, what="the Uppy upload to complete"))
    assert (row.mode, row.filename, row.size, row.parts_total) == ("DIRECT", "from-uppy.bin", size, 3)
    assert off_the_loop(lambda: UploadPart.objects.filter(upload_id=row.id).count()) == 3
    stored = moto.client().get_object(Bucket=web_stack.bucket, Key=row.storage_key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(pattern_bytes(size)).hexdigest()
