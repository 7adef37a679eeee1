"""Progress publishing: the one place that turns upload state into events on the channel layer.

Events carry absolute state (bytes, parts, status, sequence), never deltas, so a subscriber that
misses one loses nothing: the next one, or its periodic re-read of the row, tells it everything.
A transfer job publishes through one `ProgressPublisher` for its whole life: one event loop in
one thread and one Redis connection pool, events sent in the order they were committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from redis.exceptions import RedisError

from backend.uploads.metrics import subscription_gauge
from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.parts import progress_fraction

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "upload.progress"


def progress_group(upload_id: uuid.UUID | str) -> str:
    return f"upload.{uuid.UUID(str(upload_id)).hex}"


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
        "bytes_total": upload.size,
        "progress": progress_fraction(
            bytes_uploaded=upload.bytes_uploaded,
            size=upload.size,
            completed=upload.status == UploadStatus.COMPLETED,
        ),
        "error": upload.error,
        "at": upload.updated_at.isoformat(),
    }


class ProgressPublisher:
    """Sends events from synchronous code through one private event loop, in submission order."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._queue: asyncio.Queue[dict[str, Any] | None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-publisher", daemon=True)

    def start(self) -> ProgressPublisher:
        self._thread.start()
        self._ready.wait()
        return self

    def publish(self, event: dict[str, Any]) -> None:
        assert self._queue is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most `timeout` seconds), then stop the loop."""
        if self._queue is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)
        self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._pump())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _pump(self) -> None:
        self._queue = asyncio.Queue()
        self._ready.set()
        layer = get_channel_layer()
        while (event := await self._queue.get()) is not None:
            try:
                await layer.group_send(progress_group(event["upload_id"]), {"type": MESSAGE_TYPE, "event": event})
            except Exception:
                # Lossy by design: subscribers re-read the row every PROGRESS_RESYNC_SECONDS.
                logger.warning(
                    "progress publish failed for upload %s",
                    event["upload_id"],
                    exc_info=True,
                    extra={"upload_id": event["upload_id"]},
                )
        if hasattr(layer, "flush"):
            try:
                await layer.flush()
            except Exception:
                logger.debug("closing the channel layer failed", exc_info=True)


_publisher: ProgressPublisher | None = None


@contextmanager
def progress_publisher() -> Iterator[ProgressPublisher]:
    """Route this process's progress events through one publisher while the block runs (a job)."""
    global _publisher
    publisher = ProgressPublisher().start()
    _publisher = publisher
    try:
        yield publisher
    finally:
        _publisher = None
        publisher.close()


def progress_publish(upload: FileUpload, *, part_number: int | None = None) -> None:
    """Publish the state of `upload`. Call it after the state is committed."""
    event = progress_event(upload, part_number=part_number)
    if _publisher is not None:
        _publisher.publish(event)
        return
    try:
        async_to_sync(get_channel_layer().group_send)(progress_group(upload.id), {"type": MESSAGE_TYPE, "event": event})
    except Exception:
        logger.warning("progress publish failed for upload %s", upload.id, exc_info=True)


TERMINAL = {UploadStatus.COMPLETED, UploadStatus.FAILED, UploadStatus.CANCELLED}


async def progress_stream(*, upload_id: uuid.UUID, resync_seconds: float) -> AsyncIterator[dict[str, Any]]:
    """The snapshot of an upload, then each newer event, until a terminal status.

    Joins the upload's group before reading the snapshot, so nothing published in between is
    missed; drops events not newer than the last one yielded; re-reads the row whenever
    `resync_seconds` pass without news, so a lost message never leaves the stream hanging.
    Each stream has its own channel on the layer: streams never share a group membership.
    While the layer's Redis is unreachable the stream runs on the re-reads alone and tries to
    join again at each one, so a subscription opened during an outage still converges.
    """
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    membership = _GroupMembership(group=progress_group(upload_id), inbox=inbox)
    subscription_gauge.opened()
    try:
        await membership.join()
        event = await _snapshot(upload_id)
        if event is None:
            return
        yield event
        last = event["sequence"]
        while event["status"] not in TERMINAL:
            try:
                candidate = await asyncio.wait_for(inbox.get(), timeout=resync_seconds)
            except TimeoutError:
                await membership.join()
                snapshot = await _snapshot(upload_id)
                if snapshot is None:
                    return
                candidate = snapshot
            if candidate["sequence"] <= last:
                continue
            event, last = candidate, candidate["sequence"]
            yield event
    finally:
        subscription_gauge.closed()
        await membership.leave()


class _GroupMembership:
    """One stream's channel in an upload's progress group, relaying its events into `inbox`."""

    def __init__(self, *, group: str, inbox: asyncio.Queue[dict[str, Any]]) -> None:
        self.layer = get_channel_layer()
        self.group = group
        self.inbox = inbox
        self.channel: str | None = None
        self.reader: asyncio.Task[None] | None = None

    async def join(self) -> None:
        """Join the group unless already in it; with Redis unreachable, stay out until the next try."""
        if self.channel is not None:
            return
        channel = None
        try:
            channel = await self.layer.new_channel()
            await self.layer.group_add(self.group, channel)
        except (RedisError, OSError) as exc:
            logger.warning("progress group %s not joined (Redis unreachable: %s); re-reading the row", self.group, exc)
            if channel is not None:
                # Locally in the group but never subscribed: take it out, or it would collect events.
                with contextlib.suppress(RedisError, OSError):
                    await self.layer.group_discard(self.group, channel)
            return
        self.channel = channel
        self.reader = asyncio.create_task(self._pump(channel))

    async def _pump(self, channel: str) -> None:
        while True:
            message = await self.layer.receive(channel)
            if message.get("type") == MESSAGE_TYPE:
                self.inbox.put_nowait(message["event"])

    async def leave(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.channel is None:
            return
        try:
            await self.layer.group_discard(self.group, self.channel)
        except Exception:
            logger.debug("leaving progress group %s failed", self.group, exc_info=True)


async def _snapshot(upload_id: uuid.UUID) -> dict[str, Any] | None:
    upload = await FileUpload.objects.filter(id=upload_id).afirst()
    return progress_event(upload) if upload is not None else None
