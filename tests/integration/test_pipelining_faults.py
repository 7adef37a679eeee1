"""Pipelining (issue 19) under faults: a store outage over many reaper ticks, work horses dying after the last byte.

Real processes as in test_pipelining.py (the ASGI server, RQ workers, the reaper, tuspy), the
local store wrapped by the fault-injecting double (tests/support/doubles.py). Nothing waits on a
clock: the tests wait on gates, on log lines, and on the count of reaper runs in the worker's log.
"""

from __future__ import annotations

import re
from collections import Counter

import httpx
import pytest

from tests.integration.test_pipelining import MIB, Events, _file, _id_of, _tus
from tests.support.processes import wait_until
from tests.support.uploads import Gate, put_part_counts, upload_wait_for_status

FAILED_RUN = "sending parts while receiving failed"
REAPED = "Successfully completed backend.uploads.jobs.uploads_reap()"


def test_a_store_outage_costs_one_run_per_backoff_not_one_per_reaper_tick(make_stack, api_user, tmp_path) -> None:
    """The reaper runs every second; the store refuses every part; the backoff after a failed run is long.

    Five reaper runs after the first failure, there has been no second run: before the backoff, each
    tick asked for one (a full retry cycle, and its log lines, per upload every tick).
    """
    outage = tmp_path / "store-down"
    outage.touch()
    log = tmp_path / "parts.jsonl"
    env = {
        "TEST_STORAGE_LOG": str(log),
        "UPLOAD_PART_RETRIES": "1",
        "UPLOAD_STALE_AFTER_SECONDS": "3",
        "UPLOAD_PIPELINE_BACKOFF_SECONDS": "300",
    }
    stack = make_stack(env=env, faults={"outage_while": str(outage)}, workers=1)
    stack.start_cron()
    path, _ = _file(tmp_path, "outage.bin", 3 * MIB + 17)
    # One chunk of two parts: one request from the client, so any later run is the reaper's.
    uploader = _tus(stack.url, api_user.headers, path, chunk=2 * MIB)
    upload_id = _id_of(uploader)
    uploader.upload(stop_at=2 * MIB)
    worker_log = stack.workers[0].log

    def text() -> str:
        return worker_log.read_text(errors="replace")

    wait_until(lambda: FAILED_RUN in text(), timeout=60, what="a pipeline run to fail")
    # The chunk may have asked twice (a checkpoint at each part boundary): a second run the client
    # asked for is queued before any reaper job that starts after the first failure, so it has run
    # by the time two of those are done.
    reaped = text().count(REAPED)
    wait_until(lambda: text().count(REAPED) >= reaped + 2, timeout=60, what="two more reaper runs")
    failed = text().count(FAILED_RUN)
    assert failed <= 2, text()
    attempts = put_part_counts(log)
    wait_until(lambda: text().count(REAPED) >= reaped + 7, timeout=60, what="five more reaper runs")
    assert text().count(FAILED_RUN) == failed, "no run asked for by the reaper while the failed one backs off"
    assert put_part_counts(log) == attempts, "no part tried again meanwhile"
    assert "Traceback" not in text(), "a store outage is a warning line, not a traceback"
    assert "the reaper asks again in 300 s" in text()

    # The store back, the client's next part asks at once; the upload completes.
    outage.unlink()
    uploader.upload()
    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"}, timeout=90)
    assert done["status"] == "COMPLETED", done


@pytest.mark.parametrize(("dies_at_put", "status"), [(3, "QUEUED"), (4, "UPLOADING")])
def test_a_work_horse_killed_after_the_last_byte_queues_the_transfer_again(
    make_stack, api_user, tmp_path, dies_at_put, status
) -> None:
    """The pipeline run is held at part 2 while the last byte comes (QUEUED), then goes on and dies.

    At its 3rd put (part 3, sent by the pipeline run while QUEUED) or its 4th (the last part, sent by
    the transfer the run took over under its job's claim, UPLOADING). The stale window is ten
    minutes and no reaper runs: only the worker that saw its horse die can give the upload back, by
    queueing its transfer again under a fresh job id (UPLOADING: moved back to QUEUED first).
    """
    gate = Gate(tmp_path / "gate", part=2)
    log = tmp_path / "parts.jsonl"
    env = {"TEST_STORAGE_LOG": str(log), "UPLOAD_PART_CONCURRENCY": "1", "UPLOAD_STALE_AFTER_SECONDS": "600"}
    stack = make_stack(env=env, faults={**gate.plan, "crash_after_parts": dies_at_put - 1}, workers=1)
    path, content = _file(tmp_path, "horse.bin", 3 * MIB + 5)
    uploader = _tus(stack.url, api_user.headers, path, chunk=MIB)
    upload_id = _id_of(uploader)
    events = Events(stack.ws_url, api_user.token, upload_id)
    uploader.upload(stop_at=2 * MIB)
    gate.reached()
    uploader.upload()  # the last byte: QUEUED, while the pipeline run holds part 2 and the claim
    gate.open()

    done = upload_wait_for_status(stack.url, api_user.headers, upload_id, {"COMPLETED", "FAILED"}, timeout=90)
    assert done["status"] == "COMPLETED", done
    assert httpx.get(done["downloadUrl"], timeout=30).content == content
    worker_log = stack.workers[0].log
    assert f"upload {upload_id}: the work horse of pipeline job" in worker_log.read_text(errors="replace")
    # The redelivery runs after the job queued at the last byte, which may have completed the upload.
    redelivered = re.compile(rf"upload_transfer\('{upload_id}'\) \(transfer-{upload_id}-\d+-[0-9a-f]{{8}}\)")
    wait_until(
        lambda: redelivered.search(worker_log.read_text(errors="replace")),
        timeout=30,
        what="the transfer queued again under a fresh job id",
    )
    assert put_part_counts(log, key=done["storageKey"]) == Counter({1: 1, 2: 1, 3: 1, 4: 1}), "no part sent twice"

    seen = events.until_complete()
    moves = [status for n, status in enumerate(e["status"] for e in seen) if n == 0 or seen[n - 1]["status"] != status]
    if status == "UPLOADING":
        # The transfer the run took over, given back to the queue, and the redelivery's.
        assert moves == ["RECEIVING", "QUEUED", "UPLOADING", "QUEUED", "UPLOADING", "COMPLETED"], seen
    else:
        assert moves == ["RECEIVING", "QUEUED", "UPLOADING", "COMPLETED"], seen
