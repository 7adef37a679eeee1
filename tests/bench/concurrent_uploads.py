"""50 concurrent 10 MiB uploads: one server, two workers, every request in flight at once.

Limits are raised for the run (UPLOAD_MAX_ACTIVE_PER_USER in the bench environment), so any
refusal is an error. Figures: errors (requests not answered with an upload, uploads not
COMPLETED), the p95 of request sent → answer, and the end-to-end throughput: the bytes of all
uploads over the time from the first request to the last row COMPLETED. No baseline: the goal is
no errors; the rest is reported.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.bench.client import http_client, upload_ours
from tests.bench.results import Figure, figure, median, percentile
from tests.bench.stack import Bench, MiB
from tests.support.processes import wait_until

UPLOADS = 50
SIZE = 10 * MiB
WORKERS = 2


def run(bench: Bench) -> list[Figure]:
    from backend.uploads.models import FileUpload, UploadStatus

    path = bench.file(SIZE)
    with bench.stack(workers=WORKERS) as stack:
        with http_client() as client:  # warm-up: imports in the server and the workers
            upload_ours(client, stack.url, bench.file(1024), headers=bench.headers)

        def send(_: int) -> tuple[float, str | None, str]:
            try:
                with http_client() as client:
                    elapsed, upload = upload_ours(client, stack.url, path, headers=bench.headers)
            except Exception as exc:  # counted: the figure is how many of these happen
                return 0.0, None, f"{type(exc).__name__}: {exc}"[:200]
            return elapsed, str(upload["id"]), ""

        started = time.perf_counter()
        with ThreadPoolExecutor(UPLOADS) as pool:
            answers = list(pool.map(send, range(UPLOADS)))
        ids = [upload_id for _, upload_id, _ in answers if upload_id]
        failures = [error for _, _, error in answers if error]

        def finished() -> bool:
            done = FileUpload.objects.filter(id__in=ids, status__in=[UploadStatus.COMPLETED, UploadStatus.FAILED])
            return done.count() == len(ids)

        wait_until(finished, timeout=600, interval=0.05, what="the concurrent uploads to finish")
        total = time.perf_counter() - started
        failed = list(
            FileUpload.objects.filter(id__in=ids).exclude(status=UploadStatus.COMPLETED).values_list("error", flat=True)
        )
    times = [elapsed * 1000 for elapsed, upload_id, _ in answers if upload_id]
    errors = len(failures) + len(failed)
    note = f"{UPLOADS} x {SIZE // MiB} MiB at once, {WORKERS} workers; errors {errors}"
    if failures or failed:
        note += f" (first: {(failures or failed)[0]})"
    return [
        figure(
            "concurrent_50x10MiB_answer_p95",
            ours=percentile(times, 95) if times else 0.0,
            baseline=None,
            unit="ms",
            goal="no errors",
            check=lambda f: errors == 0,
            note=f"{note}; answer p50 {median(times) if times else 0:.0f} ms",
        ),
        figure(
            "concurrent_50x10MiB_throughput",
            ours=len(ids) * SIZE / MiB / total,
            baseline=None,
            unit="MiB/s",
            goal="no errors",
            check=lambda f: errors == 0,
            note="bytes of every upload over first request -> last COMPLETED",
        ),
    ]
