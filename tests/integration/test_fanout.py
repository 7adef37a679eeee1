"""Subscriptions at scale, end to end: a real server over TCP, real websocket clients, real Redis.

The uploads' moves are driven from this process through the real services and the job's
publisher (tests/support/progress_driver.py), on a stack without workers: a test decides how many
events there are and when, and the server relays them as it would a worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

from backend.uploads.models import FileUpload
from tests.support.client import PROGRESS_SUBSCRIPTION, Subscriber, data_of, subscriber, upload_file
from tests.support.processes import RedisServer
from tests.support.progress_driver import drive_parts, publishing_to
from tests.support.stalled import stalled_subscriber

NARROW_SUBSCRIPTION = "subscription Narrow($id: ID!) { uploadProgress(id: $id) { sequence status } }"
# The fields PROGRESS_SUBSCRIPTION asks for, as its selection set lists them.
FULL_FIELDS = set(PROGRESS_SUBSCRIPTION.split("{")[2].split("}")[0].split())
PART = 100


def run(coroutine: Any, on: Any, timeout: float = 120) -> Any:
    try:
        return asyncio.run(asyncio.wait_for(coroutine, timeout=timeout))
    except BaseException:
        print("--- server log (last lines)\n" + "\n".join(on.server.log.read_text(errors="replace").splitlines()[-40:]))
        raise


def new_upload(stack: Any, headers: dict[str, str], parts: int) -> str:
    return str(data_of(upload_file(stack.url, b"x" * (parts * PART), headers=headers))["uploadFile"]["id"])


async def first_event(session: Subscriber, sub_id: str) -> dict[str, Any]:
    message = await session.receive()
    assert (message["id"], message["type"]) == (sub_id, "next"), message
    return message["payload"]["data"]["uploadProgress"]


async def drive(stack: Any, upload_ids: list[str], parts: int, **options: Any) -> dict[str, int]:
    def work() -> dict[str, int]:
        with publishing_to(stack.env["REDIS_URL"]):
            return drive_parts(upload_ids, parts=parts, part_size=PART, **options)

    return await asyncio.to_thread(work)


def assert_in_order(events: list[dict[str, Any]], final_sequence: int) -> None:
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(set(sequences)), sequences
    assert events[-1]["status"] == "COMPLETED", events[-1]
    assert events[-1]["sequence"] == final_sequence
    assert all(e["status"] != "COMPLETED" for e in events[:-1])


def test_two_selection_sets_on_one_upload_each_get_their_own_shape(make_stack, api_user) -> None:
    """Two sockets share one document, a third asks for two fields: each gets its shape, all the
    same events."""
    idle = make_stack(workers=0)
    parts = 5
    upload_id = new_upload(idle, api_user.headers, parts)

    async def scenario() -> tuple[list[list[dict]], list[dict], int]:
        async with (
            subscriber(idle.ws_url, api_user.token) as one,
            subscriber(idle.ws_url, api_user.token) as two,
            subscriber(idle.ws_url, api_user.token) as narrow,
        ):
            full_ids = [await one.subscribe(upload_id), await two.subscribe(upload_id)]
            narrow_id = await narrow.subscribe(upload_id, NARROW_SUBSCRIPTION)
            snapshots = [await first_event(one, full_ids[0]), await first_event(two, full_ids[1])]
            narrow_snapshot = await first_event(narrow, narrow_id)
            driving = asyncio.create_task(drive(idle, [upload_id], parts))
            full = [
                [snapshots[0], *await one.events_until_complete(full_ids[0])],
                [snapshots[1], *await two.events_until_complete(full_ids[1])],
            ]
            narrowed = [narrow_snapshot, *await narrow.events_until_complete(narrow_id)]
            final = (await driving)[upload_id]
            return full, narrowed, final

    full, narrowed, final = run(scenario(), idle)
    for events in full:
        assert all(set(e) == FULL_FIELDS for e in events), events[0]
        assert_in_order(events, final)
        assert [e["partNumber"] for e in events if e["partNumber"]] == list(range(1, parts + 1))
    assert full[0] == full[1]
    assert all(set(e) == {"sequence", "status"} for e in narrowed), narrowed
    assert_in_order(narrowed, final)
    assert [(e["sequence"], e["status"]) for e in narrowed] == [(e["sequence"], e["status"]) for e in full[0]]


def test_under_daphne_subscriptions_go_the_usual_way_to_the_same_end(make_stack, api_user) -> None:
    """daphne's `send` gives no access to a transport: no sink is made (the hub never writes to its
    sockets itself), and every event still goes out through the mailbox and the subscription's task,
    in order, with the completion after the terminal one, on both protocols' shapes."""
    served = make_stack(workers=0, server="daphne")
    parts = 5
    upload_id = new_upload(served, api_user.headers, parts)

    async def scenario() -> tuple[list[dict], list[dict], int]:
        async with (
            subscriber(served.ws_url, api_user.token) as one,
            subscriber(served.ws_url, api_user.token) as narrow,
        ):
            full_id, narrow_id = await one.subscribe(upload_id), await narrow.subscribe(upload_id, NARROW_SUBSCRIPTION)
            full, narrowed = [await first_event(one, full_id)], [await first_event(narrow, narrow_id)]
            driving = asyncio.create_task(drive(served, [upload_id], parts))
            await one.events_until_complete(full_id, full)
            await narrow.events_until_complete(narrow_id, narrowed)
            return full, narrowed, (await driving)[upload_id]

    full, narrowed, final = run(scenario(), served)
    assert_in_order(full, final)
    assert [e["partNumber"] for e in full if e["partNumber"]] == list(range(1, parts + 1))
    assert all(set(e) == FULL_FIELDS for e in full)
    assert [(e["sequence"], e["status"]) for e in narrowed] == [(e["sequence"], e["status"]) for e in full]


