"""Idle subscribers: what 10,000 open subscriptions cost one server process in memory.

10,000 websockets (one subscription each, 1,000 on each of 10 uploads that do not move) are
opened against one server process; each reads its snapshot and then only answers the server's
pings. The figure is the server's RSS once all are subscribed, minus its RSS with one subscriber
(the imports, caches and pools are warm by then), per subscriber. The clients are websockets'
sans-I/O protocol on plain sockets (tests/support/stalled.py), so that the client process can
hold 10,000 of them; the file-descriptor limit must allow 10,000 sockets per process.

Goal: report; <= 20 KiB per subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from typing import Any

import psutil

from tests.bench.client import http_client, upload_ours
from tests.bench.results import Figure, figure
from tests.bench.stack import Bench
from tests.support.stalled import StalledSocket, stalled_subscriber

UPLOADS = 10
SUBSCRIBERS = 10_000
CONNECTING_AT_ONCE = 50
GOAL_KIB = 20.0
RETRIES = 3
# Opening all 10,000 took 134-183 s on this machine; a server that stops answering fails the figure.
OPENING_TIMEOUT = 600.0


async def _hold(
    ws_url: str, token: str, upload_id: str, gate: asyncio.Semaphore, ready: asyncio.Event, retries: list[str]
) -> None:
    """Subscribe, read the snapshot, then read on (answering pings) until cancelled.

    A connection the server closes while it is being set up (on a loaded machine, the server may not
    get to a socket's `connection_init` within its 10 s limit) is opened again, as a client would,
    up to RETRIES times; each is counted in `retries` and named in the figure's note.
    """
    connection: StalledSocket | None = None
    try:
        async with gate:
            for attempt in range(RETRIES + 1):
                try:
                    connection, session = await stalled_subscriber(ws_url, token)
                    sub_id = await session.subscribe(upload_id)
                    message = await session.receive()
                    break
                except ConnectionError as exc:
                    if connection is not None:
                        connection.close()
                        connection = None
                    if attempt == RETRIES:
                        raise
                    retries.append(str(exc))
            if (message.get("id"), message["type"]) != (sub_id, "next"):
                raise RuntimeError(f"idle subscriber got {message}")
        ready.set()
        while True:
            await connection.recv()
    finally:
        if connection is not None:
            connection.close()


async def _measure(bench: Bench, stack: Any) -> tuple[float, float, float, list[str]]:
    with http_client() as client:
        path = bench.file(1024)
        upload_ids = [str(upload_ours(client, stack.url, path, headers=bench.headers)[1]["id"]) for _ in range(UPLOADS)]
    server = psutil.Process(stack.server_pid)
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    first = asyncio.Event()
    retries: list[str] = []
    holders = [asyncio.create_task(_hold(stack.ws_url, bench.token, upload_ids[0], gate, first, retries))]
    await asyncio.wait_for(first.wait(), timeout=60)
    before = server.memory_info().rss
    started = time.monotonic()
    readiness = [asyncio.Event() for _ in range(SUBSCRIBERS - 1)]
    holders += [
        asyncio.create_task(_hold(stack.ws_url, bench.token, upload_ids[(n + 1) % UPLOADS], gate, ready, retries))
        for n, ready in enumerate(readiness)
    ]
    try:
        waiting = asyncio.ensure_future(asyncio.gather(*(ready.wait() for ready in readiness)))
        # Bounded: a server that stops answering handshakes fails the figure instead of holding the bench.
        done, _ = await asyncio.wait([waiting, *holders], timeout=OPENING_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise RuntimeError(f"not every subscriber was subscribed within {OPENING_TIMEOUT:.0f} s")
        for task in done:
            task.result()  # a holder only ends by failing, and that fails the figure
        if not waiting.done():
            raise RuntimeError("a subscriber ended before all were subscribed")
        connected = time.monotonic() - started
        after = server.memory_info().rss
    finally:
        for holder in holders:
            holder.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*holders, return_exceptions=True)
    return (after - before) / SUBSCRIBERS / 1024, (after - before) / 2**20, connected, retries


def run(bench: Bench) -> list[Figure]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SUBSCRIBERS + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, SUBSCRIBERS * 2), hard))
    with bench.stack(env={"PROGRESS_RESYNC_SECONDS": "60"}, workers=0) as stack:
        per_subscriber, total_mib, connected, retries = asyncio.run(_measure(bench, stack))
        bench.clear_staging()
    again = f"; {len(retries)} opened again after the server closed them: {sorted(set(retries))[:3]}" if retries else ""
    return [
        figure(
            "fanout_10000_idle_rss_per_subscriber_kib",
            ours=per_subscriber,
            baseline=None,
            unit="KiB",
            goal="report; <= 20 KiB",
            check=lambda f: f.ours <= GOAL_KIB,
            note=f"RSS +{total_mib:.0f} MiB for {SUBSCRIBERS:,} subscribers, all open after {connected:.0f} s{again}",
        )
    ]
