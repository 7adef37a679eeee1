"""Live progress end to end: a real server over TCP, real websocket clients, real workers and Redis.

Each test that needs to watch a transfer from its start starts a private stack whose worker waits
at a gate before part 1 (tests/support/uploads.py `Gate`) until the subscriber has its snapshot:
the subscriber is in place before the first part is confirmed, however slow the machine, with no
head start to win.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from backend.uploads.models import FileUpload
from tests.support.client import (
    PROGRESS_SUBSCRIPTION,
    UPLOAD_MUTATION,
    Subscriber,
    data_of,
    graphql,
    subscriber,
    upload_file,
)
from tests.support.processes import wait_until
from tests.support.uploads import Gate

MIB = 1024 * 1024
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
RESYNC_SECONDS = float(os.environ["PROGRESS_RESYNC_SECONDS"])
# Parts one at a time with a pause before each: events arrive about every PART_DELAY_MS. Pacing, not
# synchronisation: the one test using it measures the gaps between live events.
PART_DELAY_MS = 120
PACED = {"UPLOAD_PART_DELAY_MS": str(PART_DELAY_MS), "UPLOAD_PART_CONCURRENCY": "1"}
# Parts one at a time, the worker held at part 1 until the test's subscriber is in place.
ONE_AT_A_TIME = {"UPLOAD_PART_CONCURRENCY": "1"}
CANCEL_MUTATION = "mutation($id: ID!) { cancelUpload(id: $id) { id status } }"


def trace(message: dict[str, Any]) -> None:
    """Print a received message in brief: pytest shows it when a test fails (a hang, say)."""
    event = ((message.get("payload") or {}).get("data") or {}).get("uploadProgress") or {}
    brief = {k: event[k] for k in ("status", "sequence", "partNumber", "partsUploaded") if k in event}
    print(f"{time.monotonic():.3f} {message.get('id')} {message['type']} {brief}")


def run(coroutine: Any, on: Any, timeout: float = 60) -> Any:
    """Run a client scenario against the stack `on`; when it fails, show the stack's logs too."""
    try:
        return asyncio.run(asyncio.wait_for(coroutine, timeout=timeout))
    except BaseException:
        logs = [on.server.log, *(worker.log for worker in on.workers)]
        for log in logs:
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        raise


