"""Small uploads end to end: 1 KiB files from the mutation to COMPLETED, 2 workers, per second.

Ours: COUNT uploads sent by 4 client threads sharing one HTTP client; the rate is COUNT over the time from the first
request to the last row COMPLETED. Baseline: COUNT no-op RQ jobs enqueued on the same Redis
database and run by the same two workers, COUNT over enqueue to the last finished. Alternating
rounds, medians.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis
from rq import Queue
from rq.job import Job, JobStatus

from tests.bench.client import http_client, upload_ours
from tests.bench.noop import noop
from tests.bench.results import Figure, figure, median
from tests.bench.stack import Bench
from tests.support.processes import wait_until

COUNT = 60
ROUNDS = 2
CLIENTS = 4


def _ours_round(bench: Bench, url: str) -> float:
    from backend.uploads.models import FileUpload, UploadStatus

    path = bench.file(1024)

    def send(client: httpx.Client) -> str:
        return str(upload_ours(client, url, path, headers=bench.headers)[1]["id"])

    # One HTTP client (its connection pool) for the threads, as a program sending many files has:
    # a client per upload cost the benchmark itself 25 ms of CPU each (its TLS context), on the
    # two cores the server and the workers share.
    with http_client() as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            ids = list(pool.map(send, [client] * COUNT))
    wait_until(
        lambda: FileUpload.objects.filter(id__in=ids, status=UploadStatus.COMPLETED).count() == COUNT,
        timeout=300,
        interval=0.01,
        what="small uploads COMPLETED",
    )
    return COUNT / (time.perf_counter() - started)


def _rq_round(redis_url: str) -> float:
    connection = redis.Redis.from_url(redis_url)
    queue = Queue("default", connection=connection)
    started = time.perf_counter()
    jobs = [queue.enqueue(noop) for _ in range(COUNT)]
    ids = [job.id for job in jobs]

    def finished() -> bool:
        fetched = Job.fetch_many(ids, connection=connection)
        return all(job is not None and job.get_status() == JobStatus.FINISHED for job in fetched)

    wait_until(finished, timeout=300, interval=0.01, what="no-op jobs finished")
    elapsed = time.perf_counter() - started
    connection.close()
    return COUNT / elapsed


def run(bench: Bench) -> list[Figure]:
    ours, base = [], []
    with bench.stack(workers=2) as stack:
        with http_client() as client:  # warm-up: imports in server and workers
            upload_ours(client, stack.url, bench.file(1024), headers=bench.headers)
        for _ in range(ROUNDS):
            base.append(_rq_round(stack.env["REDIS_URL"]))
            ours.append(_ours_round(bench, stack.url))
    return [
        figure(
            "small_uploads_1KiB",
            ours=median(ours),
            baseline=median(base),
            unit="per s",
            goal="ratio >= 0.8",
            check=lambda f: (f.ratio or 0) >= 0.8,
            note=f"{COUNT} uploads x {ROUNDS} rounds, {CLIENTS} client threads; baseline: no-op RQ jobs, same workers",
        )
    ]
