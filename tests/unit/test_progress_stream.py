"""`progress_stream` in process on Channels' in-memory layer: the snapshot first, newer events only, the end.

The stream joins the upload's group before it reads the snapshot, drops events not newer than the
last it gave, stops at a terminal status, and re-reads the row when nothing arrives, so a lost
message costs nothing. Here the test itself is the publisher, on the same in-memory layer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connections
from django.test import override_settings

from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.progress import (
    MESSAGE_TYPE,
    ProgressEvent,
    progress_event,
    progress_group,
    progress_hub,
    progress_sink,
    progress_stream,
)

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def row(tmp_path: Path, make_user: Any) -> Iterator[FileUpload]:
    from tests.conftest import _database_of_its_own

    with _database_of_its_own(), override_settings(CHANNEL_LAYERS=IN_MEMORY):
        upload_id = uuid.uuid4()
        yield FileUpload.objects.create(
            id=upload_id,
            owner=make_user().user,
            filename="stream.bin",
            content_type="application/octet-stream",
            size=3 * 1024,
            sha256=hashlib.sha256(b"x").hexdigest(),
            status=UploadStatus.QUEUED,
            part_size=1024,
            parts_total=3,
            storage_backend="local",
            storage_key=f"uploads/stream/{upload_id}",
            sequence=5,
        )


async def _publish(upload: FileUpload, **changes: Any) -> None:
    """Change the row as a worker would, then publish its state on the layer (after the commit)."""
    await FileUpload.objects.filter(id=upload.id).aupdate(**changes)
    current = await FileUpload.objects.aget(id=upload.id)
    await get_channel_layer().group_send(
        progress_group(upload.id), {"type": MESSAGE_TYPE, "event": progress_event(current)}
    )


def _close_connection() -> None:
    connections["default"].close()  # this thread's own connection (the ORM's worker thread)


def _run(scenario: Any) -> Any:
    """Run a scenario on a fresh loop; the ORM's worker thread starts and ends on this test's database."""

    async def wrapped() -> Any:
        await sync_to_async(_close_connection)()
        try:
            return await asyncio.wait_for(scenario, timeout=20)
        finally:
            await sync_to_async(_close_connection)()

    return asyncio.run(wrapped())


def test_snapshot_then_only_newer_events_until_the_terminal_one(row: FileUpload) -> None:
    async def scenario() -> list[dict[str, Any]]:
        stream = progress_stream(upload_id=row.id, resync_seconds=30)
        seen = [await anext(stream)]
        await _publish(row, status=UploadStatus.UPLOADING, sequence=6)
        seen.append(await anext(stream))
        # A late copy of an older state (another process's delayed publish): never shown.
        stale = progress_event(await FileUpload.objects.aget(id=row.id))
        stale["sequence"], stale["status"] = 5, UploadStatus.QUEUED
        await get_channel_layer().group_send(progress_group(row.id), {"type": MESSAGE_TYPE, "event": stale})
        await _publish(row, parts_uploaded=1, bytes_uploaded=1024, sequence=7)
        seen.append(await anext(stream))
        await _publish(row, status=UploadStatus.COMPLETED, parts_uploaded=3, bytes_uploaded=3 * 1024, sequence=8)
        seen.append(await anext(stream))
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        return seen

    events = _run(scenario())
    assert [(e["status"], e["sequence"]) for e in events] == [
        ("QUEUED", 5),
        ("UPLOADING", 6),
        ("UPLOADING", 7),
        ("COMPLETED", 8),
    ]
    assert events[2]["bytes_uploaded"] == 1024 and events[-1]["progress"] == 1.0


def test_a_lost_message_is_made_good_by_re_reading_the_row(row: FileUpload) -> None:
    async def scenario() -> list[dict[str, Any]]:
        stream = progress_stream(upload_id=row.id, resync_seconds=0.2)
        seen = [await anext(stream)]
        # The worker's COMPLETED never reaches the layer; only the row says it.
        await sync_to_async(FileUpload.objects.filter(id=row.id).update)(status=UploadStatus.COMPLETED, sequence=9)
        seen.append(await anext(stream))
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        return seen

    events = _run(scenario())
    assert [(e["status"], e["sequence"]) for e in events] == [("QUEUED", 5), ("COMPLETED", 9)]


def test_the_stream_of_a_deleted_upload_ends(row: FileUpload) -> None:
    async def scenario() -> list[dict[str, Any]]:
        stream = progress_stream(upload_id=row.id, resync_seconds=0.2)
        seen = [await anext(stream)]
        await sync_to_async(FileUpload.objects.filter(id=row.id).delete)()
        seen.extend([event async for event in stream])
        return seen

    events = _run(scenario())
    assert [e["status"] for e in events] == ["QUEUED"]


def test_a_sink_that_raises_is_let_go_and_its_events_go_the_usual_way(
    row: FileUpload, caplog: pytest.LogCaptureFixture
) -> None:
    """Two subscribers, one with a sink that raises (whatever it is: the socket's write, the
    execution): the hub logs it once, without a traceback, and hands that subscriber this event and
    every later one through its mailbox; its reader reads on, the other subscriber misses nothing."""
    called: list[int] = []

    def broken(event: ProgressEvent) -> bool:
        called.append(event["sequence"])
        raise RuntimeError("the socket's write failed")

    async def follow(sink: Any, seen: list[int]) -> None:
        progress_sink.set(sink)  # in this task only, as the protocol layer sets it
        async for event in progress_stream(upload_id=row.id, resync_seconds=30):
            seen.append(event["sequence"])

    async def parked(count: int) -> None:
        """Both subscribers past `count` events, waiting in their mailboxes with nothing pending."""
        while not (
            (feed := progress_hub().feeds.get(str(row.id))) is not None
            and len(feed.mailboxes) == 2
            and all(len(s) == count for s in seen)
            and all(m._waiter is not None and not len(m) for m in feed.mailboxes)
        ):
            await asyncio.sleep(0)  # sync-ok: one turn of the loop, then look at the state again

    seen: list[list[int]] = [[], []]

    async def scenario() -> bool:
        following = [asyncio.create_task(follow(broken, seen[0])), asyncio.create_task(follow(None, seen[1]))]
        await parked(1)
        await _publish(row, status=UploadStatus.UPLOADING, sequence=6)
        await parked(2)
        await _publish(row, parts_uploaded=1, bytes_uploaded=1024, sequence=7)
        await parked(3)
        await _publish(row, status=UploadStatus.COMPLETED, parts_uploaded=3, bytes_uploaded=3 * 1024, sequence=8)
        await asyncio.gather(*following)
        reader = progress_hub().reader
        return reader is not None and not reader.done()

    with caplog.at_level(logging.WARNING, logger="backend.uploads.progress"):
        reading_on = _run(scenario())
    assert seen == [[5, 6, 7, 8], [5, 6, 7, 8]]
    assert called == [6], "tried once, then let go"
    assert reading_on, "the hub's reader still runs"
    (record,) = [r for r in caplog.records if r.name == "backend.uploads.progress"]
    assert str(row.id) in record.getMessage() and record.exc_info is None
