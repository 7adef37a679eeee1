"""The web page sends straight to the bucket when the server offers direct uploads (S3, DIRECT_UPLOADS).

A real server on moto, the page in Chromium after a real login: the file's parts go from the browser to
moto with presigned URLs (each with its SHA-256, computed in the page), are confirmed one by one, and the
row ends COMPLETED as a DIRECT upload whose object is the file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from backend.uploads.models import FileUpload
from tests.browser.conftest import off_the_loop
from tests.browser.test_upload_page import log_in, row
from tests.support.moto import PART, Moto, moto_start, s3_env
from tests.support.processes import ROOT


@pytest.fixture(scope="module")
def moto(session_root: Path) -> Iterator[Moto]:
    server = moto_start(session_root, "moto-page")
    yield server
    server.stop()


@pytest.fixture
def web_stack(make_stack: Any, moto: Moto) -> Any:
    bucket = f"page-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=bucket)
    stack = make_stack(env=s3_env(moto, bucket), workers=1)
    env = {**stack.env, "CORS_ALLOWED_ORIGINS": stack.url}
    subprocess.run([sys.executable, "manage.py", "s3_setup"], cwd=ROOT, env=env, check=True, capture_output=True)
    stack.bucket = bucket
    return stack


def test_the_page_uploads_straight_to_the_bucket(page: Page, web_stack: Any, moto: Moto, tmp_path: Path):
    user = log_in(page)
    assert page.locator("#app").get_attribute("data-direct-uploads") == "true"
    content = os.urandom(2 * PART + 999)
    path = tmp_path / "direct.bin"
    path.write_bytes(content)
    page.get_by_label("Choose files or drop them here").set_input_files(path)
    expect(row(page, "direct.bin")).to_have_attribute("data-status", "COMPLETED", timeout=60_000)
    upload = off_the_loop(lambda: FileUpload.objects.get(owner_id=user.pk, filename="direct.bin"))
    assert (upload.mode, upload.parts_total, upload.parts_uploaded, upload.size) == ("DIRECT", 3, 3, len(content))
    stored = moto.client().get_object(Bucket=web_stack.bucket, Key=upload.storage_key)["Body"].read()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(content).digest()
