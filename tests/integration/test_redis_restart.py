"""Redis stopped for ten seconds while uploads run, then started again on the same port.

The stack (server, two workers, the cron scheduler) has a redis-server of its own. Web, workers and
the scheduler must reconnect by themselves; every upload must end COMPLETED, each part sent once;
a subscriber opened before the outage must receive the terminal state and its `complete`; an
upload sent while Redis is down is accepted and transferred once Redis is back.

With persistence (append-only file, stopped with SIGTERM) the queued jobs survive. Without it
(SIGKILL, nothing saved) they vanish, and the reaper queues their uploads again.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import websockets

from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.progress import progress_group
from tests.support.client import data_of, graphql, subscriber, upload_file
from tests.support.processes import RedisServer, wait_until
from tests.support.uploads import Gate, put_part_log

MIB = 1024 * 1024
OUTAGE_SECONDS = 10  # the scenario itself, not a synchronisation: Redis stays down this long
PARTS = 8
STALE_AFTER_SECONDS = 4
CANCEL = "mutation($id: ID!) { cancelUpload(id: $id) { id status } }"


@pytest.fixture
def own_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    server = RedisServer(directory=tmp_path / "redis", persistent=request.param).start()
    yield server
    server.stop(signal.SIGKILL)


def _rows(ids: list[str]) -> dict[str, FileUpload]:
    return {str(row.id): row for row in FileUpload.objects.filter(id__in=ids)}


def _ready(url: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{url}/readyz", timeout=30)
    return response.status_code, response.json()


def _content(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest() * (PARTS * MIB // 32)


async def _new_subscription(ws_url: str, token: str, upload_id: str) -> str:
    """Open a socket and subscribe to `upload_id`: the first message's type, or how it was refused."""
    try:
        async with subscriber(ws_url, token) as late:
            await late.subscribe(upload_id)
            return str((await asyncio.wait_for(late.receive(), timeout=8))["type"])
    except websockets.exceptions.InvalidStatus as exc:
        return f"refused {exc.response.status_code}"
    except websockets.exceptions.ConnectionClosed as exc:
        return f"closed {exc.rcvd.code if exc.rcvd else None}"


@pytest.mark.parametrize(
    ("own_redis", "server", "while_down"),
    [
        pytest.param(False, "uvicorn", "refused 503", id="uvicorn"),
        # daphne has no ASGI handshake denial, and its websocket library allows no close code but
        # 1000 and 3000-4999 (not 1013): the socket is accepted and closed normally at once.
        pytest.param(False, "daphne", "closed 1000", id="daphne"),
    ],
    indirect=["own_redis"],
)
def test_a_new_websocket_while_redis_is_down_is_refused_cleanly(
    make_stack, api_user, own_redis: RedisServer, server: str, while_down: str
) -> None:
    """Never a 500 at the handshake: a clean refusal the client retries, and a live socket after."""
    stack = make_stack(workers=0, server=server, redis_url=own_redis.url)
    upload_id = data_of(upload_file(stack.url, _content(1), headers=api_user.headers))["uploadFile"]["id"]
    own_redis.stop(signal.SIGKILL)
    assert asyncio.run(_new_subscription(stack.ws_url, api_user.token, upload_id)) == while_down
    assert "channel layer's Redis is unreachable" in stack.server.log.read_text()
    own_redis.start()
    # Redis is back (empty: no persistence): the same client gets its snapshot.
    assert asyncio.run(_new_subscription(stack.ws_url, api_user.token, upload_id)) == "next"
    # Leave nothing QUEUED in the session's database for another stack's reaper to adopt.
    cancelled = data_of(graphql(stack.url, CANCEL, {"id": upload_id}, api_user.headers))["cancelUpload"]
    assert cancelled["status"] == "CANCELLED", cancelled


