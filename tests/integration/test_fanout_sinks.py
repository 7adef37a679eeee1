"""Events written by the progress hub straight to the sockets (the sinks), end to end in one loop.

A real uvicorn server (its default websockets-sansio protocol) serves the real application in the
test's own event loop, to real websocket clients over TCP; the channel layer is Channels' in-memory
one (the deployment's channels_redis layer where its own tasks matter). The test hands events to
the server's hub itself (`ProgressHub.deliver`, what its reader does with each event from the
layer), so it decides exactly when each event goes out relative to what
the clients do, and it waits on the server's real state (a subscription parked with its sink, an
operation gone, a transport's buffer), never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import socket
import struct
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import uvicorn
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.test import override_settings
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

from backend.tokens.services import token_revoke
from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.progress import ProgressHub, progress_hub
from backend.uploads.progress_mailbox import MAILBOX_LIMIT
from schema import consumers
from schema.consumers import UploadGraphQLWSConsumer, credential_watch
from tests.support.client import PROGRESS_SUBSCRIPTION, Subscriber
from tests.support.stalled import StalledSocket

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
NARROW = "subscription Narrow($id: ID!) { uploadProgress(id: $id) { sequence status } }"
FIRST = 5  # the row's sequence: its snapshot's


@pytest.fixture
def row(make_user: Any) -> Iterator[tuple[FileUpload, str]]:
    with override_settings(CHANNEL_LAYERS=IN_MEMORY):
        yield from _row(make_user)


@pytest.fixture
def row_on_redis(make_user: Any) -> Iterator[tuple[FileUpload, str]]:
    """The row, with the channel layer the deployment configures (settings: channels_redis's
    pub/sub layer on the tests' Redis), for what depends on the layer's own tasks."""
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    yield from _row(make_user)


def _row(make_user: Any) -> Iterator[tuple[FileUpload, str]]:
    from tests.conftest import _database_of_its_own

    with _database_of_its_own():
        user = make_user()
        upload_id = uuid.uuid4()
        upload = FileUpload.objects.create(
            id=upload_id,
            owner=user.user,
            filename="sinks.bin",
            content_type="application/octet-stream",
            size=100 * 1024,
            sha256=hashlib.sha256(b"x").hexdigest(),
            status=UploadStatus.UPLOADING,
            part_size=1024,
            parts_total=100,
            storage_backend="local",
            storage_key=f"uploads/sinks/{upload_id}",
            sequence=FIRST,
        )
        yield upload, user.token


def event(upload: FileUpload, sequence: int, status: str = "UPLOADING") -> dict[str, Any]:
    part = sequence - FIRST if status == "UPLOADING" else None
    return {
        "upload_id": str(upload.id),
        "sequence": sequence,
        "status": status,
        "part_number": part,
        "parts_uploaded": sequence - FIRST,
        "parts_total": 100,
        "bytes_received": 100 * 1024,
        "bytes_uploaded": (sequence - FIRST) * 1024,
        "bytes_total": 100 * 1024,
        "progress": (sequence - FIRST) / 100,
        "error": None,
        "at": "2026-01-01T00:00:00+00:00",
    }


def _close_connection() -> None:
    connections["default"].close()  # this thread's own connection (the ORM's worker thread)


def run(scenario: Any) -> Any:
    async def wrapped() -> Any:
        await sync_to_async(_close_connection)()
        try:
            return await asyncio.wait_for(scenario, timeout=60)
        finally:
            await sync_to_async(_close_connection)()

    return asyncio.run(wrapped())


@contextlib.asynccontextmanager
async def served() -> AsyncIterator[str]:
    """uvicorn serving the application in this loop, as the server command runs it; its ws URL."""
    from backend.asgi import application

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    # log_config=None: the test process's logging stays as Django configured it (and caplog sees it).
    config = uvicorn.Config(
        application, lifespan="off", log_config=None, ws_per_message_deflate=False, ws_ping_interval=None
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    await until(lambda: server.started or serving.done())
    try:
        yield f"ws://127.0.0.1:{port}/graphql"
    finally:
        server.should_exit = True
        await serving


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run (the server, the clients) until `condition` holds on their real state."""
    while not condition():
        await asyncio.sleep(0)  # sync-ok: one turn of the loop, then look at the state again


@contextlib.asynccontextmanager
async def client(ws_url: str, token: str, protocol: str = "graphql-transport-ws") -> AsyncIterator[Any]:
    async with websockets.connect(ws_url, subprotocols=[protocol]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        yield ws


async def subscribe(ws: Any, upload: FileUpload, op_id: str, query: str = PROGRESS_SUBSCRIPTION) -> None:
    kind = "subscribe" if ws.subprotocol == "graphql-transport-ws" else "start"
    payload = {"query": query, "variables": {"id": str(upload.id)}}
    await ws.send(json.dumps({"id": op_id, "type": kind, "payload": payload}))


async def texts_until(ws: Any, last: Callable[[dict[str, Any]], bool]) -> list[str]:
    """The raw text messages `ws` receives, up to and including the first for which `last` holds."""
    texts = []
    while True:
        texts.append(await ws.recv())
        if last(json.loads(texts[-1])):
            return texts


def parked(hub: ProgressHub, upload: FileUpload, count: int) -> Callable[[], bool]:
    """`count` subscriptions to the upload, each past its snapshot with its sink, waiting with nothing pending."""

    def check() -> bool:
        feed = hub.feeds.get(str(upload.id))
        if feed is None or len(feed.mailboxes) != count:
            return False
        return all(
            sink is not None and mailbox._waiter is not None and not len(mailbox)
            for mailbox, sink in feed.mailboxes.items()
        )

    return check


def completes(op_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message.get("id") == op_id and message["type"] == "complete"


def test_the_hub_writes_each_selection_set_its_own_shape_on_both_protocols(row: Any) -> None:
    """Two sockets with one document, one with another selection set, one on legacy graphql-ws: past
    the snapshot every live event is written by the hub (none wakes a subscription), each in its
    subscriber's shape and protocol, the same bytes for the same document; the terminal event and
    the completion come after, in order, once."""
    upload, token = row
    live = range(FIRST + 1, FIRST + 21)

    async def scenario() -> tuple[list[list[str]], int]:
        hub = progress_hub()
        async with (
            served() as ws_url,
            client(ws_url, token) as one,
            client(ws_url, token) as two,
            client(ws_url, token) as narrow,
            client(ws_url, token, "graphql-ws") as legacy,
        ):
            await subscribe(one, upload, "1")
            await subscribe(two, upload, "1")
            await subscribe(narrow, upload, "1", NARROW)
            await subscribe(legacy, upload, "1")
            snapshots = [await ws.recv() for ws in (one, two, narrow, legacy)]
            await until(parked(hub, upload, 4))
            feed = hub.feeds[str(upload.id)]
            for sequence in live:
                hub.deliver(feed, event(upload, sequence))
            sunk = hub.sunk
            hub.deliver(feed, event(upload, live[-1] + 1, "COMPLETED"))
            received = [
                [snapshot, *await texts_until(ws, completes("1"))]
                for snapshot, ws in zip(snapshots, (one, two, narrow, legacy), strict=True)
            ]
            return received, sunk

    (one, two, narrow, legacy), sunk = run(scenario())
    assert sunk == 4 * len(live), "every live event went past the subscriptions' tasks"
    assert one == two  # one document: the very same bytes
    expected = [FIRST, *live, live[-1] + 1]
    for texts, kind in ((one, "next"), (narrow, "next"), (legacy, "data")):
        messages = [json.loads(text) for text in texts]
        assert [m["type"] for m in messages] == [kind] * len(expected) + ["complete"]
        events = [m["payload"]["data"]["uploadProgress"] for m in messages[:-1]]
        assert [e["sequence"] for e in events] == expected
        assert [e["status"] for e in events] == ["UPLOADING"] * (len(expected) - 1) + ["COMPLETED"]
    assert all(set(json.loads(t)["payload"]["data"]["uploadProgress"]) == {"sequence", "status"} for t in narrow[:-1])
    full = json.loads(one[3])["payload"]["data"]["uploadProgress"]
    assert (full["partNumber"], full["bytesUploaded"], full["uploadId"]) == (3, 3 * 1024, str(upload.id))
    # Legacy graphql-ws: strawberry's `data` message around the same payload.
    for ours, theirs in zip(one[1:-1], legacy[1:-1], strict=True):
        payload = ours[len('{"id":"1","type":"next","payload":') : -1]
        assert theirs == '{"type":"data","id":"1","payload":' + payload + "}"


@pytest.mark.parametrize(
    ("protocol", "strawberry_handler", "stop", "kind"),
    [
        ("graphql-transport-ws", BaseGraphQLTransportWSHandler, "complete", "next"),
        ("graphql-ws", BaseGraphQLWSHandler, "stop", "data"),
    ],
)
def test_a_complete_or_stop_from_the_client_stops_the_hub_writing_to_that_subscription(
    row: Any, monkeypatch: pytest.MonkeyPatch, protocol: str, strawberry_handler: type, stop: str, kind: str
) -> None:
    """Two subscriptions on one socket; the client completes (legacy: stops) one mid-stream. At the
    worst moment, once the server has taken the client's message but before strawberry's cleanup
    has cancelled the operation's task (still parked in its mailbox, with a sink), the hub writes
    more events: not one of them goes to the completed subscription, the other gets every event to
    the end. (strawberry's cleanup does not suspend before its cancel today; the sink's stop,
    which this test fails without, does not rely on that.)"""
    upload, token = row
    strawberry_cleanup = strawberry_handler.cleanup_operation
    cleaned: list[str] = []

    async def deliver_then_clean_up(self: Any, operation_id: str) -> None:
        if operation_id == "a" and not cleaned:  # not the socket's own end (it cleans up every operation)
            hub = progress_hub()
            feed = hub.feeds[str(upload.id)]
            for sequence in range(FIRST + 6, FIRST + 11):
                hub.deliver(feed, event(upload, sequence))
        cleaned.append(operation_id)
        await strawberry_cleanup(self, operation_id)

    monkeypatch.setattr(strawberry_handler, "cleanup_operation", deliver_then_clean_up)

    async def scenario() -> list[dict]:
        hub = progress_hub()
        async with served() as ws_url, client(ws_url, token, protocol) as ws:
            await subscribe(ws, upload, "a")
            await subscribe(ws, upload, "b")
            received = [json.loads(await ws.recv()), json.loads(await ws.recv())]
            await until(parked(hub, upload, 2))
            feed = hub.feeds[str(upload.id)]
            for sequence in range(FIRST + 1, FIRST + 6):
                hub.deliver(feed, event(upload, sequence))
            await ws.send(json.dumps({"id": "a", "type": stop}))
            await until(lambda: "a" in cleaned and len(feed.mailboxes) == 1)
            hub.deliver(feed, event(upload, FIRST + 11, "COMPLETED"))
            received += [json.loads(text) for text in await texts_until(ws, completes("b"))]
            await until(lambda: str(upload.id) not in hub.feeds)
            return received

    received = run(scenario())
    of_a = [
        m["payload"]["data"]["uploadProgress"]["sequence"] for m in received if m.get("id") == "a" and m["type"] == kind
    ]
    assert of_a == list(range(FIRST, FIRST + 6)), "only what was written before the client's complete"
    of_b = [
        m["payload"]["data"]["uploadProgress"]["sequence"] for m in received if m.get("id") == "b" and m["type"] == kind
    ]
    assert of_b == list(range(FIRST, FIRST + 12))
    assert received[-1] == {"id": "b", "type": "complete"}


def test_nothing_is_written_once_the_server_has_decided_to_close_the_socket(
    row: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket's token is revoked: the credential watch decides to close it with 4403 and starts
    that close on a task of its own. The hub delivers an event before that task has run (the turn
    between the two; longer while a paused socket's close waits to be writable): the event is not
    written, the client gets its snapshot and the 4403 close, nothing in between."""
    upload, token = row
    refuse = consumers._refuse_quietly
    sunk_in_window: list[int] = []

    async def deliver_then_refuse(consumer: UploadGraphQLWSConsumer) -> None:
        hub = progress_hub()
        before = hub.sunk
        hub.deliver(hub.feeds[str(upload.id)], event(upload, FIRST + 1))
        sunk_in_window.append(hub.sunk - before)
        await refuse(consumer)

    monkeypatch.setattr(consumers, "_refuse_quietly", deliver_then_refuse)

    async def scenario() -> tuple[list[dict], int | None]:
        hub = progress_hub()
        async with served() as ws_url, client(ws_url, token) as ws:
            await subscribe(ws, upload, "1")
            received = [json.loads(await ws.recv())]
            await until(parked(hub, upload, 1))
            await sync_to_async(token_revoke)(token=token)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    received.append(json.loads(await ws.recv()))
            return received, closed.value.rcvd.code if closed.value.rcvd else None

    with override_settings(WS_AUTH_RECHECK_SECONDS=0.05):
        received, code = run(scenario())
    assert code == 4403
    assert sunk_in_window == [0], "the hub wrote to a socket the server had decided to close"
    assert [m["payload"]["data"]["uploadProgress"]["sequence"] for m in received] == [FIRST]


def _server_side(port: int) -> UploadGraphQLWSConsumer:
    (found,) = [c for c in credential_watch().sockets if c.scope["client"][1] == port]
    return found


def test_a_stalled_reader_is_bounded_while_the_hub_keeps_writing_to_the_others(row: Any) -> None:
    """A socket that stops reading, beside one that reads: 3,000 events. The reader gets every one,
    all written by the hub; the stalled socket's transport holds at most uvicorn's high-water mark
    plus a message, its mailbox at most MAILBOX_LIMIT events, the rest coalesced; once it reads
    again it gets the latest state, COMPLETED last, with the sequence skipping."""
    upload, token = row
    count = 3000

    async def scenario() -> tuple[list[int], list[int], int, int, int]:
        hub = progress_hub()
        async with served() as ws_url, client(ws_url, token) as reader:
            stalled_socket = await StalledSocket.connect(ws_url)
            try:
                stalled = Subscriber(stalled_socket)
                await stalled_socket.send(
                    json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
                )
                assert json.loads(await stalled_socket.recv())["type"] == "connection_ack"
                await subscribe(reader, upload, "1")
                stalled_id = await stalled.subscribe(str(upload.id))
                seen = [json.loads(await reader.recv())["payload"]["data"]["uploadProgress"]["sequence"]]
                assert (await stalled.receive())["type"] == "next"
                await until(parked(hub, upload, 2))
                feed = hub.feeds[str(upload.id)]
                server = _server_side(stalled_socket.sock.getsockname()[1]).direct_server
                # The kernel's side as small as the client's receive buffer: it backs up after a few
                # messages, not after the megabytes loopback's autotuning would take.
                server.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                (stalled_box,) = [m for m in feed.mailboxes if m is not _reader_box(feed, server)]
                reading = asyncio.create_task(_sequences_until_complete(reader, seen))
                most_buffered = most_pending = 0
                for sequence in range(FIRST + 1, FIRST + count + 1):
                    hub.deliver(feed, event(upload, sequence))
                    most_buffered = max(most_buffered, server.transport.get_write_buffer_size())
                    most_pending = max(most_pending, len(stalled_box))
                    await asyncio.sleep(0)  # sync-ok: one turn of the loop per event, as the hub's reader takes
                hub.deliver(feed, event(upload, FIRST + count + 1, "COMPLETED"))
                await reading
                sunk = hub.sunk
                late = [await stalled.receive()]
                while late[-1]["type"] != "complete":
                    late.append(await stalled.receive())
                assert all(m["id"] == stalled_id for m in late)
                late_sequences = [m["payload"]["data"]["uploadProgress"]["sequence"] for m in late[:-1]]
                return seen, late_sequences, sunk, most_buffered, most_pending
            finally:
                stalled_socket.close()

    seen, late, sunk, most_buffered, most_pending = run(scenario())
    assert seen == list(range(FIRST, FIRST + count + 2)), "the reader got every event in order"
    assert sunk >= count, "the hub wrote the reader's events itself"
    assert most_buffered <= 64 * 1024 + 1024, most_buffered
    assert most_pending <= MAILBOX_LIMIT
    assert late == sorted(set(late)) and late[-1] == FIRST + count + 1
    assert len(late) < count / 4, f"{len(late)} of {count} events reached the stalled reader: nothing coalesced"


def _reader_box(feed: Any, stalled_server: Any) -> Any:
    """The mailbox whose sink writes to another socket than the stalled one."""
    (box,) = [m for m, sink in feed.mailboxes.items() if sink.socket.direct_server is not stalled_server]
    return box


async def _sequences_until_complete(ws: Any, seen: list[int]) -> None:
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "complete":
            return
        seen.append(message["payload"]["data"]["uploadProgress"]["sequence"])


class Recorded(logging.Handler):
    """Every record of WARNING and above, or with a traceback, logged anywhere in the process."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or record.exc_info:
            self.problems.append(f"{record.name}: {record.getMessage()}")


def test_a_socket_closing_mid_fan_out_is_let_go_quietly(row: Any) -> None:
    """One of three sockets resets its connection while events go out: the write the hub made into
    the reset socket fails inside the transport, the next events go to its mailbox and its
    subscription ends quietly (no traceback), the other two get every event and their completion,
    and the upload leaves the hub."""
    upload, token = row

    async def scenario() -> tuple[list[list[dict]], int]:
        hub = progress_hub()
        async with served() as ws_url, client(ws_url, token) as one, client(ws_url, token) as two:
            going = await StalledSocket.connect(ws_url)
            await going.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
            assert json.loads(await going.recv())["type"] == "connection_ack"
            for ws in (one, two):
                await subscribe(ws, upload, "1")
            await Subscriber(going).subscribe(str(upload.id))
            assert json.loads(await going.recv())["type"] == "next"
            snapshots = [[json.loads(await one.recv())], [json.loads(await two.recv())]]
            await until(parked(hub, upload, 3))
            feed = hub.feeds[str(upload.id)]
            hub.deliver(feed, event(upload, FIRST + 1))
            # A reset, not a close: the server finds out only when it writes.
            going.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            going.close()
            for sequence in range(FIRST + 2, FIRST + 12):
                hub.deliver(feed, event(upload, sequence))
            hub.deliver(feed, event(upload, FIRST + 12, "COMPLETED"))
            for events, ws in zip(snapshots, (one, two), strict=True):
                events += [json.loads(text) for text in await texts_until(ws, completes("1"))]
            # All three subscriptions ended, and the reset socket's consumer is gone (its disconnect ran).
            await until(lambda: str(upload.id) not in hub.feeds and len(credential_watch().sockets) <= 2)
            return snapshots, len(credential_watch().sockets)

    recorded = Recorded()
    logging.getLogger().addHandler(recorded)
    try:
        (one, two), sockets_left = run(scenario())
    finally:
        logging.getLogger().removeHandler(recorded)
    for messages in (one, two):
        assert [m["type"] for m in messages] == ["next"] * 13 + ["complete"]
        sequences = [m["payload"]["data"]["uploadProgress"]["sequence"] for m in messages[:-1]]
        assert sequences == list(range(FIRST, FIRST + 13))
    assert sockets_left <= 2
    assert recorded.problems == []


def test_no_task_of_the_process_keeps_a_finished_subscription_s_socket_alive(row_on_redis: Any) -> None:
    """The first subscriber starts the hub's reader, its re-read and the subscription gauge's task,
    which live on after it, and its join makes the layer start its own (channels_redis's receiver,
    on the deployment's layer): all start with empty contexts, so none keeps that subscriber's sink
    (and with it its consumer and socket) alive once the socket has closed."""
    upload, token = row_on_redis

    async def scenario() -> tuple[bool, bool]:
        hub = progress_hub()
        async with served() as ws_url, client(ws_url, token) as staying:
            async with client(ws_url, token) as first:
                await subscribe(first, upload, "1")
                await first.recv()
                consumer = _server_side(first.local_address[1])
                gone = weakref.ref(consumer)
                del consumer
                await subscribe(staying, upload, "1")
                await staying.recv()
                await until(parked(hub, upload, 2))
            await until(lambda: len(hub.feeds[str(upload.id)].mailboxes) == 1)
            await until(lambda: len(_sockets_served()) == 1)  # the first socket's ASGI task has ended
            gc.collect()
            return gone() is None, hub.reader is not None and not hub.reader.done()

    freed, reader_alive = run(scenario())
    assert reader_alive
    assert freed, "something still holds the first subscriber's consumer"


def _sockets_served() -> list[asyncio.Task[Any]]:
    """uvicorn's tasks running the application for a websocket (one per open socket)."""
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "WebSocketsSansIOProtocol.run_asgi"]  # type: ignore[union-attr]