def test_sockets_take_no_channel_of_their_own_on_the_layer(make_stack, api_user, tmp_path: Path) -> None:
    """Twenty more sockets subscribed to one upload add no pub/sub channel in Redis: the process's
    hub holds one channel and one group membership for all of them (Channels' consumer would
    subscribe a channel per socket). A Redis of its own: pub/sub channels are not per database, and
    other stacks' servers would subscribe and leave meanwhile."""
    own_redis = RedisServer(directory=tmp_path / "redis", persistent=False).start()
    try:
        _no_channel_per_socket(make_stack(workers=0, redis_url=own_redis.url), api_user)
    finally:
        own_redis.stop(signal.SIGKILL)


def _no_channel_per_socket(idle: Any, api_user: Any) -> None:
    upload_id = new_upload(idle, api_user.headers, 1)
    redis_client = redis.Redis.from_url(idle.env["REDIS_URL"])

    def channels() -> set[bytes]:
        return set(redis_client.pubsub_channels("asgi*"))

    async def scenario() -> tuple[set[bytes], set[bytes]]:
        async with subscriber(idle.ws_url, api_user.token) as first:
            await first_event(first, await first.subscribe(upload_id))
            before = await asyncio.to_thread(channels)
            async with contextlib.AsyncExitStack() as sockets:
                more = [await sockets.enter_async_context(subscriber(idle.ws_url, api_user.token)) for _ in range(20)]
                for session in more:
                    await first_event(session, await session.subscribe(upload_id))
                return before, await asyncio.to_thread(channels)

    try:
        before, after = run(scenario(), idle)
    finally:
        redis_client.close()
    assert after == before, f"new channels: {sorted(after - before)}"
    assert len(before) == 2, before  # the hub's channel and the upload's group


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 30 s here; a thousand handshakes take minutes on a machine loaded 10x
def test_a_thousand_subscribers_on_one_upload_all_end_on_the_final_sequence_in_order(make_stack, api_user) -> None:
    idle = make_stack(workers=0)
    parts = 10
    upload_id = new_upload(idle, api_user.headers, parts)
    count = 1000
    gate = asyncio.Semaphore(50)  # connecting at most 50 at once, as a crowd of browsers would

    async def follow(ready: asyncio.Event, streams: list[list[dict]]) -> None:
        async with gate, subscriber(idle.ws_url, api_user.token, open_timeout=120) as session:
            sub_id = await session.subscribe(upload_id)
            events = [await first_event(session, sub_id)]
            ready.set()
            gate.release()  # connected and live: let the next one in
            try:
                streams.append(await session.events_until_complete(sub_id, events))
            finally:
                await gate.acquire()

    async def scenario() -> tuple[list[list[dict]], int]:
        streams: list[list[dict]] = []
        readiness = [asyncio.Event() for _ in range(count)]
        followers = [asyncio.create_task(follow(ready, streams)) for ready in readiness]
        await asyncio.gather(*(ready.wait() for ready in readiness))
        final = (await drive(idle, [upload_id], parts))[upload_id]
        await asyncio.gather(*followers)
        return streams, final

    streams, final = run(scenario(), idle, timeout=540)
    assert len(streams) == count
    assert final == FileUpload.objects.get(id=upload_id).sequence
    for events in streams:
        assert_in_order(events, final)
    everyone_saw = {tuple(e["sequence"] for e in events if e["partNumber"]) for events in streams}
    assert len(everyone_saw) == 1, "every subscriber got every part under this load"