async def upload(url: str, content: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """uploadFile over HTTP (off this event loop, so websocket clients keep reading)."""
    response = await asyncio.to_thread(upload_file, url, content, headers=headers)
    return data_of(response)["uploadFile"]


async def next_payloads(
    session: Subscriber, sub_ids: list[str], *, gate: Gate | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every `next` payload per subscription id, each with its arrival time, until all are complete.

    With `gate`, it is opened once every subscription has its snapshot (its first payload).
    """
    received: dict[str, list[dict[str, Any]]] = {sub_id: [] for sub_id in sub_ids}
    open_ids = set(sub_ids)
    while open_ids:
        if gate is not None and all(received.values()):
            gate.open()
        message = await session.receive()
        trace(message)
        sub_id = message.get("id")
        if sub_id not in open_ids:
            continue
        if message["type"] == "complete":
            open_ids.discard(sub_id)
            continue
        assert message["type"] == "next", message
        assert not message["payload"].get("errors"), message
        event = message["payload"]["data"]["uploadProgress"]
        received[sub_id].append({**event, "_at": time.monotonic()})
    return received


def assert_consistent_stream(events: list[dict[str, Any]], upload: dict[str, Any], *, ends_with: str) -> None:
    """Sequence strictly increasing, counters never backwards, the terminal status last and alone."""
    assert events, "no event at all"
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(set(sequences)), f"sequence not strictly increasing: {sequences}"
    for before, after in itertools.pairwise(events):
        assert after["bytesUploaded"] >= before["bytesUploaded"], (before, after)
        assert after["partsUploaded"] >= before["partsUploaded"], (before, after)
    for event in events:
        assert event["uploadId"] == upload["id"]
        assert (event["bytesTotal"], event["partsTotal"]) == (upload["size"], upload["partsTotal"])
        assert event["progress"] == pytest.approx(event["bytesUploaded"] / upload["size"])
        datetime.fromisoformat(event["at"])
    assert events[-1]["status"] == ends_with, events[-1]
    assert all(e["status"] not in TERMINAL for e in events[:-1]), [e["status"] for e in events]


def assert_every_part_reported(events: list[dict[str, Any]], parts_total: int) -> None:
    """Subscribed before the first part: the snapshot has no part, then each part has its own event."""
    snapshot = events[0]
    assert snapshot["status"] in {"QUEUED", "UPLOADING"}, snapshot
    assert (snapshot["partNumber"], snapshot["partsUploaded"], snapshot["bytesUploaded"]) == (None, 0, 0), snapshot
    part_events = [e for e in events if e["partNumber"] is not None]
    assert sorted(e["partNumber"] for e in part_events) == list(range(1, parts_total + 1))
    assert [e["partsUploaded"] for e in part_events] == list(range(1, parts_total + 1))
    assert all(e["status"] == "UPLOADING" for e in part_events)
    # Nothing was coalesced under this load: one event per committed change, none lost.
    sequences = [e["sequence"] for e in events]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), sequences


# --- the stream of one transfer ---------------------------------------------------------------


def test_subscriber_between_answer_and_first_part_sees_every_event_in_order(make_stack, api_user, tmp_path) -> None:
    gate = Gate(tmp_path / "gate", part=1)
    paced = make_stack(env=ONE_AT_A_TIME, faults=gate.plan)
    content = os.urandom(5 * MIB + 4321)

    async def scenario() -> tuple[dict, list[dict]]:
        async with subscriber(paced.ws_url, api_user.token) as session:
            created = await upload(paced.url, content, api_user.headers)
            sub_id = await session.subscribe(created["id"])
            return created, (await next_payloads(session, [sub_id], gate=gate))[sub_id]

    created, events = run(scenario(), paced)
    assert created["partsTotal"] == 6
    assert_consistent_stream(events, created, ends_with="COMPLETED")
    assert_every_part_reported(events, 6)
    *_, last_part, completed = events
    assert last_part["partNumber"] is not None
    assert (last_part["partsUploaded"], last_part["status"]) == (6, "UPLOADING")
    assert completed["partNumber"] is None
    assert (completed["partsUploaded"], completed["bytesUploaded"], completed["progress"]) == (6, len(content), 1.0)
    assert completed["sequence"] == FileUpload.objects.get(id=created["id"]).sequence


def test_a_one_part_file_reports_its_part_then_completed_from_one_plain_put(make_stack, api_user, tmp_path) -> None:
    """A file of one part is stored with one plain put (no open object); its part and its
    completion are written together, and still reported as two events, in order."""
    gate = Gate(tmp_path / "gate", part=1)
    paced = make_stack(faults=gate.plan)
    content = os.urandom(1000)

    async def scenario() -> tuple[dict, list[dict]]:
        async with subscriber(paced.ws_url, api_user.token) as session:
            created = await upload(paced.url, content, api_user.headers)
            sub_id = await session.subscribe(created["id"])
            return created, (await next_payloads(session, [sub_id], gate=gate))[sub_id]

    created, events = run(scenario(), paced)
    assert created["partsTotal"] == 1
    assert_consistent_stream(events, created, ends_with="COMPLETED")
    assert_every_part_reported(events, 1)
    *_, part, completed = events
    assert (part["partNumber"], part["partsUploaded"], part["bytesUploaded"], part["status"]) == (
        1,
        1,
        len(content),
        "UPLOADING",
    )
    assert (completed["partNumber"], completed["sequence"]) == (None, part["sequence"] + 1)
    row = FileUpload.objects.get(id=created["id"])
    assert row.storage_upload_id is None, "no multipart object was opened"
    assert list(row.parts.values_list("part_number", "size")) == [(1, len(content))]
    assert completed["sequence"] == row.sequence


def test_snapshot_comes_first_with_the_current_sequence(make_stack, api_user) -> None:
    """With no worker the upload stays QUEUED: the snapshot is its state; cancelling ends the stream."""
    idle = make_stack(workers=0)
    created = data_of(upload_file(idle.url, b"queued and waiting", headers=api_user.headers))["uploadFile"]
    row = FileUpload.objects.get(id=created["id"])

    async def scenario() -> list[dict]:
        async with subscriber(idle.ws_url, api_user.token) as session:
            sub_id = await session.subscribe(created["id"])
            snapshot = await session.receive()
            assert (snapshot["id"], snapshot["type"]) == (sub_id, "next"), snapshot
            cancelled = await asyncio.to_thread(
                graphql, idle.url, CANCEL_MUTATION, {"id": created["id"]}, api_user.headers
            )
            assert data_of(cancelled)["cancelUpload"]["status"] == "CANCELLED"
            rest = await session.events_until_complete(sub_id)
            return [snapshot["payload"]["data"]["uploadProgress"], *rest]

    events = run(scenario(), idle)
    snapshot = events[0]
    assert (snapshot["status"], snapshot["sequence"], snapshot["partNumber"]) == ("QUEUED", row.sequence, None)
    assert (snapshot["bytesTotal"], snapshot["bytesUploaded"], snapshot["progress"]) == (18, 0, 0.0)
    assert [e["status"] for e in events] == ["QUEUED", "CANCELLED"]
    assert events[1]["sequence"] == FileUpload.objects.get(id=created["id"]).sequence > row.sequence


def test_subscribing_after_completion_yields_the_terminal_snapshot_then_completes(stack, api_user) -> None:
    content = os.urandom(2 * MIB + 1)
    created = data_of(upload_file(stack.url, content, headers=api_user.headers))["uploadFile"]
    wait_until(
        lambda: FileUpload.objects.get(id=created["id"]).status == "COMPLETED", timeout=30, what="the upload to finish"
    )
    row = FileUpload.objects.get(id=created["id"])

    async def scenario() -> list[dict]:
        async with subscriber(stack.ws_url, api_user.token) as session:
            return await session.events_until_complete(await session.subscribe(created["id"]))

    events = run(scenario(), stack)
    assert len(events) == 1, events
    assert events[0]["status"] == "COMPLETED"
    assert (events[0]["sequence"], events[0]["partsUploaded"], events[0]["bytesUploaded"]) == (
        row.sequence,
        3,
        len(content),
    )
    assert events[0]["progress"] == 1.0


def test_failed_upload_ends_with_its_error(make_stack, api_user, tmp_path) -> None:
    gate = Gate(tmp_path / "gate", part=1)
    faults = {"always_fail_part": 2, **gate.plan}
    failing = make_stack(env={**ONE_AT_A_TIME, "UPLOAD_PART_RETRIES": "2"}, faults=faults)
    content = os.urandom(3 * MIB)

    async def scenario() -> tuple[dict, list[dict]]:
        async with subscriber(failing.ws_url, api_user.token) as session:
            created = await upload(failing.url, content, api_user.headers)
            sub_id = await session.subscribe(created["id"])
            return created, (await next_payloads(session, [sub_id], gate=gate))[sub_id]

    created, events = run(scenario(), failing)
    assert_consistent_stream(events, created, ends_with="FAILED")
    failed = events[-1]
    assert "part 2" in failed["error"] and "2 times" in failed["error"], failed
    assert failed["error"] == FileUpload.objects.get(id=created["id"]).error
    assert failed["sequence"] == FileUpload.objects.get(id=created["id"]).sequence
    assert 2 not in [e["partNumber"] for e in events]
    assert failed["partsUploaded"] < 3


# --- several subscriptions on one socket ------------------------------------------------------


def test_two_subscriptions_to_one_upload_on_one_socket_both_receive_every_event(make_stack, api_user, tmp_path) -> None:
    gate = Gate(tmp_path / "gate", part=1)
    paced = make_stack(env=ONE_AT_A_TIME, faults=gate.plan)
    content = os.urandom(5 * MIB)

    async def scenario() -> tuple[dict, dict]:
        async with subscriber(paced.ws_url, api_user.token) as session:
            created = await upload(paced.url, content, api_user.headers)
            first = await session.subscribe(created["id"])
            second = await session.subscribe(created["id"])
            return created, await next_payloads(session, [first, second], gate=gate)

    created, received = run(scenario(), paced)
    first, second = received.values()
    for events in (first, second):
        assert_consistent_stream(events, created, ends_with="COMPLETED")
        assert_every_part_reported(events, 5)

    # The snapshots may differ (QUEUED or UPLOADING); from the first part on, the streams are the same.
    def from_first_part(events: list[dict]) -> list[tuple]:
        return [(e["sequence"], e["status"], e["partNumber"]) for e in events if e["partsUploaded"]]

    assert from_first_part(first) == from_first_part(second)


def test_stopping_one_subscription_leaves_its_sibling_receiving(make_stack, api_user, tmp_path) -> None:
    """The client `complete`s one of two subscriptions to the same upload; the other keeps every event."""
    # Held at part 1 until both are in place, then at part 3 until one of them is stopped.
    first_gate, third_gate = Gate(tmp_path / "gate-1", part=1), Gate(tmp_path / "gate-3", part=3)
    faults = {"hold_part": first_gate.plan["hold_part"], "hold_part_also": third_gate.plan["hold_part"]}
    paced = make_stack(env=ONE_AT_A_TIME, faults=faults)
    content = os.urandom(6 * MIB)

    async def scenario() -> tuple[dict, list[dict], list[dict], int]:
        async with subscriber(paced.ws_url, api_user.token) as session:
            created = await upload(paced.url, content, api_user.headers)
            stopped = await session.subscribe(created["id"])
            kept = await session.subscribe(created["id"])
            kept_events: list[dict] = []
            stopped_events: list[dict] = []
            # Read until the to-be-stopped subscription has seen its first part, then stop it.
            while not any(e["partNumber"] for e in stopped_events):
                if stopped_events and kept_events:
                    first_gate.open()
                message = await session.receive()
                assert message["type"] == "next", message
                event = message["payload"]["data"]["uploadProgress"]
                (stopped_events if message["id"] == stopped else kept_events).append(event)
            await session.ws.send(json.dumps({"id": stopped, "type": "complete"}))
            stopped_at = max(e["partsUploaded"] for e in stopped_events)
            third_gate.open()
            received = await next_payloads(session, [kept])
            return created, stopped_events, [*kept_events, *received[kept]], stopped_at

    created, stopped_events, kept_events, stopped_at = run(scenario(), paced)
    assert stopped_at < 3, "the worker was held at part 3 until the stop"
    assert_consistent_stream(kept_events, created, ends_with="COMPLETED")
    assert_every_part_reported(kept_events, 6)
    assert stopped_events[-1]["status"] == "UPLOADING"


def test_subscriptions_per_connection_are_bounded(make_stack, api_user) -> None:
    """backend/asgi.py allows 50 operations per socket; the next subscribe is refused, the rest live on."""
    idle = make_stack(workers=0)
    created = data_of(upload_file(idle.url, b"waiting", headers=api_user.headers))["uploadFile"]

    async def scenario() -> dict:
        async with subscriber(idle.ws_url, api_user.token) as session:
            ids = [await session.subscribe(created["id"]) for _ in range(50)]
            snapshots = set()
            while len(snapshots) < 50:
                message = await session.receive()
                assert message["type"] == "next", message
                snapshots.add(message["id"])
            assert snapshots == set(ids)
            await session.subscribe(created["id"])
            return await session.receive()

    refusal = run(scenario(), idle)
    assert (refusal["id"], refusal["type"]) == ("51", "error"), refusal
    assert refusal["payload"][0]["message"] == "Subscription limit reached"


# --- convergence when an event is lost --------------------------------------------------------


def test_lost_completed_event_is_recovered_by_the_resync(make_stack, api_user, tmp_path: Path) -> None:
    drop_log = tmp_path / "dropped.jsonl"
    gate = Gate(tmp_path / "gate", part=1)
    env = {
        **ONE_AT_A_TIME,
        "TEST_DROP_PROGRESS": json.dumps({"statuses": ["COMPLETED"]}),
        "TEST_DROP_PROGRESS_LOG": str(drop_log),
    }
    lossy = make_stack(env=env, faults=gate.plan)
    content = os.urandom(3 * MIB)

    async def scenario() -> tuple[dict, list[dict], float]:
        async with subscriber(lossy.ws_url, api_user.token) as session:
            created = await upload(lossy.url, content, api_user.headers)
            sub_id = await session.subscribe(created["id"])
            events = (await next_payloads(session, [sub_id], gate=gate))[sub_id]
            return created, events, time.time()

    created, events, done_at = run(scenario(), lossy)
    dropped = [json.loads(line) for line in drop_log.read_text().splitlines()]
    assert [(d["upload_id"], d["status"]) for d in dropped] == [(created["id"], "COMPLETED")]
    assert_consistent_stream(events, created, ends_with="COMPLETED")
    assert_every_part_reported(events[:-1], 3)
    # The COMPLETED the subscriber got came from re-reading the row, within one resync period.
    row = FileUpload.objects.get(id=created["id"])
    assert events[-1]["sequence"] == row.sequence == dropped[0]["sequence"]
    waited = events[-1]["_at"] - events[-2]["_at"]
    assert waited <= RESYNC_SECONDS + 1.0, f"COMPLETED arrived {waited:.2f}s after the last part"
    assert done_at - row.completed_at.timestamp() <= RESYNC_SECONDS + 1.0


# --- protocols and credentials ----------------------------------------------------------------


def test_legacy_graphql_ws_protocol_streams_progress(make_stack, api_user, tmp_path) -> None:
    gate = Gate(tmp_path / "gate", part=1)
    paced = make_stack(env=ONE_AT_A_TIME, faults=gate.plan)
    content = os.urandom(3 * MIB)

    async def scenario() -> tuple[dict, list[dict]]:
        async with websockets.connect(paced.ws_url, subprotocols=["graphql-ws"]) as ws:
            assert ws.subprotocol == "graphql-ws"
            await ws.send(
                json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {api_user.token}"}})
            )
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            created = await upload(paced.url, content, api_user.headers)
            start = {"query": PROGRESS_SUBSCRIPTION, "variables": {"id": created["id"]}}
            await ws.send(json.dumps({"id": "legacy-1", "type": "start", "payload": start}))
            events = []
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "ka":
                    continue
                assert message["id"] == "legacy-1", message
                if message["type"] == "complete":
                    return created, events
                assert message["type"] == "data" and not message["payload"].get("errors"), message
                events.append(message["payload"]["data"]["uploadProgress"])
                gate.open()  # the snapshot is in: the worker may start

    created, events = run(scenario(), paced)
    assert_consistent_stream(events, created, ends_with="COMPLETED")
    assert_every_part_reported(events, 3)


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
@pytest.mark.parametrize(
    "init",
    [
        {"type": "connection_init", "payload": {"authorization": "Bearer not-a-real-token-0123456789abcdef0123"}},
        {"type": "connection_init", "payload": {"authorization": "Basic dXNlcjpwYXNz"}},
        {"type": "connection_init", "payload": {}},
        {"type": "connection_init"},
    ],
    ids=["bad-token", "not-bearer", "empty-payload", "no-payload"],
)
def test_bad_or_missing_credential_closes_with_4403(stack, protocol: str, init: dict) -> None:
    async def scenario() -> tuple[list[dict], ConnectionClosed]:
        async with websockets.connect(stack.ws_url, subprotocols=[protocol]) as ws:
            assert ws.subprotocol == protocol
            await ws.send(json.dumps(init))
            received = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    received.append(json.loads(await ws.recv()))
            return received, closed.value

    received, closed = run(scenario(), stack)
    assert closed.rcvd is not None and closed.rcvd.code == 4403, closed
    # graphql-ws (legacy) announces the refusal first; neither protocol acknowledges.
    assert [m["type"] for m in received] == ([] if protocol == "graphql-transport-ws" else ["connection_error"])


def test_revoked_token_cannot_subscribe(stack, api_user) -> None:
    from backend.tokens.services import token_revoke

    assert token_revoke(token=api_user.token) == 1

    async def scenario() -> ConnectionClosed:
        async with websockets.connect(stack.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send(
                json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {api_user.token}"}})
            )
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            return closed.value

    closed = run(scenario(), stack)
    assert closed.rcvd is not None and closed.rcvd.code == 4403


@pytest.mark.parametrize(("whose", "code"), [("someone-else", "NOT_FOUND"), ("malformed", "BAD_USER_INPUT")])
def test_subscribing_to_an_upload_one_may_not_see(stack, make_user, api_user, whose: str, code: str) -> None:
    owner = make_user()
    theirs = data_of(upload_file(stack.url, b"private bytes", headers=owner.headers))["uploadFile"]["id"]
    target = theirs if whose == "someone-else" else "not-a-uuid"

    async def scenario() -> list[dict]:
        async with subscriber(stack.ws_url, api_user.token) as session:
            sub_id = await session.subscribe(target)
            messages = []
            while not messages or messages[-1]["type"] not in {"complete", "error"}:
                message = await session.receive()
                assert message["id"] == sub_id, message
                messages.append(message)
            return messages

    messages = run(scenario(), stack)
    errors = [
        e for m in messages for e in (m["payload"] if m["type"] == "error" else m.get("payload", {}).get("errors", []))
    ]
    assert [e["extensions"]["code"] for e in errors] == [code], messages
    assert "private" not in json.dumps(messages)
    assert not any(m["type"] == "next" and (m["payload"].get("data") or {}).get("uploadProgress") for m in messages)


# --- the event loop stays free while a large upload arrives -----------------------------------


@pytest.mark.slow
def test_progress_keeps_flowing_while_512_mib_arrive_on_the_same_server(make_stack, api_user, tmp_path: Path) -> None:
    """Parsing, staging and hashing a large body must not stall the websockets of that process.

    A small upload with 64 KiB parts emits an event every ~PART_DELAY_MS for many seconds; a 512 MiB
    upload is sent to the same server meanwhile. The largest pause between the small upload's
    events during the big upload must stay near the event period.
    """
    paced = make_stack(env={**PACED, "UPLOAD_PART_SIZE": str(64 * 1024)})
    big = tmp_path / "big.bin"
    block = os.urandom(MIB)
    with big.open("wb") as out:
        for _ in range(512):
            out.write(block)
    small = os.urandom(16 * MIB)

    def send_big() -> tuple[float, float, httpx.Response]:
        operations = {"query": UPLOAD_MUTATION, "variables": {"file": None, "sha256": None}}
        with big.open("rb") as handle:
            files = {
                "operations": (None, json.dumps(operations), "application/json"),
                "map": (None, json.dumps({"0": ["variables.file"]}), "application/json"),
                "0": ("big.bin", handle, "application/octet-stream"),
            }
            started = time.monotonic()
            response = httpx.post(f"{paced.url}/graphql", files=files, headers=api_user.headers, timeout=300)
            return started, time.monotonic(), response

    async def scenario() -> tuple[list[dict], tuple[float, float, httpx.Response]]:
        async with subscriber(paced.ws_url, api_user.token) as session:
            created = await upload(paced.url, small, api_user.headers)
            sub_id = await session.subscribe(created["id"])
            events: list[dict] = []

            async def collect() -> None:
                while True:
                    message = await session.receive()
                    if message.get("id") != sub_id:
                        continue
                    if message["type"] == "complete":
                        return
                    assert message["type"] == "next" and not message["payload"].get("errors"), message
                    events.append({**message["payload"]["data"]["uploadProgress"], "_at": time.monotonic()})

            collector = asyncio.create_task(collect())
            while sum(1 for e in events if e["partNumber"]) < 5:  # the steady state before the big upload
                await asyncio.wait([collector], timeout=0.05)
                assert not collector.done(), events
            sent = await asyncio.to_thread(send_big)
            assert not collector.done(), "the small upload ended before the big one arrived"
            for upload_id in (data_of(sent[2])["uploadFile"]["id"], created["id"]):
                answer = await asyncio.to_thread(
                    graphql, paced.url, CANCEL_MUTATION, {"id": upload_id}, api_user.headers
                )
                assert data_of(answer)["cancelUpload"]["status"] == "CANCELLED"
            await collector
            return events, sent

    try:
        events, (started, finished, response) = run(scenario(), paced, timeout=280)
    finally:
        big.unlink()
    assert data_of(response)["uploadFile"]["size"] == 512 * MIB
    assert events[-1]["status"] == "CANCELLED"
    before = [e["_at"] for e in events if e["_at"] < started]
    during = [e["_at"] for e in events if started <= e["_at"] <= finished]
    after = [e["_at"] for e in events if e["_at"] > finished]
    assert before and after, "the small upload's events must bracket the big upload"
    window = [before[-1], *during, after[0]]
    gaps = [b - a for a, b in itertools.pairwise(window)]
    period = sorted(b - a for a, b in itertools.pairwise(before))[len(before) // 2 - 1]
    bound = 5 * PART_DELAY_MS / 1000
    assert len(during) >= (finished - started) / bound, (len(during), finished - started)
    assert max(gaps) < bound, (
        f"largest gap {max(gaps):.3f}s during a {finished - started:.1f}s upload ({len(during)} events); "
        f"bound {bound:.3f}s; median period before it {period:.3f}s"
    )
