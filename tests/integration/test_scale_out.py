"""Many processes, one system: two servers and three workers on one Redis, one database, one S3.

Uploads go to server A and are followed on server B (and on A). Whichever worker takes a job
transfers it. Mid-way one worker is SIGKILLed (the reaper gives its upload to another worker, which
resumes it) and server B is restarted, as in a rolling restart: its subscribers reconnect and
subscribe again. Under `make test-postgres` the database is PostgreSQL, else SQLite.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import django_rq
import yaml
from rq import Queue

from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.transfer import STAGED_BYTES_MISSING
from backend.uploads.worker import UploadWorker
from tests.support.client import UPLOAD_FIELDS, data_of, follow_progress, graphql, upload_file
from tests.support.moto import PART, moto_start, s3_env
from tests.support.processes import ROOT, wait_until
from tests.support.uploads import Gate, upload_wait_for_status

KIB = 1024
RETRY = f"mutation($id: ID!) {{ retryUpload(id: $id) {{ {UPLOAD_FIELDS} }} }}"
# Largest first (the one worker 0 is killed in); an empty file and a small one.
SIZES = [3 * PART, 2 * PART + 123, 2 * PART, PART + 7, KIB, 0]


def _row(upload_id: str) -> FileUpload:
    return FileUpload.objects.get(id=upload_id)


async def _run(
    stack: Any, gate: Gate, server_a: Any, server_b: Any, token: str, headers: dict[str, str], contents: list[bytes]
):
    """Upload to A, follow on A and B, kill a transferring worker, restart B; every follower's runs."""
    ids: list[str] = []
    followers: dict[tuple[str, str], asyncio.Task[list[list[dict[str, Any]]]]] = {}
    for index, content in enumerate(contents):
        response = await asyncio.to_thread(
            upload_file, server_a.url, content, filename=f"file-{index}.bin", headers=headers
        )
        upload_id = data_of(response)["uploadFile"]["id"]
        ids.append(upload_id)
        for name, server in (("A", server_a), ("B", server_b)):
            followers[(upload_id, name)] = asyncio.create_task(follow_progress(server.ws_url, token, upload_id))
        if index == 0:
            # Worker 0, alone so far, took the first upload and holds its part 2 (part 1 confirmed):
            # the kill below lands mid-transfer. Only then do the two other workers start.
            await asyncio.to_thread(gate.reached)
            for _ in range(2):
                await asyncio.to_thread(stack.add_worker)

    victim, killed = stack.workers[0], ids[0]
    await asyncio.to_thread(victim.kill)
    gate.open()
    row = await asyncio.to_thread(_row, killed)
    assert (row.status, row.parts_uploaded, row.parts_total) == (UploadStatus.UPLOADING, 1, 3)
    # The killed transfer waits for the reaper (UPLOAD_STALE_AFTER_SECONDS): B restarts mid-way.
    await asyncio.to_thread(server_b.restart)
    runs = dict(zip(followers, await asyncio.wait_for(asyncio.gather(*followers.values()), timeout=180), strict=True))
    return ids, killed, runs


