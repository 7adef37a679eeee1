"""Worker peak RSS while one 1 GiB upload is transferred, against its bound.

The bound is (UPLOAD_PART_CONCURRENCY + 1) x UPLOAD_PART_SIZE + 100 MiB: the parts in flight, one
being read, and the interpreter. The work horse RQ forks for the job is found as a child of the
worker and polled every 10 ms (psutil) until the row is COMPLETED; the figure is the highest RSS
seen in the worker or its horse.
"""

from __future__ import annotations

import threading

import psutil
from django.conf import settings

from tests.bench.client import http_client, upload_ours
from tests.bench.results import Figure, figure
from tests.bench.stack import Bench, MiB
from tests.support.processes import wait_until

SIZE = 1024 * MiB


def run(bench: Bench) -> list[Figure]:
    from backend.uploads.models import FileUpload, UploadStatus

    bound = ((settings.UPLOAD_PART_CONCURRENCY + 1) * settings.UPLOAD_PART_SIZE + 100 * MiB) / MiB
    with bench.stack(workers=1) as stack, http_client() as client:
        assert stack.workers[0].process is not None
        worker = psutil.Process(stack.workers[0].process.pid)
        peak = [0]
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.01):
                try:
                    for process in [worker, *worker.children(recursive=True)]:
                        peak[0] = max(peak[0], process.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            upload = upload_ours(client, stack.url, bench.file(SIZE), headers=bench.headers)[1]
            wait_until(
                lambda: FileUpload.objects.filter(id=upload["id"], status=UploadStatus.COMPLETED).exists(),
                timeout=300,
                what="the 1 GiB transfer",
            )
        finally:
            done.set()
            poller.join()
    return [
        figure(
            "worker_peak_rss_1GiB",
            ours=peak[0] / MiB,
            baseline=bound,
            unit="MiB",
            goal="below baseline (bound)",
            check=lambda f: f.ours < (f.baseline or 0),
            note=f"bound ({settings.UPLOAD_PART_CONCURRENCY} + 1) x {settings.UPLOAD_PART_SIZE // MiB} MiB + 100 MiB; "
            "psutil poll",
        )
    ]
