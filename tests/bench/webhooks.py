"""Webhooks: how soon a receiver hears of a COMPLETED upload, and what a hanging receiver costs transfers.

`webhook_delivery_p99`: 40 small uploads one after another on an idle queue (one webhook worker,
as `make run` starts it), each timed from the row's `completed_at` to the moment the loopback
receiver answers 2xx; the p99. Baseline: the same number of no-op RQ jobs on the same webhook
queue and worker, each timed from enqueue to its end: the floor any queued delivery pays.

`webhook_hanging_throughput`: ten 8 MiB uploads through two transfer workers, from the first
request to the last COMPLETED, with an endpoint whose receiver hangs on every delivery past the
attempt time limit, against the same uploads with no webhook at all (the baseline). Alternating
rounds, medians. The goal is a ratio of at least 0.95: a hanging receiver must not slow transfers.
"""

from __future__ import annotations

import time
from datetime import UTC

import redis
from rq import Queue
from rq.job import Job, JobStatus

from backend.stack import webhook_pool_command
from tests.bench.client import http_client, upload_ours
from tests.bench.noop import noop
from tests.bench.results import Figure, figure, median, percentile
from tests.bench.stack import Bench, MiB
from tests.support.client import data_of, graphql
from tests.support.processes import Worker, wait_until
from tests.support.receiver import Receiver

DELIVERIES = 40
HANGING_UPLOADS = 10
HANGING_SIZE = 8 * MiB
ROUNDS = 3
ENV = {"WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true", "WEBHOOK_TIMEOUT_SECONDS": "10"}
CREATE = "mutation($url: String!) { createWebhook(url: $url) { id } }"
DELETE = "mutation($id: ID!) { deleteWebhook(id: $id) }"


def run_delivery(bench: Bench) -> list[Figure]:
    from backend.uploads.models import FileUpload

    receiver = Receiver().start()
    try:
        with bench.stack(env=ENV, workers=1) as stack:
            stack.workers.append(
                Worker(env=stack.env, log=stack.root / "webhooks.log", command=webhook_pool_command(1)).start()
            )
            endpoint = data_of(graphql(stack.url, CREATE, {"url": receiver.url}, bench.headers))["createWebhook"]
            path = bench.file(1024)
            latencies = []
            with http_client() as client:
                for index in range(DELIVERIES + 1):  # the first warms the server and the workers up
                    upload = upload_ours(client, stack.url, path, headers=bench.headers)[1]
                    arrived = receiver.wait_for(index + 1, timeout=60)[-1].at
                    completed = FileUpload.objects.get(id=upload["id"]).completed_at
                    if index:
                        latencies.append((arrived - completed.timestamp()) * 1000)
            baseline = _noop_latencies(stack.env["REDIS_URL"], DELIVERIES)
            data_of(graphql(stack.url, DELETE, {"id": endpoint["id"]}, bench.headers))
    finally:
        receiver.stop()
    return [
        figure(
            "webhook_delivery_p99",
            ours=percentile(latencies, 99),
            baseline=percentile(baseline, 99),
            unit="ms",
            goal="<= 1000 ms",
            check=lambda f: f.ours <= 1000,
            note=(
                f"COMPLETED -> receiver 2xx, {DELIVERIES} uploads in turn, 1 webhook worker; p50 "
                f"{median(latencies):.0f} ms; baseline: no-op job on the webhooks queue, enqueue -> end"
            ),
        )
    ]


def _noop_latencies(redis_url: str, count: int) -> list[float]:
    with redis.Redis.from_url(redis_url) as connection:
        queue = Queue("webhooks", connection=connection)
        latencies = []
        for _ in range(count):
            enqueued = time.time()
            job = queue.enqueue(noop)
            wait_until(
                lambda job=job: Job.fetch(job.id, connection=connection).get_status() == JobStatus.FINISHED,
                timeout=30,
                interval=0.005,
                what="a no-op job to finish",
            )
            ended = Job.fetch(job.id, connection=connection).ended_at
            assert ended is not None
            latencies.append((ended.replace(tzinfo=UTC).timestamp() - enqueued) * 1000)
    return latencies


def run_hanging(bench: Bench) -> list[Figure]:
    receiver = Receiver(script=["hang"], hang_seconds=30).start()
    path = bench.file(HANGING_SIZE)
    hanging: list[float] = []
    quiet: list[float] = []
    try:
        with bench.stack(env=ENV, workers=2) as stack:
            stack.workers.append(
                Worker(env=stack.env, log=stack.root / "webhooks.log", command=webhook_pool_command(2)).start()
            )
            with http_client() as client:  # warm-up
                upload_ours(client, stack.url, bench.file(1024), headers=bench.headers)
            for _ in range(ROUNDS):
                quiet.append(_throughput(bench, stack.url, path))
                endpoint = data_of(graphql(stack.url, CREATE, {"url": receiver.url}, bench.headers))["createWebhook"]
                hanging.append(_throughput(bench, stack.url, path))
                data_of(graphql(stack.url, DELETE, {"id": endpoint["id"]}, bench.headers))
            held = len(receiver.received)
    finally:
        receiver.stop()
    return [
        figure(
            "webhook_hanging_throughput",
            ours=median(hanging),
            baseline=median(quiet),
            unit="MiB/s",
            goal="ratio >= 0.95",
            check=lambda f: f.ratio is not None and f.ratio >= 0.95,
            note=(
                f"{HANGING_UPLOADS} x {HANGING_SIZE // MiB} MiB, 2 transfer workers, receiver hanging on every delivery"
                f" ({held} deliveries held) vs no webhook; medians of {ROUNDS} alternating rounds"
            ),
        )
    ]


def _throughput(bench: Bench, url: str, path: object) -> float:
    from backend.uploads.models import FileUpload, UploadStatus

    started = time.perf_counter()
    with http_client() as client:
        ids = [str(upload_ours(client, url, path, headers=bench.headers)[1]["id"]) for _ in range(HANGING_UPLOADS)]

    def finished() -> bool:
        return FileUpload.objects.filter(id__in=ids, status=UploadStatus.COMPLETED).count() == len(ids)

    wait_until(finished, timeout=300, interval=0.02, what="the uploads to complete")
    elapsed = time.perf_counter() - started
    FileUpload.objects.filter(id__in=ids).delete()
    return HANGING_UPLOADS * HANGING_SIZE / MiB / elapsed
