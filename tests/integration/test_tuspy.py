"""tuspy (PyPI's tus client) against this server, with a checksum on every chunk (upload_checksum=True)."""

from __future__ import annotations

import hashlib
import os

import httpx
from tusclient import client as tus_client

from tests.support.uploads import upload_wait_for_status

MIB = 1024 * 1024


def test_tuspy_uploads_in_checksummed_chunks_and_resumes_from_the_server_offset(stack, api_user, tmp_path) -> None:
    content = os.urandom(5 * MIB + 321)
    path = tmp_path / "tuspy.bin"
    path.write_bytes(content)
    tus = tus_client.TusClient(f"{stack.url}/uploads/", headers=api_user.headers)
    uploader = tus.uploader(str(path), chunk_size=MIB, upload_checksum=True, metadata={"filename": "tuspy.bin"})
    assert uploader.upload_checksum and uploader.checksum_algorithm_name == "sha1"
    uploader.upload(stop_at=2 * MIB)
    assert uploader.offset == 2 * MIB

    # A new client for the same URL asks the server where it stopped.
    again = tus.uploader(str(path), url=uploader.url, chunk_size=MIB, upload_checksum=True)
    assert again.offset == 2 * MIB
    again.upload()
    upload_id = uploader.url.rsplit("/", 1)[1]
    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"})
    assert (done["status"], done["filename"]) == ("COMPLETED", "tuspy.bin")
    assert done["sha256"] == hashlib.sha256(content).hexdigest()
    assert httpx.get(done["downloadUrl"], timeout=30).content == content
