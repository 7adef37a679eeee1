"""uploadFile answer time (request sent → answer) against a bare Django view on the same server.

The figure is the time the client waits; it must not grow with the transfer to the bucket, so
the service is run without workers here (their copy would compete with the next request for the
two cores and the disk) and, in `delayed`, with a worker whose transfer is slowed to >= 10 s
against the same answer from a stack whose worker has no delay. Before each delayed request the
plain stack's last transfer is let finish, so each timed request runs beside a sleeping worker
(delayed) or an idle one (plain), never beside the other stack's transfer. Runs alternate ours /
baseline; the figure is the median.
"""

from __future__ import annotations

from tests.bench.client import http_client, upload_bare, upload_ours
from tests.bench.results import Figure, figure, median
from tests.bench.stack import Bench, MiB
from tests.support.processes import wait_until

# size -> rounds (each round is one upload to ours and one to the bare view)
SIZES = {1 * MiB: 15, 64 * MiB: 5, 512 * MiB: 3}


def run(bench: Bench) -> list[Figure]:
    figures = []
    with bench.stack(workers=0) as stack, http_client() as client:
        for size, rounds in SIZES.items():
            path = bench.file(size)
            # One warm-up each: imports, connections, first-request work.
            upload_ours(client, stack.url, path, headers=bench.headers)
            upload_bare(client, stack.url, path)
            ours, bare = [], []
            for _ in range(rounds):
                ours.append(upload_ours(client, stack.url, path, headers=bench.headers)[0])
                bare.append(upload_bare(client, stack.url, path))
                bench.clear_bare()
                bench.clear_staging()
            label = f"{size // MiB}MiB"
            o, b = median(ours) * 1000, median(bare) * 1000
            if size <= MiB:
                figures.append(
                    figure(
                        f"upload_answer_{label}",
                        ours=o,
                        baseline=b,
                        unit="ms",
                        goal="<= baseline + 20 ms",
                        check=lambda f: f.ours - (f.baseline or 0) <= 20,
                        note=f"{rounds} rounds, no workers",
                    )
                )
            else:
                figures.append(
                    figure(
                        f"upload_answer_{label}",
                        ours=o,
                        baseline=b,
                        unit="ms",
                        goal="ratio <= 1.10",
                        check=lambda f: (f.ratio or 0) <= 1.10,
                        note=f"{rounds} rounds, no workers",
                    )
                )
    return figures


# 16 parts of 1 MiB, 4 at a time, 2.6 s before each: a transfer of about 10 s per upload.
DELAY_ENV = {"UPLOAD_PART_SIZE": str(MiB), "UPLOAD_PART_CONCURRENCY": "4", "UPLOAD_PART_DELAY_MS": "2600"}
DELAY_SIZE = 16 * MiB
DELAY_ROUNDS = 5


def run_delayed(bench: Bench) -> list[Figure]:
    """Same answer with workers busy on >= 10 s transfers vs workers with no delay."""
    from backend.uploads.models import FileUpload, UploadStatus

    path = bench.file(DELAY_SIZE)
    plain_env = {k: v for k, v in DELAY_ENV.items() if k != "UPLOAD_PART_DELAY_MS"}
    with (
        bench.stack(env=DELAY_ENV, workers=1) as slow,
        bench.stack(env=plain_env, workers=1) as fast,
        http_client() as client,
    ):
        first = upload_ours(client, slow.url, path, headers=bench.headers)[1]["id"]
        previous = upload_ours(client, fast.url, path, headers=bench.headers)[1]["id"]
        delayed, plain = [], []
        for _ in range(DELAY_ROUNDS):
            # The plain stack's worker transfers the upload it was just given (a fork, 16 parts, 18
            # commits to the database every stack shares) in the ~100 ms after that answer: timed
            # then, the delayed request would be measured against that transfer, not the sleeping one.
            wait_until(
                lambda done=previous: FileUpload.objects.filter(id=done, status=UploadStatus.COMPLETED).exists(),
                timeout=60,
                what="the plain stack's last transfer",
            )
            delayed.append(upload_ours(client, slow.url, path, headers=bench.headers)[0])
            took, answer = upload_ours(client, fast.url, path, headers=bench.headers)
            plain.append(took)
            previous = answer["id"]
        # Prove the premise: the first delayed transfer (queued behind nothing) took >= 10 s.
        row = wait_until(
            lambda: FileUpload.objects.filter(id=first, status=UploadStatus.COMPLETED).first(),
            timeout=120,
            what="the first delayed transfer",
        )
        took = (row.completed_at - row.created_at).total_seconds()
    return [
        figure(
            "upload_answer_delayed_16MiB",
            ours=median(delayed) * 1000,
            baseline=median(plain) * 1000,
            unit="ms",
            goal="ratio <= 1.10",
            check=lambda f: (f.ratio or 0) <= 1.10,
            note=f"{DELAY_ROUNDS} rounds; the first delayed upload took {took:.1f} s from created to COMPLETED",
        )
    ]
