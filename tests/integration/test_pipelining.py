"""Pipelining (issue 19): whole parts of a tus upload go to the bucket while the client still sends.

Real processes throughout: the ASGI server, RQ workers, the reaper (cron), tuspy (PyPI's tus
client) and, for S3, a moto server over HTTP. The client is throttled by the test itself: it
sends up to an offset with tuspy's `upload(stop_at=...)`, then holds until the API shows what the
test waits for (parts in the bucket while RECEIVING), so no timing is guessed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.storage.local import LocalStorage
from tests.support.client import UPLOAD_QUERY, data_of, graphql, subscriber, upload_file
from tests.support.moto import PART as S3_PART
from tests.support.moto import Moto, moto_start, s3_env
from tests.support.processes import wait_until
from tests.support.uploads import Gate, put_part_counts, upload_wait_for_status

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def moto(session_root: Path) -> Iterator[Moto]:
    server = moto_start(session_root, "moto-pipelining")
    yield server
    server.stop()


@dataclass
class Bucket:
    """The store one test's stack writes to, and what the test may ask of it."""

    kind: str
    part: int
    log: Path
    env: dict[str, str]
    moto: Moto | None = None
    name: str = ""

    def object_exists(self, key: str) -> bool:
        if self.moto is None:
            return LocalStorage(root=Path(os.environ["LOCAL_STORAGE_ROOT"])).object_path(key).exists()
        try:
            self.moto.client().head_object(Bucket=self.name, Key=key)
        except Exception:
            return False
        return True

    def open_objects(self, key: str) -> list[str]:
        """The multipart uploads (local: temporary-area entries) still open for `key`."""
        if self.moto is None:
            handle = FileUpload.objects.filter(storage_key=key).values_list("storage_upload_id", flat=True).first()
            entries = LocalStorage(root=Path(os.environ["LOCAL_STORAGE_ROOT"])).temporary_entries()
            return [e.name for e in entries if handle and e.handle == handle]
        listed = self.moto.client().list_multipart_uploads(Bucket=self.name, Prefix=key)
        return [u["UploadId"] for u in listed.get("Uploads", []) if u["Key"] == key]

    def parts_sent(self, key: str) -> Counter[int]:
        """How many times the workers put each part of `key` (S3: each stack has its own bucket)."""
        if self.moto is None:
            return put_part_counts(self.log, key=key)
        if not self.log.exists():
            return Counter()
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return Counter(e["part"] for e in lines if e["status"] == 200)


@pytest.fixture(params=["local", "s3"])
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Bucket:
    log = tmp_path / "parts.jsonl"
    if request.param == "local":
        return Bucket(kind="local", part=MIB, log=log, env={"TEST_STORAGE_LOG": str(log)})
    moto: Moto = request.getfixturevalue("moto")
    name = f"pipeline-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    return Bucket(kind="s3", part=S3_PART, log=log, env=s3_env(moto, name, TEST_S3_LOG=str(log)), moto=moto, name=name)


# --- helpers ----------------------------------------------------------------------------------


def _tus(url: str, headers: dict[str, str], path: Path, chunk: int, **metadata: str) -> Any:
    """A tuspy uploader whose upload is created now (so the test can watch it before any byte)."""
    client = tus_client.TusClient(f"{url}/uploads/", headers=headers)
    uploader = client.uploader(str(path), chunk_size=chunk, metadata={"filename": path.name, **metadata})
    uploader.set_url(uploader.create_url())
    uploader.offset = 0
    return uploader


def _id_of(uploader: Any) -> str:
    return uploader.url.rsplit("/", 1)[1]


def _api(url: str, headers: dict[str, str], upload_id: str) -> dict[str, Any]:
    return data_of(graphql(url, UPLOAD_QUERY, {"id": upload_id}, headers))["upload"]


def _wait_uploaded_while_receiving(url: str, headers: dict[str, str], upload_id: str, at_least: int) -> dict:
    """Wait until the API shows `at_least` bytes in the bucket while the upload is still RECEIVING."""

    def seen() -> dict[str, Any] | None:
        upload = _api(url, headers, upload_id)
        assert upload["status"] == "RECEIVING", upload
        return upload if upload["bytesUploaded"] >= at_least else None

    return wait_until(seen, timeout=60, what=f"{at_least} bytes of {upload_id} in the bucket while RECEIVING")