@pytest.mark.parametrize("own_redis", [False], indirect=True)
def test_a_subscription_opened_while_redis_is_down_converges_and_goes_live_again(
    make_stack, api_user, own_redis: RedisServer, tmp_path: Path
) -> None:
    """On a socket opened before the outage: the snapshot from the row, re-reads, then live parts."""
    # The transfer waits at part 2 (part 1 confirmed) through the outage, and goes on only once the
    # server has joined the upload's group on the restarted Redis: parts 2..8 can only come live.
    gate = Gate(tmp_path / "gate", part=2)
    stack = make_stack(env={"UPLOAD_PART_CONCURRENCY": "1"}, redis_url=own_redis.url, faults=gate.plan)
    upload_id = data_of(upload_file(stack.url, _content(2), headers=api_user.headers))["uploadFile"]["id"]

    def group_joined() -> bool:
        with redis.Redis.from_url(own_redis.url) as connection:
            return bool(connection.pubsub_channels(f"*{progress_group(upload_id)}*"))

    async def scenario() -> list[dict[str, Any]]:
        async with subscriber(stack.ws_url, api_user.token) as session:
            await asyncio.to_thread(gate.reached)
            own_redis.stop(signal.SIGKILL)
            await session.subscribe(upload_id)
            first = await asyncio.wait_for(session.receive(), timeout=10)
            assert first["type"] == "next" and not first["payload"].get("errors"), first
            events = [first["payload"]["data"]["uploadProgress"]]
            assert events[0]["status"] == "UPLOADING" and events[0]["partNumber"] is None, events[0]
            own_redis.start()
            await asyncio.to_thread(wait_until, group_joined, timeout=30, what="the server to join the group again")
            gate.open()
            while True:
                message = await asyncio.wait_for(session.receive(), timeout=60)
                if message["type"] == "complete":
                    return events
                assert message["type"] == "next" and not message["payload"].get("errors"), message
                events.append(message["payload"]["data"]["uploadProgress"])

    events = asyncio.run(scenario())
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(set(sequences)), sequences
    assert events[-1]["status"] == "COMPLETED", events[-1]
    # A part event (not a re-read snapshot) after Redis came back: the stream joined its group again.
    assert any(e["partNumber"] is not None for e in events), events
    assert "not joined (Redis unreachable" in stack.server.log.read_text()


