"""Progress publishing: the one place that turns upload state into events on the channel layer.

Events carry absolute state (bytes, parts, status, sequence), never deltas, so a subscriber that
misses one loses nothing: the next one, or its periodic re-read of the row, tells it everything.
A transfer job publishes through one `ProgressPublisher` for its whole life: one Redis connection,
each event PUBLISHed by the thread that committed it, in commit order.
A server process follows them through one `ProgressHub` (below): one group membership per upload
however many subscribers it has there, each subscriber fed from its own bounded mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from contextvars import Context, ContextVar
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils.module_loading import import_string
from redis.exceptions import RedisError

from backend.event_loops import per_event_loop
from backend.redis_errors import REDIS_UNREACHABLE
from backend.uploads.metrics import subscription_gauge
from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.parts import progress_fraction
from backend.uploads.progress_mailbox import ProgressMailbox
from backend.uploads.progress_wire import GroupWire

logger = logging.getLogger(__name__)

T = TypeVar("T")

MESSAGE_TYPE = "upload.progress"


def progress_group(upload_id: uuid.UUID | str) -> str:
    return f"upload.{uuid.UUID(str(upload_id)).hex}"


# The columns `progress_event` reads: a row read back only to publish it needs no others
# (Django compiles and converts every column of a full row, about twice the cost of these).
PROGRESS_EVENT_FIELDS = (
    "id",
    "sequence",
    "status",
    "parts_uploaded",
    "parts_total",
    "bytes_received",
    "bytes_uploaded",
    "size",
    "length_deferred",
    "error",
    "updated_at",
)


def progress_event(upload: FileUpload, *, part_number: int | None = None) -> dict[str, Any]:
    """The absolute state of `upload` as one event (JSON-serialisable)."""
    return {
        "upload_id": str(upload.id),
        "sequence": upload.sequence,
        "status": upload.status,
        "part_number": part_number,
        "parts_uploaded": upload.parts_uploaded,
        "parts_total": upload.parts_total,
        "bytes_received": upload.bytes_received,
        "bytes_uploaded": upload.bytes_uploaded,
        "bytes_total": upload.known_size,
        "progress": progress_fraction(
            bytes_uploaded=upload.bytes_uploaded,
            size=upload.known_size,
            completed=upload.status == UploadStatus.COMPLETED,
        ),
        "error": upload.error,
        "at": upload.updated_at.isoformat(),
    }


class ProgressPublisher:
    """Sends events from synchronous code, each from the calling thread, in the order they are handed over.

    On the pub/sub layer each event is one PUBLISH through a `GroupWire` kept for the publisher's
    life (no thread, no event loop: the hand-off to one cost a millisecond or more per event). The
    lock keeps events of several threads in the order of their `publish` calls. Lossy by design: a
    Redis that cannot take an event is logged and skipped, and for COOLDOWN_SECONDS after that
    events are dropped without trying, so an unreachable Redis never slows a transfer down;
    subscribers re-read the row every PROGRESS_RESYNC_SECONDS.
    """

    COOLDOWN_SECONDS = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layer: Any = None
        self._wire: GroupWire | None = None
        self._quiet_until = 0.0

    def start(self) -> ProgressPublisher:
        self._layer = get_channel_layer()
        self._wire = GroupWire.for_layer(self._layer)
        return self

    def publish(self, event: dict[str, Any]) -> None:
        group, message = progress_group(event["upload_id"]), {"type": MESSAGE_TYPE, "event": event}
        with self._lock:
            if time.monotonic() < self._quiet_until:
                return
            try:
                if self._wire is not None:
                    self._wire.send(group, message)
                else:  # another kind of layer (in tests): its own group_send, a loop per event
                    async_to_sync(self._layer.group_send)(group, message)
            except Exception as exc:
                if isinstance(exc, REDIS_UNREACHABLE):
                    self._quiet_until = time.monotonic() + self.COOLDOWN_SECONDS
                logger.warning(
                    "progress publish failed for upload %s: %s",
                    event["upload_id"],
                    exc,
                    exc_info=not isinstance(exc, REDIS_UNREACHABLE),
                    extra={"upload_id": event["upload_id"]},
                )

    def close(self, timeout: float = 5.0) -> None:
        """Release the connection; every event was sent when its `publish` returned."""
        with self._lock:
            if self._wire is not None:
                self._wire.close()
                self._wire = None


_publisher: ProgressPublisher | None = None


def progress_publisher_start() -> ProgressPublisher:
    """A new started publisher of the class PROGRESS_PUBLISHER names (a test double drops events by
    plan: tests/support/doubles.py); its owner closes it."""
    publisher_class: type[ProgressPublisher] = import_string(settings.PROGRESS_PUBLISHER)
    return publisher_class().start()


@contextmanager
def progress_publisher(kept: ProgressPublisher | None = None) -> Iterator[ProgressPublisher]:
    """Route this process's progress events through one publisher while the block runs (a job).

    A new one, closed at the end; or `kept`, one its owner keeps open beyond the block (a worker
    running small jobs in its own process keeps one for its life). Inside another such block the
    outer block's publisher serves: a job run by that worker connects to Redis for none of them.
    """
    global _publisher
    if _publisher is not None:
        yield _publisher
        return
    publisher = kept or progress_publisher_start()
    _publisher = publisher
    try:
        yield publisher
    finally:
        _publisher = None
        if kept is None:
            publisher.close()


def progress_publish(upload: FileUpload, *, part_number: int | None = None) -> None:
    """Publish the state of `upload`. Call it after the state is committed."""
    (_publisher or _process_publisher()).publish(progress_event(upload, part_number=part_number))


_process_publishers: dict[int, tuple[Any, ProgressPublisher]] = {}


def _process_publisher() -> ProgressPublisher:
    """This process's publisher outside a job (a request cancelling, a part confirmed): one per layer.

    Kept per layer object, so a test that swaps CHANNEL_LAYERS (Channels then builds a new layer)
    gets a publisher for the new one.
    """
    layer = get_channel_layer()
    kept = _process_publishers.get(id(layer))
    if kept is None or kept[0] is not layer:
        kept = _process_publishers[id(layer)] = (layer, ProgressPublisher().start())
    return kept[1]


# --- subscribing ------------------------------------------------------------------------------
# One ProgressHub per server process (per event loop) holds ONE channel on the layer and, per
# upload with subscribers here, ONE membership of that upload's group, one periodic re-read of
# the row, and the mailboxes of the upload's subscribers. An event from the layer is handed to
# every mailbox as the same ProgressEvent object, without waiting for any subscriber; each
# subscriber's own task (strawberry's operation task) drains its mailbox into its socket.
# A subscriber that has sent its snapshot and waits with nothing pending may have a sink: the
# hub then writes the event to its socket itself (the sink renders it and writes it at once, or
# declines), with no task woken; declined, and always for a terminal event, it goes the
# mailbox's way.

TERMINAL = {UploadStatus.COMPLETED, UploadStatus.FAILED, UploadStatus.CANCELLED}


class ProgressEvent(dict[str, Any]):
    """An event as the hub hands it out: one object shared by every subscriber of this process.

    `renders` is for work a subscriber's protocol layer does per event and may share with the
    other subscribers (schema/fanout.py keeps one GraphQL execution per document there).
    """

    __slots__ = ("renders",)

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__(event)
        self.renders: dict[Any, Any] = {}


# A subscriber's way past its mailbox and its task: send the event to the socket at once, without
# suspending, and answer True; or answer False (it cannot now: the socket's buffer is full, it is
# closing, the operation ended) and the event goes through the mailbox as before.
ProgressSink = Callable[[ProgressEvent], bool]

# Set by the protocol layer in a subscription's own task (schema/consumers.py); `progress_stream`,
# running in that task, hands it to the hub once the snapshot is out.
progress_sink: ContextVar[ProgressSink | None] = ContextVar("progress_sink", default=None)


class _Feed:
    """One upload as this process follows it: its group membership, re-reads and mailboxes."""

    def __init__(self, *, upload_id: uuid.UUID, period: float) -> None:
        self.upload_id = upload_id
        self.group = progress_group(upload_id)
        self.period = period
        # Each subscriber's mailbox, with its sink once it has one.
        self.mailboxes: dict[ProgressMailbox[ProgressEvent], ProgressSink | None] = {}
        self.joined = False
        self.last_sequence: int | None = None
        self.news_at = asyncio.get_running_loop().time()
        self.resync: asyncio.Task[None] | None = None


class ProgressHub:
    """This process's subscriber side of the progress groups (see the banner above)."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.reader: asyncio.Task[None] | None = None
        self.feeds: dict[str, _Feed] = {}
        self.sunk = 0  # events written by a sink, past mailboxes and tasks (for tests)
        # Serialises joining and leaving groups, so a leave in flight never undoes a new join.
        self._membership = asyncio.Lock()

    def subscribe(
        self, *, upload_id: uuid.UUID, mailbox: ProgressMailbox[ProgressEvent], resync_seconds: float
    ) -> _Feed:
        """Register `mailbox` for the upload's events (from now on); `join` before reading a snapshot."""
        key = str(upload_id)
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = _Feed(upload_id=upload_id, period=resync_seconds)
            feed.resync = asyncio.create_task(self._resync(feed), context=Context())
        feed.period = min(feed.period, resync_seconds)
        feed.mailboxes[mailbox] = None
        return feed

    def attach(self, feed: _Feed, mailbox: ProgressMailbox[ProgressEvent], sink: ProgressSink) -> None:
        """From now on offer the upload's events to `sink` first, whenever `mailbox` waits empty."""
        if mailbox in feed.mailboxes:
            feed.mailboxes[mailbox] = sink

    async def join(self, feed: _Feed) -> None:
        """Make sure this process is in the upload's group; with Redis unreachable, stay out until a re-read."""
        if feed.joined:
            return
        async with self._membership:
            if feed.joined or self.feeds.get(str(feed.upload_id)) is not feed:
                return
            try:
                if self.channel is None:
                    channel = await _detached(self.layer.new_channel())
                    self.channel, self.reader = channel, asyncio.create_task(self._read(channel), context=Context())
                await _detached(self.layer.group_add(feed.group, self.channel))
            except (RedisError, OSError) as exc:
                logger.warning(
                    "progress group %s not joined (Redis unreachable: %s); re-reading the row", feed.group, exc
                )
                if self.channel is not None:
                    # Locally in the group but never subscribed: take it out, or it would count as joined.
                    with contextlib.suppress(RedisError, OSError):
                        await _detached(self.layer.group_discard(feed.group, self.channel))
                return
            feed.joined = True

    async def release(self, feed: _Feed, mailbox: ProgressMailbox[ProgressEvent]) -> None:
        """Take `mailbox` out; the upload's last subscriber here takes the process out of its group."""
        feed.mailboxes.pop(mailbox, None)
        if feed.mailboxes:
            return
        async with self._membership:
            key = str(feed.upload_id)
            if feed.mailboxes or self.feeds.get(key) is not feed:
                return  # subscribed again meanwhile, or already released
            del self.feeds[key]
            if feed.resync is not None:
                feed.resync.cancel()
            if feed.joined and self.channel is not None:
                feed.joined = False
                try:
                    await _detached(self.layer.group_discard(feed.group, self.channel))
                except Exception:
                    logger.debug("leaving progress group %s failed", feed.group, exc_info=True)

    def deliver(self, feed: _Feed, event: dict[str, Any]) -> None:
        """Hand `event` to every subscriber of the upload, unless the feed already had it or a newer one.

        To its sink when it has one that takes it now (its mailbox waiting empty: nothing of its
        is pending, so the order holds); else to its mailbox, which wakes its task. A terminal
        event always goes to the mailbox: the subscriber's stream sends it and completes.
        """
        if feed.last_sequence is not None and event["sequence"] <= feed.last_sequence:
            return
        feed.last_sequence = event["sequence"]
        feed.news_at = asyncio.get_running_loop().time()
        shared = event if isinstance(event, ProgressEvent) else ProgressEvent(event)
        sinkable = shared["status"] not in TERMINAL
        sunk = 0
        for mailbox, sink in feed.mailboxes.items():
            if sink is not None and sinkable and self._pass_by(feed, mailbox, sink, shared):
                sunk += 1
            else:
                mailbox.put(shared)
        self.sunk += sunk

    @staticmethod
    def _pass_by(
        feed: _Feed, mailbox: ProgressMailbox[ProgressEvent], sink: ProgressSink, event: ProgressEvent
    ) -> bool:
        """`mailbox.pass_by(event, sink)`; a sink that raises (its write, its execution, whatever) is
        let go, logged once: raised here, it would stop the hub's reader (or the upload's re-reads),
        and with it every subscriber. Its subscriber gets this event and the next ones the usual way."""
        try:
            return mailbox.pass_by(event, sink)
        except Exception as exc:
            feed.mailboxes[mailbox] = None  # the same key: the dict being iterated keeps its size
            logger.warning(
                "progress sink of upload %s failed (%s: %s); its subscriber goes the usual way",
                feed.upload_id,
                type(exc).__name__,
                exc,
            )
            return False

    async def _read(self, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except (RedisError, OSError):
                logger.warning("progress channel read failed; reading on", exc_info=True)
                await asyncio.sleep(1)  # the layer reconnects on its own; do not spin meanwhile
                continue
            if message.get("type") != MESSAGE_TYPE:
                continue
            event = message["event"]
            feed = self.feeds.get(event.get("upload_id", ""))
            if feed is not None:
                self.deliver(feed, event)
                # The layer hands over a burst without suspending: let every woken subscriber send
                # this event before the next is delivered, so a burst coalesces nobody who keeps up.
                await asyncio.sleep(0)

    async def _resync(self, feed: _Feed) -> None:
        """Re-read the row whenever `feed.period` passes without news, joining the group again if out."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.0, feed.news_at + feed.period - loop.time()))
            if loop.time() - feed.news_at < feed.period:
                continue  # news arrived while asleep
            feed.news_at = loop.time()
            try:
                await self.join(feed)
                snapshot = await _snapshot(feed.upload_id)
            except Exception:
                logger.warning("re-reading upload %s failed; trying again later", feed.upload_id, exc_info=True)
                continue
            if snapshot is None:
                for mailbox in feed.mailboxes:
                    mailbox.end()  # deleted: its streams end
                return
            self.deliver(feed, snapshot)


def _detached(call: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """The hub's `call` to the layer, run on a task with an empty context, awaited in its place.

    The hub's own tasks (its reader, its re-reads) start with an empty context, and so does every
    call it makes to the layer from a subscriber's task: a layer may start a task there that
    lives as long as the process (channels_redis's receiver, started by the first `new_channel`
    or a `group_add` on a new shard), and a copy of the subscriber's context would keep its sink
    (`progress_sink`), and so its socket, for that long.
    """
    return asyncio.create_task(call, context=Context())


PROBE_GROUP = "upload.probe"


async def progress_layer_probe() -> None:
    """One round trip to the channel layer's Redis; raises what the layer raises while it is unreachable.

    A `group_send` to a group nobody joins: one PUBLISH (pub/sub layer) or one ZRANGE (core
    layer), leaving nothing behind. The websocket consumer calls it before each handshake.
    """
    await get_channel_layer().group_send(PROBE_GROUP, {"type": "progress.probe"})


# The hub of the running event loop (one per server process; a test's loop gets its own).
progress_hub = per_event_loop(ProgressHub)


async def progress_stream(*, upload_id: uuid.UUID, resync_seconds: float) -> AsyncIterator[ProgressEvent]:
    """The snapshot of an upload, then each newer event, until a terminal status.

    The process joins the upload's group (once, whatever its number of subscribers) before the
    snapshot is read, so nothing published in between is missed. Events come in strictly
    increasing `sequence`; a subscriber that falls behind gets them coalesced (ProgressMailbox),
    never missing a status change. The hub re-reads the row whenever `resync_seconds` pass without
    news, so a lost message never leaves the stream hanging; while the layer's Redis is
    unreachable the stream runs on those re-reads and the hub joins again at each one.
    """
    hub = progress_hub()
    mailbox: ProgressMailbox[ProgressEvent] = ProgressMailbox()
    subscription_gauge.opened()
    feed = hub.subscribe(upload_id=upload_id, mailbox=mailbox, resync_seconds=resync_seconds)
    try:
        await hub.join(feed)
        snapshot = await _snapshot(upload_id)
        if snapshot is None:
            return
        mailbox.start_after(snapshot)
        status = snapshot["status"]
        yield snapshot
        # Only the status is kept between events: an idle subscriber holds no event of its own.
        del snapshot
        # The snapshot is out (this generator resumes once its consumer has sent it): from now on
        # the hub may write events to the socket itself while this stream waits with none pending.
        # A terminal event still comes this way, so the stream's end stays where it was.
        sink = progress_sink.get()
        if sink is not None and status not in TERMINAL:
            hub.attach(feed, mailbox, sink)
        while status not in TERMINAL:
            event = await mailbox.get()
            if event is None:
                return
            status = event["status"]
            yield event
            del event
    finally:
        subscription_gauge.closed()
        await hub.release(feed, mailbox)


async def _snapshot(upload_id: uuid.UUID) -> ProgressEvent | None:
    upload = await FileUpload.objects.filter(id=upload_id).afirst()
    return ProgressEvent(progress_event(upload)) if upload is not None else None
