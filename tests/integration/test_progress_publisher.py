"""The job's progress publisher on a real Redis: each event PUBLISHed by the calling thread, as the layer reads it.

A server reads progress through the channel layer (`layer.receive` on a channel in the upload's
group); the publisher writes with a plain redis-py client (backend/uploads/progress_wire.py). So
the receiving side here is the real layer, not a Redis subscriber of the test's own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.test import override_settings

from backend.stack import free_port
from backend.uploads.progress import MESSAGE_TYPE, ProgressPublisher, progress_group


def _event(upload_id: uuid.UUID, sequence: int) -> dict[str, Any]:
    return {"upload_id": str(upload_id), "sequence": sequence, "status": "UPLOADING", "part_number": sequence}


def test_events_reach_the_layer_in_order_without_a_thread_of_their_own() -> None:
    upload_id = uuid.uuid4()
    count = 50

    async def scenario() -> list[int]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(progress_group(upload_id), channel)
        threads = threading.active_count()
        publisher = ProgressPublisher().start()
        assert threading.active_count() == threads, "the publisher started a thread"

        def publish_all() -> None:  # as a job's committing thread does
            for sequence in range(1, count + 1):
                publisher.publish(_event(upload_id, sequence))

        await asyncio.to_thread(publish_all)
        publisher.close()
        received = []
        for _ in range(count):
            message = await asyncio.wait_for(layer.receive(channel), timeout=10)
            assert message["type"] == MESSAGE_TYPE
            received.append(message["event"]["sequence"])
        await layer.group_discard(progress_group(upload_id), channel)
        return received

    assert asyncio.run(scenario()) == list(range(1, count + 1))


def test_an_unreachable_redis_costs_one_warning_and_no_wait(caplog) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    layers = {
        alias: {**conf, "CONFIG": {**conf.get("CONFIG", {}), "hosts": [nowhere]}}
        for alias, conf in settings.CHANNEL_LAYERS.items()
    }
    upload_id = uuid.uuid4()
    with override_settings(CHANNEL_LAYERS=layers), caplog.at_level(logging.WARNING, logger="backend.uploads"):
        publisher = ProgressPublisher().start()
        started = time.monotonic()
        for sequence in range(1, 21):
            publisher.publish(_event(upload_id, sequence))  # never raises
        elapsed = time.monotonic() - started
        publisher.close()
    failures = [r for r in caplog.records if "progress publish failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert elapsed < ProgressPublisher.COOLDOWN_SECONDS, f"20 events took {elapsed:.2f}s with Redis away"