def test_a_stalled_reader_keeps_its_memory_bounded_while_the_others_stay_on_time(make_stack, api_user) -> None:
    """A socket with 50 subscriptions to one upload stops reading while 1,000 events go out (16 MiB
    of messages for it, four times what the kernel buffers of a socket hold here): the healthy
    subscribers get every event and finish while it is still stalled; once it reads again, each
    of its subscriptions gets the latest state (coalesced: the sequence skips, no status change
    is missing, COMPLETED last) and far fewer messages than were sent reach it."""
    idle = make_stack(workers=0)
    parts = 1000
    stalled_subscriptions = 50  # the most one socket may hold (backend/asgi.py)
    upload_id = new_upload(idle, api_user.headers, parts)

    async def scenario() -> tuple[list[list[dict]], list[list[dict]], int]:
        connection, stalled = await stalled_subscriber(idle.ws_url, api_user.token)
        try:
            async with (
                subscriber(idle.ws_url, api_user.token) as one,
                subscriber(idle.ws_url, api_user.token) as two,
            ):
                stalled_ids = [await stalled.subscribe(upload_id) for _ in range(stalled_subscriptions)]
                late: dict[str, list[dict]] = {sub_id: [] for sub_id in stalled_ids}
                while not all(late.values()):  # every snapshot, so all of them are live
                    message = await stalled.receive()
                    assert message["type"] == "next", message
                    late[message["id"]].append(message["payload"]["data"]["uploadProgress"])
                healthy_ids = [await one.subscribe(upload_id), await two.subscribe(upload_id)]
                healthy = [[await first_event(one, healthy_ids[0])], [await first_event(two, healthy_ids[1])]]
                # From here on the stalled client reads nothing until the healthy ones are done.
                driving = asyncio.create_task(drive(idle, [upload_id], parts))
                await one.events_until_complete(healthy_ids[0], healthy[0])
                await two.events_until_complete(healthy_ids[1], healthy[1])
                final = (await driving)[upload_id]
                open_ids = set(stalled_ids)
                while open_ids:
                    message = await stalled.receive()
                    if message["type"] == "complete":
                        open_ids.remove(message["id"])
                        continue
                    assert message["type"] == "next", message
                    late[message["id"]].append(message["payload"]["data"]["uploadProgress"])
                return healthy, list(late.values()), final
        finally:
            connection.close()

    healthy, late, final = run(scenario(), idle)
    for events in healthy:
        assert_in_order(events, final)
        assert [e["partNumber"] for e in events if e["partNumber"]] == list(range(1, parts + 1))
    for events in late:
        assert_in_order(events, final)
        statuses = [e["status"] for e in events]
        assert statuses[0] == "QUEUED" and "UPLOADING" in statuses, statuses
    # What was held for the stalled socket is bounded (a mailbox per subscription, the socket's
    # buffers), not the 50,100 messages sent: its subscriptions got the latest state.
    received, sent = sum(len(events) for events in late), stalled_subscriptions * (parts + 3)
    assert received < sent / 2, f"{received} of {sent} messages reached the stalled reader: nothing was coalesced"


def test_a_reader_that_stops_answering_pings_is_closed_quietly(make_stack, api_user) -> None:
    """A client that stops reading (so it answers no ping either) while events back up for it: the
    server's keepalive gives up on it and closes the socket under its subscriptions, which end
    without a traceback in the server's log; a healthy subscriber beside it gets every event.

    The pings come every second with a second to answer (uvicorn's UVICORN_WS_PING_* settings), and
    the driver paces 600 parts over four seconds, so most of them go out after the keepalive closed
    the stalled socket (with its kernel buffers full, uvicorn cannot finish closing it, and every
    later send to it is refused)."""
    idle = make_stack(env={"UVICORN_WS_PING_INTERVAL": "1", "UVICORN_WS_PING_TIMEOUT": "1"}, workers=0)
    parts = 600
    stalled_subscriptions = 50
    upload_id = new_upload(idle, api_user.headers, parts)

    async def scenario() -> tuple[list[dict], int, str]:
        connection, stalled = await stalled_subscriber(idle.ws_url, api_user.token)
        try:
            async with subscriber(idle.ws_url, api_user.token) as healthy:
                stalled_ids = [await stalled.subscribe(upload_id) for _ in range(stalled_subscriptions)]
                for _ in stalled_ids:  # every snapshot, so all of them are live
                    assert (await stalled.receive())["type"] == "next"
                healthy_id = await healthy.subscribe(upload_id)
                events = [await first_event(healthy, healthy_id)]
                # From here on the stalled client reads nothing, pings included.
                driving = asyncio.create_task(drive(idle, [upload_id], parts, per_second=150))
                events = await healthy.events_until_complete(healthy_id, events)
                final = (await driving)[upload_id]
                with pytest.raises(ConnectionError) as closed:
                    while True:  # reading again finds the server gave up on the socket
                        await stalled.receive()
                return events, final, str(closed.value)
        finally:
            connection.close()

    events, final, _ = run(scenario(), idle)
    assert_in_order(events, final)
    assert [e["partNumber"] for e in events if e["partNumber"]] == list(range(1, parts + 1))
    log = idle.server.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
