"""RECEIVING events: a subscriber sees bytes arrive through tus, within one PATCH, then the transfer."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import Any

import httpx

from tests.support.client import subscriber
from tests.support.tus import OCTETS, TUS, tus_create

MIB = 1024 * 1024


def test_receiving_events_flow_within_one_patch_then_the_transfer_in_one_sequence(stack, api_user) -> None:
    content = os.urandom(6 * MIB)
    location = tus_create(stack.url, api_user.headers, length=len(content)).headers["Location"]
    upload_id = location.rsplit("/", 1)[1]

    async def run() -> list[dict[str, Any]]:
        async with subscriber(stack.ws_url, api_user.token) as session:
            sub_id = await session.subscribe(upload_id)
            events: list[dict[str, Any]] = []
            reader = asyncio.create_task(session.events_until_complete(sub_id, events))

            async def body():
                # The body is held back until the subscriber has seen the bytes so far: the events
                # come from inside this one PATCH, not from its end.
                for sent in range(MIB, len(content) + 1, MIB):
                    yield content[sent - MIB : sent]
                    if sent < len(content):
                        await _wait_for(events, lambda e, sent=sent: e["bytesReceived"] >= sent)

            headers = {**TUS, **OCTETS, **api_user.headers, "Upload-Offset": "0", "Content-Length": str(len(content))}
            async with httpx.AsyncClient(timeout=60) as client:
                answer = await client.patch(location, headers=headers, content=body())
            assert answer.status_code == 204, answer.text
            await asyncio.wait_for(reader, timeout=60)
            return events

    events = asyncio.run(run())
    statuses = [e["status"] for e in events]
    receiving = [e for e in events if e["status"] == "RECEIVING"]
    assert statuses[0] == "RECEIVING" and statuses[-1] == "COMPLETED"
    assert statuses.index("QUEUED") > max(i for i, s in enumerate(statuses) if s == "RECEIVING")
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(set(sequences)), "RECEIVING and transfer events share one increasing sequence"
    received = [e["bytesReceived"] for e in receiving]
    assert received == sorted(received) and len({r for r in received if 0 < r < len(content)}) >= 4
    # Whole parts may already be in the bucket while RECEIVING (pipelining), never more than arrived.
    assert all(e["bytesUploaded"] <= e["bytesReceived"] and e["bytesTotal"] == len(content) for e in receiving)
    uploaded = [e["bytesUploaded"] for e in events]
    assert uploaded == sorted(uploaded)
    # At most four RECEIVING events of bytes arriving a second (a part confirmed is its own event):
    # they are decided at least 0.25 s apart, so five span a second or more; `at` is stamped a
    # moment after the decision, hence the 0.9 s window.
    arriving = [e for e in receiving[1:] if e["partNumber"] is None]
    moments = sorted(datetime.fromisoformat(e["at"]) for e in arriving)
    for i, start in enumerate(moments):
        assert sum(1 for m in moments[i:] if (m - start).total_seconds() < 0.9) <= 4


async def _wait_for(events: list[dict[str, Any]], condition, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not any(condition(e) for e in events):
        if loop.time() > deadline:
            raise AssertionError(f"no event matched within {timeout}s: {events[-3:]}")
        await asyncio.sleep(0.01)  # sync-ok: polls the list the subscription reader fills