def _file(tmp_path: Path, name: str, size: int) -> tuple[Path, bytes]:
    content = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(content)
    return path, content


class Events:
    """Every uploadProgress event of one upload, collected by a real websocket client in a thread."""

    def __init__(self, ws_url: str, token: str, upload_id: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(ws_url, token, upload_id), daemon=True)
        self.thread.start()
        assert self.subscribed.wait(30)
        # The snapshot comes first: once it is in, the subscription is live.
        wait_until(lambda: self.events, timeout=30, what="the subscription's snapshot")

    def _run(self, ws_url: str, token: str, upload_id: str) -> None:
        async def collect() -> None:
            async with subscriber(ws_url, token) as session:
                sub_id = await session.subscribe(upload_id)
                self.subscribed.set()
                await session.events_until_complete(sub_id, self.events)

        try:
            asyncio.run(asyncio.wait_for(collect(), timeout=240))
        except BaseException as exc:
            self.error = exc
            self.subscribed.set()

    def until_complete(self) -> list[dict[str, Any]]:
        self.thread.join(240)
        assert self.error is None, self.error
        return self.events


# --- tests ------------------------------------------------------------------------------------


def test_parts_reach_the_bucket_while_the_client_still_sends(make_stack, bucket, api_user, tmp_path) -> None:
    stack = make_stack(env=bucket.env)
    part = bucket.part
    path, content = _file(tmp_path, "pipelined.bin", 4 * part + 12345)
    uploader = _tus(stack.url, api_user.headers, path, chunk=part // 2)
    upload_id = _id_of(uploader)
    events = Events(stack.ws_url, api_user.token, upload_id)

    uploader.upload(stop_at=2 * part)
    _wait_uploaded_while_receiving(stack.url, api_user.headers, upload_id, at_least=2 * part)
    uploader.upload(stop_at=3 * part + part // 2)
    _wait_uploaded_while_receiving(stack.url, api_user.headers, upload_id, at_least=3 * part)
    uploader.upload()

    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED", done
    assert done["sha256"] == hashlib.sha256(content).hexdigest()
    assert httpx.get(done["downloadUrl"], timeout=30).content == content
    key = done["storageKey"]
    assert bucket.parts_sent(key) == Counter({n: 1 for n in range(1, 6)}), "each part sent once"

    seen = events.until_complete()
    sequences = [e["sequence"] for e in seen]
    assert sequences == sorted(set(sequences)), "one increasing sequence over both legs"
    receiving = [e for e in seen if e["status"] == "RECEIVING"]
    assert any(e["bytesUploaded"] > 0 for e in receiving), "subscribers see parts land while RECEIVING"
    assert any(e["status"] == "RECEIVING" and e["partNumber"] == 1 for e in seen)
    uploaded = [e["bytesUploaded"] for e in seen]
    assert uploaded == sorted(uploaded), "bytesUploaded never goes back"
    statuses = [e["status"] for e in seen]
    assert statuses[-3:] == ["QUEUED", "UPLOADING", "COMPLETED"] or statuses[-2:] == ["UPLOADING", "COMPLETED"]
    assert statuses.index("QUEUED") > max(i for i, s in enumerate(statuses) if s == "RECEIVING")


def test_no_worker_waits_on_a_slow_client(make_stack, bucket, api_user, tmp_path) -> None:
    """One worker, three clients that stop sending midway, and a fourth upload that must still finish."""
    stack = make_stack(env=bucket.env, workers=1)
    part = bucket.part
    slow = []
    for index in range(3):
        path, content = _file(tmp_path, f"slow-{index}.bin", 3 * part + 1000)
        uploader = _tus(stack.url, api_user.headers, path, chunk=part)
        uploader.upload(stop_at=2 * part)
        slow.append((uploader, content))
    for uploader, _ in slow:
        _wait_uploaded_while_receiving(stack.url, api_user.headers, _id_of(uploader), at_least=2 * part)

    # The three clients hold their uploads open; the only worker is free for a fourth upload.
    fourth = os.urandom(2 * part + 7)
    fourth_id = data_of(upload_file(stack.url, fourth, headers=api_user.headers))["uploadFile"]["id"]
    done = upload_wait_for_status(stack.url, api_user.headers, fourth_id, {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED", done
    assert httpx.get(done["downloadUrl"], timeout=30).content == fourth
    for uploader, _ in slow:
        assert _api(stack.url, api_user.headers, _id_of(uploader))["status"] == "RECEIVING"

    for uploader, _ in slow:
        uploader.upload()
    for uploader, content in slow:
        finished = upload_wait_for_status(stack.url, api_user.headers, _id_of(uploader), {"COMPLETED", "FAILED"})
        assert finished["status"] == "COMPLETED", finished
        assert httpx.get(finished["downloadUrl"], timeout=30).content == content


def test_a_sha256_mismatch_aborts_the_parts_already_sent(make_stack, bucket, api_user, tmp_path) -> None:
    stack = make_stack(env=bucket.env)
    part = bucket.part
    path, _ = _file(tmp_path, "wrong.bin", 3 * part + 99)
    wrong = hashlib.sha256(b"something else").hexdigest()
    uploader = _tus(stack.url, api_user.headers, path, chunk=part, sha256=wrong)
    upload_id = _id_of(uploader)
    uploader.upload(stop_at=2 * part)
    _wait_uploaded_while_receiving(stack.url, api_user.headers, upload_id, at_least=2 * part)
    key = FileUpload.objects.get(id=upload_id).storage_key
    assert bucket.open_objects(key), "the parts are in an open multipart upload"

    with pytest.raises(TusCommunicationError) as refused:
        uploader.upload()
    assert refused.value.status_code == 460

    failed = _api(stack.url, api_user.headers, upload_id)
    assert failed["status"] == "FAILED" and "CHECKSUM_MISMATCH" in failed["error"], failed
    wait_until(lambda: not bucket.open_objects(key), timeout=30, what="the multipart upload aborted")
    assert not bucket.object_exists(key), "nothing visible in the bucket"
    row = FileUpload.objects.get(id=upload_id)
    assert row.storage_upload_id is None and row.parts.count() == 0


def test_cancel_mid_pipeline_aborts_the_multipart_upload(make_stack, bucket, api_user, tmp_path) -> None:
    stack = make_stack(env=bucket.env)
    part = bucket.part
    path, _ = _file(tmp_path, "cancel.bin", 4 * part)
    uploader = _tus(stack.url, api_user.headers, path, chunk=part)
    upload_id = _id_of(uploader)
    uploader.upload(stop_at=2 * part)
    _wait_uploaded_while_receiving(stack.url, api_user.headers, upload_id, at_least=part)
    key = FileUpload.objects.get(id=upload_id).storage_key
    assert bucket.open_objects(key)

    answer = httpx.delete(uploader.url, headers={"Tus-Resumable": "1.0.0", **api_user.headers}, timeout=30)
    assert answer.status_code == 204, answer.text
    assert _api(stack.url, api_user.headers, upload_id)["status"] == "CANCELLED"
    wait_until(lambda: not bucket.open_objects(key), timeout=30, what="the multipart upload aborted")
    assert not bucket.object_exists(key)
    with pytest.raises(TusCommunicationError):
        uploader.upload()
    wait_until(lambda: FileUpload.objects.get(id=upload_id).claim is None, timeout=30, what="the pipeline run to end")
    assert not bucket.open_objects(key), "no run re-opened the object after the cancel"


def test_a_worker_killed_mid_pipeline_resumes_without_resending_parts(make_stack, bucket, api_user, tmp_path) -> None:
    env = {**bucket.env, "UPLOAD_PART_CONCURRENCY": "1", "UPLOAD_STALE_AFTER_SECONDS": "3"}
    # The pipeline run is killed while a gate holds its part 3, parts 1 and 2 confirmed behind it.
    gate = Gate(tmp_path / "gate", part=3)
    stack = make_stack(env=env, faults=gate.plan)
    stack.start_cron()
    part = bucket.part
    path, content = _file(tmp_path, "killed.bin", 6 * part + 5)
    uploader = _tus(stack.url, api_user.headers, path, chunk=part)
    upload_id = _id_of(uploader)
    uploader.upload(stop_at=5 * part)
    gate.reached()
    # The engine records a confirmed part once its successor is on the way: part 2 enters the
    # ledger just after part 3's put starts (and is held), so wait for it, not only for the gate.
    wait_until(
        lambda: FileUpload.objects.get(id=upload_id).parts.count() == 2, timeout=30, what="parts 1 and 2 in the ledger"
    )
    stack.workers[0].kill()
    gate.open()
    row = FileUpload.objects.get(id=upload_id)
    assert row.status == UploadStatus.RECEIVING and row.claim is not None, "killed mid-run, holding the claim"
    confirmed = {p.part_number for p in row.parts.all()}
    assert confirmed == {1, 2}

    stack.add_worker()
    # The reaper frees the silent run's claim and requests a run: the parts already in go out
    # while the client is still holding back its last part.
    _wait_uploaded_while_receiving(stack.url, api_user.headers, upload_id, at_least=5 * part)
    uploader.upload()
    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"}, timeout=90)
    assert done["status"] == "COMPLETED", done
    assert httpx.get(done["downloadUrl"], timeout=30).content == content
    sent = bucket.parts_sent(done["storageKey"])
    assert set(sent) == set(range(1, 8))
    assert all(sent[n] == 1 for n in confirmed), f"confirmed parts sent again: {sent}"


def test_a_work_horse_killed_mid_pipeline_frees_its_claim_at_once(make_stack, bucket, api_user, tmp_path) -> None:
    """The horse dies, its worker lives: the worker frees that horse's claim and the next run goes on.

    The stale window is ten minutes and no reaper runs, so nothing else could free the claim in time.
    """
    env = {**bucket.env, "UPLOAD_PART_CONCURRENCY": "1", "UPLOAD_STALE_AFTER_SECONDS": "600"}
    # Every work horse sends two parts and dies as it starts a third.
    stack = make_stack(env=env, faults={"crash_after_parts": 2})
    part = bucket.part
    path, content = _file(tmp_path, "horse.bin", 5 * part + 5)
    uploader = _tus(stack.url, api_user.headers, path, chunk=part)
    upload_id = _id_of(uploader)
    uploader.upload(stop_at=4 * part)
    # Four whole parts take two horses: the second runs only once the first one's claim is freed.
    _wait_uploaded_while_receiving(stack.url, api_user.headers, upload_id, at_least=4 * part)
    uploader.upload()
    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"}, timeout=90)
    assert done["status"] == "COMPLETED", done
    assert httpx.get(done["downloadUrl"], timeout=30).content == content
    sent = bucket.parts_sent(done["storageKey"])
    assert set(sent) == set(range(1, 7)) and all(n == 1 for n in sent.values()), sent


def test_a_failed_pipeline_run_is_followed_by_another_while_the_client_waits(
    make_stack, bucket, api_user, tmp_path
) -> None:
    """A run fails (the store is down) while the client sends nothing more: the parts go once the store is back.

    No new part arrives to request a run, so only the reaper's look at uploads left behind can.
    """
    outage = tmp_path / "store-down"
    outage.touch()
    stack = make_stack(env={**bucket.env, "UPLOAD_PART_RETRIES": "2"}, faults={"outage_while": str(outage)})
    stack.start_cron()
    part = bucket.part
    path, content = _file(tmp_path, "outage.bin", 3 * part + 17)
    uploader = _tus(stack.url, api_user.headers, path, chunk=part)
    upload_id = _id_of(uploader)
    uploader.upload(stop_at=2 * part)
    worker_log = stack.workers[0].log
    wait_until(
        lambda: "sending parts while receiving failed" in worker_log.read_text(errors="replace"),
        timeout=60,
        what="a pipeline run to fail",
    )
    outage.unlink()
    _wait_uploaded_while_receiving(stack.url, api_user.headers, upload_id, at_least=2 * part)
    uploader.upload()
    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"}, timeout=90)
    assert done["status"] == "COMPLETED", done
    assert httpx.get(done["downloadUrl"], timeout=30).content == content


def test_expiry_mid_pipeline_aborts_the_multipart_upload(make_stack, bucket, api_user, tmp_path) -> None:
    stack = make_stack(env={**bucket.env, "UPLOAD_RECEIVING_TTL": "3"})
    part = bucket.part
    path, _ = _file(tmp_path, "expires.bin", 3 * part)
    uploader = _tus(stack.url, api_user.headers, path, chunk=part)
    upload_id = _id_of(uploader)
    uploader.upload(stop_at=2 * part)
    _wait_uploaded_while_receiving(stack.url, api_user.headers, upload_id, at_least=2 * part)
    key = FileUpload.objects.get(id=upload_id).storage_key
    assert bucket.open_objects(key)

    # The client goes quiet; its next request finds the upload expired (the sweep would, too).
    head = {"Tus-Resumable": "1.0.0", **api_user.headers}
    wait_until(
        lambda: httpx.head(uploader.url, headers=head, timeout=30).status_code == 410,
        timeout=30,
        what="the upload to expire",
    )
    expired = _api(stack.url, api_user.headers, upload_id)
    assert expired["status"] == "FAILED" and "expired" in expired["error"], expired
    assert not bucket.open_objects(key), "the multipart upload is aborted"
    assert not bucket.object_exists(key)


def test_an_object_aborted_behind_the_services_back_while_receiving_never_takes_progress_back(
    make_stack, moto, api_user, tmp_path
) -> None:
    # S3 only: a pipelined upload whose multipart upload is aborted between two rounds (a lifecycle
    # rule, an operator). The next round meets the spent object and stops: while RECEIVING the
    # counters never go back (CONTRACT section 3). The transfer once every byte is in starts the
    # object over as a new transfer: UPLOADING -> QUEUED -> UPLOADING, its counters from 0.
    name = f"pipeline-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    operations = tmp_path / "operations.jsonl"
    stack = make_stack(env=s3_env(moto, name, TEST_S3_OPS_LOG=str(operations)))
    part = S3_PART
    path, content = _file(tmp_path, "aborted.bin", 4 * part + 321)
    uploader = _tus(stack.url, api_user.headers, path, chunk=part)
    upload_id = _id_of(uploader)
    events = Events(stack.ws_url, api_user.token, upload_id)

    uploader.upload(stop_at=2 * part)
    _wait_uploaded_while_receiving(stack.url, api_user.headers, upload_id, at_least=2 * part)
    row = FileUpload.objects.get(id=upload_id)
    moto.client().abort_multipart_upload(Bucket=name, Key=row.storage_key, UploadId=row.storage_upload_id)

    def spent_seen() -> bool:
        lines = [json.loads(line) for line in operations.read_text().splitlines()] if operations.exists() else []
        return any(o["op"] == "ListParts" and o["status"] == 404 for o in lines)

    uploader.upload(stop_at=3 * part)
    wait_until(spent_seen, timeout=60, what="a pipelined round meeting the aborted upload")
    uploader.upload()

    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"}, timeout=90)
    assert done["status"] == "COMPLETED", done
    assert httpx.get(done["downloadUrl"], timeout=30).content == content
    assert (done["partsUploaded"], done["bytesUploaded"]) == (5, len(content))
    assert not moto.client().list_multipart_uploads(Bucket=name).get("Uploads"), "no multipart upload left open"

    seen = events.until_complete()
    sequences = [e["sequence"] for e in seen]
    assert sequences == sorted(set(sequences))
    receiving = [(e["partsUploaded"], e["bytesUploaded"]) for e in seen if e["status"] == "RECEIVING"]
    assert receiving == sorted(receiving), f"progress went back while RECEIVING: {receiving}"
    assert receiving[-1][0] >= 2
    statuses = [e["status"] for e in seen]
    moves = [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]
    assert moves == ["RECEIVING", "QUEUED", "UPLOADING", "QUEUED", "UPLOADING", "COMPLETED"], moves
    after = [e for e in seen if e["status"] != "RECEIVING"]
    restart = [i for i, e in enumerate(after) if e["status"] == "QUEUED"][-1]
    assert (after[restart]["partsUploaded"], after[restart]["bytesUploaded"]) == (0, 0), "the new transfer from 0"
    for transfer in (after[:restart], after[restart:]):
        parts = [e["partsUploaded"] for e in transfer]
        assert parts == sorted(parts), "within one transfer progress never goes back"