@pytest.mark.parametrize(
    ("own_redis", "stop_signal", "pool"),
    [
        pytest.param(True, signal.SIGTERM, False, id="persistent-workers"),
        pytest.param(False, signal.SIGKILL, True, id="no-persistence-worker-pool"),
    ],
    indirect=["own_redis"],
)
def test_uploads_and_subscribers_come_through_a_redis_restart(
    make_stack, api_user, tmp_path: Path, own_redis: RedisServer, stop_signal: int, pool: bool
) -> None:
    log = tmp_path / "parts.jsonl"
    env = {
        # Pacing, not synchronisation: the uploads started after Redis is back must send their
        # parts slower than the resync period, so that parts arriving one by one prove the server's
        # subscription joined its group again (the last assertion).
        "UPLOAD_PART_DELAY_MS": "250",
        "UPLOAD_PART_CONCURRENCY": "1",
        "UPLOAD_STALE_AFTER_SECONDS": str(STALE_AFTER_SECONDS),
        "TEST_STORAGE_LOG": str(log),
    }
    # Two test workers (which log every part they put), each held at its first part 2 until Redis
    # is down, so both transfers live through the outage; or the worker pool `make run` starts,
    # which has no fault hooks: there the outage starts once two transfers confirmed a part.
    stack = make_stack(env=env, workers=0, redis_url=own_redis.url)
    gates = [] if pool else [Gate(tmp_path / f"gate-{n}", part=2) for n in range(2)]
    for gate in gates:
        stack.add_worker(faults=gate.plan)
    if pool:
        stack.add_worker_pool(2)
    stack.start_cron()
    contents = {}
    timeline: dict[str, float] = {}

    def send(n: int) -> str:
        upload = data_of(upload_file(stack.url, _content(n), headers=api_user.headers))["uploadFile"]
        assert upload["status"] == "QUEUED", upload
        contents[upload["id"]] = _content(n)
        return upload["id"]

    async def new_subscription_while_down(upload_id: str) -> str:
        """What a websocket opened while Redis is down gets: uvicorn answers the handshake 503."""
        return await _new_subscription(stack.ws_url, api_user.token, upload_id)

    async def outage(ids: list[str]) -> tuple[str, set[str]]:
        """Stop Redis once two transfers are under way; send an upload and probe /readyz meanwhile."""
        for gate in gates:
            await asyncio.to_thread(gate.reached)
        await asyncio.to_thread(
            wait_until,
            lambda: sum(r.parts_uploaded > 0 for r in _rows(ids).values()) >= 2,
            timeout=30,
            what="two transfers under way",
        )
        own_redis.stop(stop_signal)
        timeline["down"] = time.monotonic()
        for gate in gates:
            gate.open()
        status, body = await asyncio.to_thread(_ready, stack.url)
        assert status == 503 and body["redis"] != "ok" and body["database"] == "ok", body
        metrics = await asyncio.to_thread(httpx.get, f"{stack.url}/metrics", timeout=30)
        assert metrics.status_code == 200 and "uploads{" in metrics.text, metrics.text
        late = await new_subscription_while_down(ids[0])
        print(f"a new subscription while Redis is down: {late}")
        assert late == "refused 503", late
        sent_at = time.monotonic()
        during = await asyncio.to_thread(send, 99)
        print(f"uploadFile while Redis is down answered QUEUED in {time.monotonic() - sent_at:.1f}s")
        # Redis stays down OUTAGE_SECONDS: the outage is the scenario, not a wait for an event.
        await asyncio.sleep(OUTAGE_SECONDS - (time.monotonic() - timeline["down"]))  # sync-ok
        rows = await asyncio.to_thread(_rows, ids)
        not_started = {upload_id for upload_id, row in rows.items() if row.parts_uploaded == 0}
        own_redis.start()
        timeline["up"] = time.monotonic()
        return during, not_started

    async def scenario() -> tuple[dict[str, list[dict[str, Any]]], str, set[str]]:
        async with subscriber(stack.ws_url, api_user.token) as session:
            ids = [await asyncio.to_thread(send, n) for n in range(4)]
            subs = {await session.subscribe(upload_id): upload_id for upload_id in ids}
            events: dict[str, list[dict[str, Any]]] = {upload_id: [] for upload_id in ids}
            outage_task: asyncio.Task[tuple[str, set[str]]] | None = None
            while len(subs) > sum(1 for e in events.values() if e and e[-1].get("complete")):
                if outage_task is None and all(events.values()):
                    # Each subscription sent its snapshot, so the server has set it up (its channel
                    # on the layer, its group joined): only now are they opened before the outage.
                    # On a loaded machine that can come after the transfers have started.
                    outage_task = asyncio.create_task(outage(ids))
                if outage_task is not None and outage_task.done():
                    outage_task.result()  # raises what went wrong in it
                message = await asyncio.wait_for(session.receive(), timeout=90)
                upload_id = subs[message["id"]]
                if message["type"] == "complete":
                    events[upload_id].append({"complete": True})
                    continue
                assert message["type"] == "next" and not message["payload"].get("errors"), message
                events[upload_id].append(message["payload"]["data"]["uploadProgress"])
            timeline["subscribers_done"] = time.monotonic()
            assert outage_task is not None, "every upload completed before its subscription's snapshot"
            during, not_started = await outage_task
            return {k: v[:-1] for k, v in events.items()}, during, not_started

    try:
        events, during, not_started = asyncio.run(asyncio.wait_for(scenario(), timeout=150))
        wait_until(
            lambda: _rows([during])[during].status == UploadStatus.COMPLETED,
            timeout=60,
            what="the upload sent during the outage",
        )
        timeline["all_done"] = time.monotonic()
        print(
            f"Redis back -> subscribers complete {timeline['subscribers_done'] - timeline['up']:.1f}s, "
            f"-> all uploads COMPLETED {timeline['all_done'] - timeline['up']:.1f}s"
        )
        # Lost jobs wait for the reaper: stale after STALE_AFTER_SECONDS, a round every 5 s.
        assert timeline["all_done"] - timeline["up"] < 30
    except BaseException:
        for each in [stack.server.log, *(w.log for w in stack.workers), stack.cron.log]:
            lines = [line for line in each.read_text(errors="replace").splitlines() if "unreachable" not in line]
            print(f"--- {each.name}\n" + "\n".join(lines[-40:]))
        raise

    rows = _rows(list(contents))
    for upload_id, content in contents.items():
        row = rows[upload_id]
        assert row.status == UploadStatus.COMPLETED, (row.status, row.error)
        assert row.attempts == 1, "a transfer that lived through the outage was never run twice"
        assert row.parts.count() == row.parts_uploaded == PARTS
        stored = (Path(stack.env["LOCAL_STORAGE_ROOT"]) / row.storage_key).read_bytes()
        assert hashlib.sha256(stored).digest() == hashlib.sha256(content).digest()
    if not pool:
        # One run (work horse) per upload, and each part put once, by that run: none sent again.
        # Only this test's uploads: the stack's reaper also queues what earlier tests left QUEUED
        # in the session's shared database (their jobs were in another Redis, so "lost"), and
        # these workers transfer and log those as well.
        puts = {row.storage_key: put_part_log(log, key=row.storage_key) for row in rows.values()}
        assert all(sorted(e["part"] for e in each) == list(range(1, PARTS + 1)) for each in puts.values()), puts
        pids = [{e["pid"] for e in each} for each in puts.values()]
        assert all(len(p) == 1 for p in pids) and len(set().union(*pids)) == len(contents), pids

    for upload_id, stream in events.items():
        sequences = [e["sequence"] for e in stream]
        assert sequences == sorted(set(sequences)), sequences
        assert stream[-1]["status"] == "COMPLETED", stream[-1]
        if upload_id in not_started:
            # Transferred after Redis came back: once the server's subscription to the upload's
            # group is renewed (within a second or two), each part arrives live. The resync alone
            # (every 2 s) could not report the last parts, 250 ms apart, one by one.
            reported = {e["partNumber"] for e in stream if e["partNumber"] is not None}
            assert set(range(PARTS // 2 + 1, PARTS + 1)) <= reported, stream
    status, body = _ready(stack.url)
    assert status == 200, body
    metrics = httpx.get(f"{stack.url}/metrics", timeout=30).text
    assert "uploads_parts_confirmed_total" in metrics and "uploads_queue_depth" in metrics, metrics
