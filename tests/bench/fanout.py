"""Fan-out: 1,000 websocket subscribers on one server process, 100 on each of 10 uploads.

Ten real uploads (rows made by the mutation, no workers) are driven through the real services
from this process: claimed, then one part recorded per upload per tick, then COMPLETED, each
event committed and published by the job's publisher on the server's channel layer, exactly as a
transfer job does. The ticks speed up in phases (0.5, 1, 2, 4, 10, 12, 15, 20 events/s per upload), so
the phase at 2 events/s is the goal's 2,000 deliveries/s and the others bracket the highest rate
the server sustains (10,000 deliveries/s is the delivery-rate goal). The 1,000 graphql-transport-ws
subscribers (one TCP socket each) are Node `ws` clients in a process of their own
(tests/bench/subscribers.py), so that neither they nor the driver's ORM writes share a GIL with the
other: each records every event's arrival minus its `at` (the row's updated_at, written in the
transaction that publishes). 1,000 Python `websockets` clients in the driver's process cost 130 to
230 us of CPU per delivery with the driver, more than the server they measured (README, "Fan-out's
subscribers"); the Node clients cost 25 to 40.

Goal: every status change and every part reaches every subscriber, in order; p99 <= 250 ms at
2,000 deliveries/s. `fanout_1000_delivery_rate`: the highest phase whose p99 stays <= 250 ms with
nothing lost (goal >= 10,000 deliveries/s on one server process). The notes give, per phase, the
server's and the subscribers' CPU per delivery (CPU over the phase's span / deliveries that arrived in
it), so a run says which side was the limit.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from tests.bench.client import http_client, upload_ours
from tests.bench.results import Figure, figure, percentile
from tests.bench.stack import Bench, Stack
from tests.bench.subscribers import Seen, Subscribers

UPLOADS = 10
PER_UPLOAD = 100
# (events/s per upload, parts at that rate): 500, 1,000, 2,000 (the goal), 4,000, 10,000, 12,000,
# 15,000 and 20,000 deliveries/s. The phases past 10,000 show how much headroom the goal has: the
# figure is the achieved rate of the highest phase that passes, so a 10,000 phase that passes just
# under its offered rate would otherwise read as a miss.
PHASES = [(0.5, 8), (1.0, 10), (2.0, 20), (4.0, 12), (10.0, 30), (12.0, 30), (15.0, 30), (20.0, 40)]
RATE_GOAL = 10_000.0
PARTS = sum(parts for _, parts in PHASES)
PART_SIZE = 1024
CONNECTING_AT_ONCE = 50
P99_GOAL_MS = 250.0
STACK_ENV = {"UPLOAD_PART_SIZE": str(PART_SIZE), "PROGRESS_RESYNC_SECONDS": "60"}


def _drive(
    bench: Bench,
    redis_url: str,
    upload_ids: list[str],
    phases: list[tuple[float, int]] = PHASES,
    on_phase: Callable[[], None] | None = None,
) -> list[tuple[float, float]]:
    """Claim, record PARTS parts per upload at the phases' rates, complete. Returns (start, end) per phase.

    Times are wall-clock seconds (time.time), the clock of the events' `at`. `on_phase` is called
    as each phase starts and once after the last one ends.
    """
    from django.conf import settings
    from django.test import override_settings

    from backend.uploads import services
    from backend.uploads.progress import progress_publisher
    from backend.uploads.storage import PartReceipt

    layers = {
        alias: {**conf, "CONFIG": {**conf.get("CONFIG", {}), "hosts": [redis_url]}}
        for alias, conf in settings.CHANNEL_LAYERS.items()
    }
    spans = []
    with override_settings(CHANNEL_LAYERS=layers), progress_publisher():
        claims = {}
        for upload_id in upload_ids:
            claimed = services.upload_claim(upload_id=upload_id)
            if claimed is None:
                raise RuntimeError(f"upload {upload_id} could not be claimed")
            claims[upload_id] = claimed[1]
        number = 0
        for rate, parts in phases:
            if on_phase is not None:
                on_phase()
            started = time.time()
            for tick in range(parts):
                number += 1
                for upload_id in upload_ids:
                    receipt = PartReceipt(part_number=number, size=PART_SIZE, etag="bench")
                    services.upload_record_part(upload_id=upload_id, claim=claims[upload_id], receipt=receipt)
                # Pacing the emitter to the phase's rate (not synchronisation): the next tick is due then.
                delay = started + (tick + 1) / rate - time.time()
                if delay > 0:
                    time.sleep(delay)  # sync-ok: pacing to the phase's rate
            spans.append((started, time.time()))
        if on_phase is not None:
            on_phase()
        for upload_id in upload_ids:
            services.upload_complete(upload_id=upload_id, claim=claims[upload_id])
    return spans


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@dataclass
class Cpu:
    """CPU seconds (server, subscribers' process, driver: this process), sampled at each phase's edges."""

    samples: list[tuple[float, float, float]] = field(default_factory=list)

    def between(self, first: int, last: int) -> tuple[float, float, float]:
        return tuple(b - a for a, b in zip(self.samples[first], self.samples[last], strict=True))  # type: ignore[return-value]


def _measure(bench: Bench, stack: Stack) -> tuple[list[Seen], list[tuple[float, float]], Cpu, float]:
    with http_client() as client:
        path = bench.file(PARTS * PART_SIZE)
        upload_ids = [str(upload_ours(client, stack.url, path, headers=bench.headers)[1]["id"]) for _ in range(UPLOADS)]
    layout = [(upload_id, PER_UPLOAD) for upload_id in upload_ids]
    log = stack.root / "subscribers.log"
    with Subscribers(stack.ws_url, bench.token, layout, log=log, connecting_at_once=CONNECTING_AT_ONCE) as subscribers:
        opened = subscribers.ready()
        server, clients, here = psutil.Process(stack.server_pid), psutil.Process(subscribers.pid), psutil.Process()
        cpu = Cpu()

        def sample() -> None:
            cpu.samples.append((_cpu_seconds(server), _cpu_seconds(clients), _cpu_seconds(here)))

        spans = _drive(bench, stack.env["REDIS_URL"], upload_ids, PHASES, on_phase=sample)
        driven = _cpu_seconds(here)  # the driver's work ends here; reading the results is not part of it
        seen = subscribers.results()
        # Until every subscription completed: the subscribers' process reports its own CPU then, and exits.
        cpu.samples.append((_cpu_seconds(server), subscribers.cpu_seconds, driven))
    return seen, spans, cpu, opened


def run(bench: Bench) -> list[Figure]:
    with bench.stack(env=STACK_ENV, workers=0) as stack:
        everyone, spans, cpu, opened = _measure(bench, stack)
        bench.clear_staging()
    complete = sum(
        1
        for each in everyone
        if len(each.latencies) == PARTS
        and each.statuses[-1:] == ["COMPLETED"]
        and "UPLOADING" in each.statuses
        and all(a < b for a, b in zip(each.sequences, each.sequences[1:], strict=False))
    )
    arrivals = sorted(at for each in everyone for at in each.arrivals.values())
    phases = []
    first = 1
    for index, ((rate, parts), (started, ended)) in enumerate(zip(PHASES, spans, strict=True)):
        numbers = range(first, first + parts)
        first += parts
        latencies = [each.latencies[n] * 1000 for each in everyone for n in numbers if n in each.latencies]
        delivered = len(latencies)
        expected = parts * len(everyone)
        achieved = delivered / (ended - started)
        # CPU per delivery over the phase's span: the deliveries that arrived within it, whichever phase sent them.
        arrived = bisect_right(arrivals, ended) - bisect_left(arrivals, started)
        server_cpu, client_cpu, _ = cpu.between(index, index + 1)
        per_delivery = (server_cpu / arrived * 1e6, client_cpu / arrived * 1e6) if arrived else (0.0, 0.0)
        p99 = percentile(latencies, 99) if latencies else float("inf")
        phases.append((rate, achieved, p99, delivered == expected, (*per_delivery, server_cpu / (ended - started))))
    goal_p99 = next(p99 for rate, _, p99, _, _ in phases if rate == 2.0)
    # What the server delivered per second over the whole run: its ceiling once a phase saturates it.
    delivered_all = len(arrivals)
    flowing = max(each.last_arrival for each in everyone) - spans[0][0]
    drained = delivered_all / flowing
    server_cpu, client_cpu, driver_cpu = cpu.between(0, len(cpu.samples) - 1)
    cpu_note = (
        f"server CPU {server_cpu / delivered_all * 1e6:.0f} us per delivery, busy {server_cpu / flowing:.0%} of the "
        f"{flowing:.0f} s events flowed; the subscribers ({len(everyone):,} Node ws sockets, their own process) "
        f"{client_cpu / delivered_all * 1e6:.0f} us per delivery, busy {client_cpu / flowing:.0%}; the driver "
        f"(this process) {driver_cpu / flowing:.0%}; {opened:.0f} s to open and subscribe the sockets"
    )
    sustained = [achieved for _, achieved, p99, whole, _ in phases if whole and p99 <= P99_GOAL_MS]
    detail = "; ".join(
        f"{rate:g}/s per upload: {achieved:.0f} deliveries/s, p99 {p99:.0f} ms{'' if whole else ' (events LOST)'}, "
        f"server {server_us:.0f} us/delivery (busy {server_busy:.0%}), subscribers {client_us:.0f} us/delivery"
        for rate, achieved, p99, whole, (server_us, client_us, server_busy) in phases
    )
    return [
        figure(
            "fanout_1000_p99_at_2000_per_s",
            ours=goal_p99,
            baseline=None,
            unit="ms",
            goal="all in order; p99 <= 250 ms",
            check=lambda f: complete == len(everyone) and f.ours <= P99_GOAL_MS,
            note=f"{complete}/{len(everyone)} subscribers got every event in order; {detail}",
        ),
        figure(
            "fanout_1000_delivery_rate",
            ours=max(sustained) if sustained else drained,
            baseline=None,
            unit="deliveries/s",
            goal=">= 10,000 deliveries/s",
            check=lambda f: f.ours >= RATE_GOAL,
            note=(
                f"highest phase with nothing lost and p99 <= 250 ms: {max(sustained) if sustained else 'none'}; "
                f"delivered over the run (first event -> last arrival): {drained:.0f}/s; {cpu_note}"
            ),
        ),
    ]