def test_two_servers_three_workers_share_one_system_through_a_kill_and_a_restart(
    make_stack, api_user, session_root: Path, tmp_path: Path
) -> None:
    moto = moto_start(session_root, f"moto-scale-{uuid.uuid4().hex[:6]}")
    try:
        bucket = f"uploads-{uuid.uuid4().hex[:12]}"
        moto.client().create_bucket(Bucket=bucket)
        env = s3_env(moto, bucket, UPLOAD_PART_CONCURRENCY="1", UPLOAD_STALE_AFTER_SECONDS="3")
        gate = Gate(tmp_path / "gate", part=2)
        stack = make_stack(env=env, workers=1, faults=gate.plan)
        server_a, server_b = stack.server, stack.add_server()
        stack.start_cron()
        contents = [os.urandom(size) for size in SIZES]

        ids, killed, runs = asyncio.run(
            _run(stack, gate, server_a, server_b, api_user.token, api_user.headers, contents)
        )

        for upload_id, content in zip(ids, contents, strict=True):
            row = _row(upload_id)
            assert row.status == UploadStatus.COMPLETED, (upload_id, row.status, row.error)
            stored = moto.client().get_object(Bucket=bucket, Key=row.storage_key)["Body"].read()
            assert hashlib.sha256(stored).digest() == hashlib.sha256(content).digest(), f"{upload_id} differs"
            for server in ("A", "B"):
                events = [event for run in runs[(upload_id, server)] for event in run]
                for run in runs[(upload_id, server)]:
                    sequences = [event["sequence"] for event in run]
                    assert sequences == sorted(set(sequences)), f"{upload_id} on {server}: out of order {sequences}"
                # Across a reconnect the new snapshot may repeat the state last seen, never an older one.
                assert [e["sequence"] for e in events] == sorted(e["sequence"] for e in events)
                last = events[-1]
                assert last["status"] == "COMPLETED" and last["sequence"] == row.sequence, (server, last)
                assert last["bytesUploaded"] == len(content) and last["partsUploaded"] == row.parts_total
            assert len(runs[(upload_id, "A")]) == 1, "server A kept serving its subscribers"
        assert _row(killed).attempts >= 2, "the killed worker's upload was picked up again"
        assert len(runs[(killed, "B")]) >= 2, "B's subscriber reconnected after the restart"
    finally:
        moto.stop()


def test_a_worker_that_does_not_share_staging_fails_the_upload_saying_why(make_stack, api_user, tmp_path) -> None:
    stack = make_stack(workers=0)
    stranger = stack.add_worker(env={"UPLOAD_STAGING_DIR": str(tmp_path / "not-shared")})
    content = os.urandom(3 * KIB)
    upload_id = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]["id"]
    failed = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"FAILED", "COMPLETED"})
    assert failed["status"] == "FAILED"
    assert failed["error"] == STAGED_BYTES_MISSING

    # The bytes are still staged where the server put them: a worker that shares staging can retry.
    stranger.stop()
    stack.add_worker()
    assert data_of(graphql(stack.url, RETRY, {"id": upload_id}, api_user.headers))["retryUpload"]["status"] == "QUEUED"
    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"FAILED", "COMPLETED"})
    assert done["status"] == "COMPLETED", done
    stored = (Path(os.environ["LOCAL_STORAGE_ROOT"]) / done["storageKey"]).read_bytes()
    assert stored == content


def test_a_work_horse_never_closes_its_parents_database_connection() -> None:
    """A forked horse that closed the connection it inherited would end its parent's session too.

    On PostgreSQL that shows as the parent's next query failing (the close goes over the shared
    socket); on SQLite a close in the child leaves the parent's file handle alone, so there only the
    horse's own view can fail: it must find no open connection it did not open itself.
    """
    FileUpload.objects.exists()  # this process, the worker's parent below, now holds a connection
    queue = Queue(f"fork-{uuid.uuid4().hex[:8]}", connection=django_rq.get_connection("default"))
    job = queue.enqueue("tests.support.probes.horse_inherited_connections")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        UploadWorker([queue], connection=queue.connection).work(burst=True)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert job.get_status(refresh=True) == "finished"
    assert job.return_value(refresh=True) == [], "the horse inherited its parent's database connection"
    FileUpload.objects.exists()  # the parent's database session survived its horse


def test_the_compose_worker_health_check_sees_a_live_worker_of_its_host(make_stack) -> None:
    """The worker service's health check, run as docker-compose.yml writes it, against real workers."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    check = compose["services"]["worker"]["healthcheck"]["test"]
    assert check[:2] == ["CMD", "python"]
    stack = make_stack(workers=0)

    def healthy() -> bool:
        # The image's python is the one with the requirements installed: here, this interpreter.
        result = subprocess.run([sys.executable, *check[2:]], cwd=ROOT, env=stack.env, capture_output=True, timeout=30)
        assert not result.stderr, result.stderr.decode()
        return result.returncode == 0

    assert not healthy(), "no worker registered yet"
    stack.add_worker()
    wait_until(healthy, timeout=30, what="the health check to see the worker")
