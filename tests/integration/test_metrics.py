"""/metrics against the running server: uploads by status, transfer counters and durations, queue depth,
active subscriptions across server processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

import httpx
from prometheus_client.parser import text_string_to_metric_families

from backend.uploads.models import FileUpload, UploadStatus
from tests.support.client import data_of, subscriber, upload_file
from tests.support.processes import Server, wait_until

MIB = 1024 * 1024


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_parts_failures_and_statuses(make_stack, api_user) -> None:
    stack = make_stack(faults={"fail_part": {"2": 1}})
    before = _samples(stack.url)
    upload_id = data_of(upload_file(stack.url, os.urandom(3 * MIB), headers=api_user.headers))["uploadFile"]["id"]
    wait_until(lambda: FileUpload.objects.get(id=upload_id).status == UploadStatus.COMPLETED, what="completion")
    after = _samples(stack.url)

    def grew(name: str) -> float:
        return after[(name, ())] - before.get((name, ()), 0)

    assert grew("uploads_parts_confirmed_total") == 3
    assert grew("uploads_bytes_transferred_total") == 3 * MIB
    assert grew("uploads_part_attempts_total") == 4
    assert grew("uploads_part_failures_total") == 1
    completed = after[("uploads", (("status", "COMPLETED"),))]
    assert completed == FileUpload.objects.filter(status=UploadStatus.COMPLETED).count()
    assert ("uploads_queue_depth", ()) in after


def test_metrics_transfer_durations_and_bytes_received(make_stack, api_user) -> None:
    stack = make_stack(faults={"fatal_part": 2})
    before = _samples(stack.url)
    sent = os.urandom(2 * MIB + 5)
    upload_id = data_of(upload_file(stack.url, sent, headers=api_user.headers))["uploadFile"]["id"]
    wait_until(lambda: FileUpload.objects.get(id=upload_id).status == UploadStatus.FAILED, what="the failure")
    after = _samples(stack.url)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0)

    assert grew("uploads_bytes_received_total") == len(sent)
    assert grew("uploads_transfer_duration_seconds_count", outcome="failed") == 1
    assert grew("uploads_transfer_duration_seconds_bucket", outcome="failed", le="+Inf") == 1
    assert 0 < grew("uploads_transfer_duration_seconds_sum", outcome="failed") < 30
    # Buckets are cumulative: each holds at least what the one below it holds.
    failed = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in after.items()
        if name == "uploads_transfer_duration_seconds_bucket" and dict(labels)["outcome"] == "failed"
    )
    assert [value for _, value in failed] == sorted(value for _, value in failed)
    assert grew("uploads_transfer_duration_seconds_count", outcome="completed") == 0


def test_metrics_active_subscriptions_sum_server_processes_and_forget_a_crashed_one(make_stack, api_user) -> None:
    """Two server processes on one Redis: /metrics on either counts all open subscriptions once,
    a closed one stops counting at once, and a SIGKILLed process's stop once its heartbeat expires."""
    stack = make_stack(workers=0, env={"METRICS_PROCESS_TTL_SECONDS": "3"})
    other = Server(env=stack.env, log=stack.root / "server-other.log").start()
    # No worker: the upload stays QUEUED and its subscriptions stay open.
    upload_id = data_of(upload_file(stack.url, b"still queued", headers=api_user.headers))["uploadFile"]["id"]

    def active(url: str) -> float:
        return _samples(url)[("uploads_subscriptions_active", ())]

    async def scenario() -> None:
        async with subscriber(stack.ws_url, api_user.token) as here:
            await here.subscribe(upload_id)
            assert (await here.receive())["type"] == "next"
            there_cm = subscriber(other.ws_url, api_user.token)
            there = await there_cm.__aenter__()
            first = await there.subscribe(upload_id)
            await there.subscribe(upload_id)
            assert [(await there.receive())["type"] for _ in range(2)] == ["next", "next"]
            wait_until(lambda: active(stack.url) == 3, what="3 active subscriptions")
            assert active(other.url) == 3

            await there.ws.send(json.dumps({"id": first, "type": "complete"}))
            wait_until(lambda: active(stack.url) == 2, what="2 after one completed")

            other.kill()
            assert active(stack.url) == 2  # within its TTL the silent process still counts
            wait_until(lambda: active(stack.url) == 1, timeout=15, what="the killed process forgotten")
            with contextlib.suppress(Exception):
                await there_cm.__aexit__(None, None, None)
        wait_until(lambda: active(stack.url) == 0, what="none once the last socket closed")

    try:
        asyncio.run(scenario())
    finally:
        other.stop()
