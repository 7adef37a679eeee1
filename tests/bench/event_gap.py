"""A subscription's event gap while a 512 MiB upload arrives on the same server process.

A steady stream of progress events (one every 20 ms, published from this process through the
worker's `ProgressPublisher` for a queued upload) is relayed by the server to one websocket
subscriber; the figure is the p99 gap between consecutive events received while a 512 MiB upload
is being received by that server, against the p99 gap in the quiet windows around it. If parsing
or staging ran on the server's event loop, the gaps during the upload would grow by seconds.
Quiet and busy windows alternate.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import threading
import time
import uuid
from typing import Any

from tests.bench.client import http_client, upload_ours
from tests.bench.results import Figure, figure, percentile
from tests.bench.stack import Bench, MiB
from tests.support.client import subscriber

SIZE = 512 * MiB
ROUNDS = 2
QUIET_SECONDS = 3.0
PERIOD = 0.02


def _queued_upload(bench: Bench) -> Any:
    """An upload row that stays QUEUED (its job goes to a queue no worker reads)."""
    from backend.uploads import services
    from backend.uploads.staging import INCOMING, StagedFile, staging_dir

    path = bench.file(1024)
    incoming = staging_dir() / INCOMING
    incoming.mkdir(parents=True, exist_ok=True)
    staged = incoming / f"{uuid.uuid4().hex}.part"
    os.link(path, staged)
    data = path.read_bytes()
    file = StagedFile(
        path=staged,
        name="ticker.bin",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        head=data,
        content_type="",
    )
    return services.upload_create(user=bench.user, file=file, sha256=None)


def _ticker(upload: Any, stop: threading.Event) -> None:
    """Publish one absolute-state event every PERIOD seconds until `stop`."""
    from backend.uploads.progress import ProgressPublisher, progress_event

    publisher = ProgressPublisher().start()
    sequence = upload.sequence
    try:
        while not stop.wait(PERIOD):  # pacing the ticker, not synchronisation
            sequence += 1
            event = progress_event(upload)
            event["sequence"] = sequence
            publisher.publish(event)
    finally:
        publisher.close()


async def _measure(bench: Bench, url: str, ws_url: str) -> tuple[list[float], list[float]]:
    upload = await asyncio.to_thread(_queued_upload, bench)
    arrivals: list[float] = []
    windows: list[tuple[float, float]] = []
    stop = threading.Event()
    ticker = threading.Thread(target=_ticker, args=(upload, stop), daemon=True)

    async with subscriber(ws_url, bench.token) as sub:
        sub_id = await sub.subscribe(str(upload.id))

        async def receive() -> None:
            while True:
                message = await sub.receive()
                if message.get("id") == sub_id and message["type"] == "next":
                    arrivals.append(time.perf_counter())

        receiver = asyncio.create_task(receive())
        ticker.start()
        with http_client() as client:
            for _ in range(ROUNDS):
                await asyncio.sleep(QUIET_SECONDS)  # sync-ok: a quiet window to measure, not synchronisation
                started = time.perf_counter()
                await asyncio.to_thread(upload_ours, client, url, bench.file(SIZE), headers=bench.headers)
                windows.append((started, time.perf_counter()))
                bench.clear_staging()
            await asyncio.sleep(QUIET_SECONDS)  # sync-ok: the quiet window between measured uploads
        stop.set()
        receiver.cancel()
    ticker.join(10)

    busy, quiet = [], []
    for before, after in itertools.pairwise(arrivals[2:]):
        gap = after - before
        (busy if any(start <= after <= end for start, end in windows) else quiet).append(gap)
    return busy, quiet


def run(bench: Bench) -> list[Figure]:
    with bench.stack(workers=0) as stack:
        busy, quiet = asyncio.run(_measure(bench, stack.url, stack.ws_url))
    if not busy or not quiet:
        raise RuntimeError(f"too few events: {len(busy)} during uploads, {len(quiet)} quiet")
    return [
        figure(
            "event_gap_p99_512MiB",
            ours=percentile(busy, 99) * 1000,
            baseline=percentile(quiet, 99) * 1000,
            unit="ms",
            goal="ratio <= 2",
            check=lambda f: (f.ratio or 0) <= 2,
            note=f"events every {PERIOD * 1000:.0f} ms; {len(busy)} gaps during {ROUNDS} uploads, {len(quiet)} quiet; "
            f"max gap during {max(busy) * 1000:.0f} ms",
        )
    ]
