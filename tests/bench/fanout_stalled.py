"""Stalled readers: 100 subscribers that stop reading their sockets beside 900 healthy ones.

One server process, 10 uploads driven as in `fanout` (claim, parts, COMPLETED through the real
services and the job's publisher) at 2 events/s per upload: 1,800 deliveries/s to the healthy
subscribers. Baseline: the same 900 healthy subscribers without the stalled ones, measured in the
same run; the two alternate (RUNS of each) and each figure is the median of its runs. A stalled
subscriber (tests/support/stalled.py) reads its snapshot and then nothing: its TCP window closes
and the server's sends to it back up into its kernel buffers, then into its mailbox, coalesced.
The healthy subscribers are the Node `ws` clients of `fanout` (tests/bench/subscribers.py), in a
process of their own, so that what is compared is the server's delivery to them, not the CPU
their own client process had left; the stalled ones stay in this process (they read nothing, so
they cost it nothing).

Goal: the healthy subscribers' p99 (arrival minus the event's `at`) within 1.2x of the baseline's,
every healthy subscriber getting every part in order.

A stalled reader answers no ping either (it reads nothing), so uvicorn's keepalive (a ping every
20 s, 20 s to answer) would close the stalled sockets some 40 s into a run, and a run on a loaded
machine would then measure fewer stalled readers than it says. The server of this figure pings
every PING_INTERVAL_SECONDS instead, longer than any run, so every stalled reader stays stalled
until its run ends and closes it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.bench.client import http_client, upload_ours
from tests.bench.fanout import CONNECTING_AT_ONCE, STACK_ENV, _drive
from tests.bench.results import Figure, figure, median, percentile
from tests.bench.stack import Bench, Stack
from tests.bench.subscribers import Subscribers
from tests.support.stalled import StalledSocket, stalled_subscriber

UPLOADS = 10
HEALTHY = 90
STALLED = 10
PHASE = (2.0, 20)
PART_SIZE = 1024
# One p99 of 18,000 arrivals moves by tens of ms with the machine's load: alternate three times, medians.
RUNS = 3
RATIO_GOAL = 1.2
PING_INTERVAL_SECONDS = 3600


async def _stall(ws_url: str, token: str, upload_id: str, gate: asyncio.Semaphore) -> Any:
    async with gate:
        connection, session = await stalled_subscriber(ws_url, token)
        sub_id = await session.subscribe(upload_id)
        message = await session.receive()
        if (message.get("id"), message["type"]) != (sub_id, "next"):
            raise RuntimeError(f"stalled subscriber got {message}")
        return connection  # from here on nothing reads it


async def _stall_all(ws_url: str, token: str, upload_ids: list[str]) -> list[StalledSocket]:
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    return await asyncio.gather(
        *(_stall(ws_url, token, upload_id, gate) for upload_id in upload_ids for _ in range(STALLED))
    )


def _once(bench: Bench, stack: Stack, *, stalled: bool) -> tuple[float, bool]:
    """(healthy p99 in ms, every healthy subscriber got every part in order)."""
    with http_client() as client:
        path = bench.file(PHASE[1] * PART_SIZE)
        upload_ids = [str(upload_ours(client, stack.url, path, headers=bench.headers)[1]["id"]) for _ in range(UPLOADS)]
    # The stalled sockets outlive the event loop that opened them: nothing reads them from here on.
    connections = asyncio.run(_stall_all(stack.ws_url, bench.token, upload_ids)) if stalled else []
    try:
        layout = [(upload_id, HEALTHY) for upload_id in upload_ids]
        log = stack.root / "subscribers.log"
        with Subscribers(stack.ws_url, bench.token, layout, log=log, connecting_at_once=CONNECTING_AT_ONCE) as healthy:
            healthy.ready()
            _drive(bench, stack.env["REDIS_URL"], upload_ids, [PHASE])
            seen = healthy.results()
    finally:
        for connection in connections:
            connection.close()
    latencies = [value * 1000 for each in seen for value in each.latencies.values()]
    whole = all(
        len(each.latencies) == PHASE[1]
        and each.statuses[-1:] == ["COMPLETED"]
        and all(a < b for a, b in zip(each.sequences, each.sequences[1:], strict=False))
        for each in seen
    )
    return percentile(latencies, 99), whole


def run(bench: Bench) -> list[Figure]:
    with_stalled: list[float] = []
    without: list[float] = []
    complete = True
    env = {**STACK_ENV, "UVICORN_WS_PING_INTERVAL": str(PING_INTERVAL_SECONDS)}  # uvicorn reads UVICORN_* options
    with bench.stack(env=env, workers=0) as stack:
        for _ in range(RUNS):
            for stalled, into in ((False, without), (True, with_stalled)):
                p99, whole = _once(bench, stack, stalled=stalled)
                into.append(p99)
                complete = complete and whole
        bench.clear_staging()
    detail = (
        f"healthy p99 with {UPLOADS * STALLED} stalled: {', '.join(f'{v:.0f}' for v in with_stalled)} ms; "
        f"without: {', '.join(f'{v:.0f}' for v in without)} ms; "
        f"{'every healthy subscriber got every part in order' if complete else 'a healthy subscriber MISSED events'}"
    )
    return [
        figure(
            "fanout_stalled_p99",
            ours=median(with_stalled),
            baseline=median(without),
            unit="ms",
            goal="ratio <= 1.2, nothing lost",
            check=lambda f: complete and f.ratio is not None and f.ratio <= RATIO_GOAL,
            note=detail,
        )
    ]
