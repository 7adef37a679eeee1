"""Progress latency: a part confirmed by a real worker → a websocket subscriber has its event.

Ours: a real upload transferred by a real worker (1 MiB parts, one at a time, 20 ms apart); a
graphql-transport-ws subscriber on the server records, for every part event, its arrival time
minus the event's `at` (the row's updated_at, written when the part entered the ledger). So the
figure covers the commit, the publish on the channel layer, the server's relay and the socket.
Baseline: Redis PUBLISH → SUBSCRIBE on the same redis-server, a message of the same rate carrying
its send time. Rounds alternate; samples are pooled; p50 and p99 are reported.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import datetime

import redis
import redis.asyncio as aioredis

from tests.bench.client import http_client, upload_ours
from tests.bench.results import Figure, figure, percentile
from tests.bench.stack import Bench, MiB
from tests.support.client import subscriber

SIZE = 128 * MiB
ROUNDS = 2
STACK_ENV = {"UPLOAD_PART_SIZE": str(MiB), "UPLOAD_PART_CONCURRENCY": "1", "UPLOAD_PART_DELAY_MS": "20"}


async def _ours_round(bench: Bench, url: str, ws_url: str) -> list[float]:
    """Latencies (s) of the part events one subscriber receives for one upload."""
    with http_client() as client:
        upload = await asyncio.to_thread(upload_ours, client, url, bench.file(SIZE), headers=bench.headers)
    latencies = []
    async with subscriber(ws_url, bench.token) as sub:
        sub_id = await sub.subscribe(upload[1]["id"])
        while True:
            message = await asyncio.wait_for(sub.receive(), timeout=120)
            received = time.time()
            if message.get("id") != sub_id or message["type"] == "complete":
                if message["type"] == "complete":
                    break
                continue
            if message["type"] != "next" or message["payload"].get("errors"):
                raise RuntimeError(f"subscription error: {message}")
            event = message["payload"]["data"]["uploadProgress"]
            if event["partNumber"] is not None:
                latencies.append(received - datetime.fromisoformat(event["at"]).timestamp())
            if event["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
                break
    return latencies


async def _redis_round(redis_url: str, count: int) -> list[float]:
    """Latencies (s) of `count` PUBLISH → SUBSCRIBE messages sent 20 ms apart from another thread."""
    channel = "bench.latency"
    listener = aioredis.from_url(redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=5)  # the subscribe confirmation

    def publish() -> None:
        sender = redis.Redis.from_url(redis_url)
        for _ in range(count):
            sender.publish(channel, json.dumps({"at": time.time()}))
            time.sleep(0.02)  # sync-ok: pacing the sender like the worker's part delay, not synchronisation
        sender.close()

    thread = threading.Thread(target=publish)
    thread.start()
    latencies = []
    while len(latencies) < count:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30)
        if message is None:
            break
        latencies.append(time.time() - json.loads(message["data"])["at"])
    thread.join()
    await pubsub.aclose()
    await listener.aclose()
    return latencies


def run(bench: Bench) -> list[Figure]:
    ours: list[float] = []
    base: list[float] = []
    with bench.stack(env=STACK_ENV, workers=1) as stack:
        for _ in range(ROUNDS):
            base += asyncio.run(_redis_round(stack.env["REDIS_URL"], SIZE // MiB))
            ours += asyncio.run(_ours_round(bench, stack.url, stack.ws_url))
    if not ours:
        raise RuntimeError("the subscriber received no part events")
    note = f"{len(ours)} part events over {ROUNDS} uploads; {len(base)} Redis messages"
    p50, p99 = percentile(ours, 50) * 1000, percentile(ours, 99) * 1000
    b50, b99 = percentile(base, 50) * 1000, percentile(base, 99) * 1000
    return [
        figure(
            "progress_latency_p50",
            ours=p50,
            baseline=b50,
            unit="ms",
            goal="<= 3 ms",
            check=lambda f: f.ours <= 3,
            note=note,
        ),
        figure(
            "progress_latency_p99", ours=p99, baseline=b99, unit="ms", goal="<= 50 ms", check=lambda f: f.ours <= 50
        ),
    ]
