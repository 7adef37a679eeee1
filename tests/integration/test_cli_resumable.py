"""`upload` sends resumably (tus): a dropped connection is resumed by itself, and a run killed
midway is continued by the next run from the server's offset. The client is a real subprocess;
between it and the real server sits a TCP proxy (tests/support/proxy.py) that slows or cuts it."""

from __future__ import annotations

import hashlib
import json
import re
import signal
from urllib.parse import urlsplit

from backend.client.api import Endpoint
from backend.client.places import FILE_NAME, PlaceStore
from backend.client.resumable import place_key
from backend.uploads.models import FileUpload
from tests.integration.test_cli import MIB, Running, cache_of, cli, write_file
from tests.support.processes import wait_until
from tests.support.proxy import TcpProxy
from tests.support.tus import tus_create, tus_delete


def _proxy(stack, **options) -> TcpProxy:
    port = urlsplit(stack.url).port
    assert port is not None
    return TcpProxy(upstream_port=port, **options).start()


def _places(tmp_path) -> dict[str, str]:
    path = cache_of(tmp_path) / "upload-service" / FILE_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def test_killed_mid_upload_the_next_run_continues_from_the_server_offset(stack, api_user, tmp_path) -> None:
    size = 12 * MIB
    path, content = write_file(tmp_path, "big.bin", size)
    proxy = _proxy(stack, rate=2 * MIB)  # about six seconds of sending
    try:
        first = Running(["upload", str(path), "--url", proxy.url, "--token", api_user.token], cwd=tmp_path)
        receiving = wait_until(
            lambda: FileUpload.objects.filter(owner=api_user.user, bytes_received__gte=2 * MIB).first(),
            what="the first run to have sent 2 MiB",
        )
        first.process.send_signal(signal.SIGKILL)
        first.finish()
        proxy.drop_connections()  # the bytes the dead client had handed the network never arrive
        assert receiving.status == "RECEIVING"
        # The killed run left its place behind: this file's upload, by its tus URL.
        assert list(_places(tmp_path).values()) == [f"{proxy.url}/uploads/{receiving.id}"]

        proxy.rate = None
        second = cli("upload", str(path), "--url", proxy.url, "--token", api_user.token, cwd=tmp_path)
    finally:
        proxy.stop()

    assert second.returncode == 0, second
    found = re.search(r"big\.bin: resuming at .* \((\d+) bytes already there\)", second.stdout)
    assert found, second.stdout
    offset = int(found.group(1))  # what the server's HEAD answered
    assert offset >= 2 * MIB
    # The bytes before the offset were not sent again: what went through the proxy this time is the
    # rest of the file plus requests' heads (HEAD, PATCH, GraphQL and the websocket), nothing more.
    assert size - offset <= proxy.sent < size - offset + 64 * 1024, (offset, proxy.sent)
    (upload,) = FileUpload.objects.filter(owner=api_user.user)
    assert upload.id == receiving.id  # the same upload, taken up again
    digest = hashlib.sha256(content).hexdigest()
    assert (upload.status, upload.mode, upload.sha256) == ("COMPLETED", "RESUMABLE", digest)
    assert f"{path}: COMPLETED as {upload.id}" in second.stdout
    assert _places(tmp_path) == {}  # done: nothing left to resume


def test_a_connection_cut_mid_patch_is_resumed_by_itself(stack, api_user, tmp_path) -> None:
    size = 8 * MIB
    path, content = write_file(tmp_path, "cut.bin", size)
    proxy = _proxy(stack, cut_after=3 * MIB)
    try:
        result = cli("upload", str(path), "--json", "--url", proxy.url, "--token", api_user.token, cwd=tmp_path)
    finally:
        proxy.stop()

    assert result.returncode == 0, result
    assert proxy.cuts == 1
    (upload,) = json.loads(result.stdout)["uploads"]
    assert (upload["status"], upload["sha256"]) == ("COMPLETED", hashlib.sha256(content).hexdigest())
    assert FileUpload.objects.filter(owner=api_user.user).count() == 1  # resumed, not started again
    # The server kept what arrived before the cut: the file went through the proxy about once (plus,
    # for each 423 while the server still held the broken PATCH's lock, one 64 KiB probe).
    assert size <= proxy.sent < size + MIB, proxy.sent


def test_a_place_the_server_no_longer_has_starts_a_new_upload(stack, api_user, tmp_path) -> None:
    path, content = write_file(tmp_path, "again.bin", MIB + 5)
    # An earlier run's upload of this file that was cancelled since (a tus DELETE): HEAD answers 410.
    earlier = tus_create(stack.url, api_user.headers, length=MIB + 5)
    location = earlier.headers["Location"]
    assert tus_delete(location, api_user.headers).status_code == 204
    store = PlaceStore(cache_of(tmp_path) / "upload-service" / FILE_NAME)
    endpoint = Endpoint(base_url=stack.url, token=api_user.token)
    store.put(place_key(endpoint=endpoint, size=MIB + 5, sha256=hashlib.sha256(content).hexdigest()), location)

    result = cli("upload", str(path), "--json", "--url", stack.url, "--token", api_user.token, cwd=tmp_path)

    assert result.returncode == 0, result
    (upload,) = json.loads(result.stdout)["uploads"]
    assert upload["status"] == "COMPLETED" and upload["id"] != location.rsplit("/", 1)[-1]
    assert _places(tmp_path) == {}
