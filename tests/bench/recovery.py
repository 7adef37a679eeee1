"""Crash recovery with the default settings: how long a dead worker's upload waits.

The stack is `make run`'s shape: a server, `rqworker-pool` with two UploadWorkers (it respawns a
worker that dies) and the cron scheduler (the reaper), the S3 backend on a moto server, and the
defaults of UPLOAD_HEARTBEAT_SECONDS, UPLOAD_STALE_AFTER_SECONDS and the reaper's interval (the
bench environment sets none of them). Each round uploads 256 MiB and, once a few parts are
confirmed, kills the process running its transfer:

- `recovery_after_sigkill_s`: SIGKILL of the worker and its work horse together (a lost machine);
  p50 and max over KILLS rounds. Nothing is left to notice but the reaper.
- `recovery_after_horse_kill_s`: SIGKILL of the work horse alone; its worker lives and sees it die.

Timed from the kill to the transfer running again: the upload claimed by a new run (UPLOADING
with `attempts` one higher), polled every 20 ms. Each round then waits for COMPLETED, and checks
that the upload never went FAILED and its confirmed parts count never went down. No baseline: the
goals are the issue's (15 s and 5 s); the figure before this work was 73.8 s (stale after 60 s,
reaper every 15 s).
"""

from __future__ import annotations

import contextlib
import time
import uuid

import psutil
import redis
from rq import Worker as RQWorker

from tests.bench.client import http_client, upload_ours
from tests.bench.results import Figure, figure, median
from tests.bench.stack import Bench, MiB
from tests.support.moto import moto_start, s3_env
from tests.support.processes import WORKER_POOL, Cron, Worker, wait_until

SIZE = 256 * MiB
KILLS = 5
HORSE_KILLS = 3
SIGKILL_GOAL_S = 15.0
HORSE_GOAL_S = 5.0


def _transferring_pid(redis_url: str, job_id: str) -> int:
    """The pid of the RQ worker running `job_id` (a worker of the pool), once it has registered it."""
    with redis.Redis.from_url(redis_url) as connection:
        for registered in RQWorker.all(connection=connection):
            if registered.get_current_job_id() == job_id and registered.pid:
                return int(registered.pid)
    return 0


def _kill(pid: int, *, horse_only: bool) -> float:
    """SIGKILL the worker `pid` and its work horse, or the horse alone; the time of the kill."""
    worker = psutil.Process(pid)
    horses = worker.children()
    victims = horses if horse_only else [worker, *horses]
    if not victims:
        raise RuntimeError(f"worker {pid} has no work horse to kill")
    killed_at = time.monotonic()
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    # No wait for the victims to be reaped here: the clock runs from the kill, and the caller polls.
    return killed_at


def _round(bench: Bench, stack_url: str, redis_url: str, *, horse_only: bool) -> float:
    from backend.uploads.models import FileUpload, UploadStatus

    with http_client() as client:
        _, answer = upload_ours(client, stack_url, bench.file(SIZE), headers=bench.headers)
    upload_id = uuid.UUID(answer["id"])

    def running() -> FileUpload | None:
        row = FileUpload.objects.get(id=upload_id)
        return row if row.status == UploadStatus.UPLOADING and row.parts_uploaded >= 3 else None

    before = wait_until(running, timeout=120, interval=0.02, what="the transfer under way")
    pid = wait_until(lambda: _transferring_pid(redis_url, before.job_id), timeout=30, what="the transferring worker")
    killed_at = _kill(pid, horse_only=horse_only)
    confirmed = FileUpload.objects.get(id=upload_id).parts_uploaded

    def running_again() -> bool:
        row = FileUpload.objects.get(id=upload_id)
        if row.status == UploadStatus.FAILED:
            raise RuntimeError(f"the killed upload went FAILED: {row.error}")
        if row.parts_uploaded < confirmed:
            raise RuntimeError(f"confirmed parts went from {confirmed} down to {row.parts_uploaded}")
        return row.attempts > before.attempts and row.status in (UploadStatus.UPLOADING, UploadStatus.COMPLETED)

    wait_until(running_again, timeout=120, interval=0.02, what="the transfer running again")
    recovered = time.monotonic() - killed_at
    wait_until(
        lambda: FileUpload.objects.get(id=upload_id).status == UploadStatus.COMPLETED,
        timeout=300,
        what="the resumed upload to complete",
    )
    return recovered


def run(bench: Bench) -> list[Figure]:
    moto = moto_start(bench.root, "moto-recovery")
    try:
        bucket = f"bench-recovery-{uuid.uuid4().hex[:8]}"
        moto.client().create_bucket(Bucket=bucket)
        with bench.stack(env=s3_env(moto, bucket), workers=0) as stack:
            pool = Worker(
                env=stack.env, log=stack.root / "pool.log", command=[*WORKER_POOL, "--num-workers", "2"]
            ).start()
            cron = Cron(env=stack.env, log=stack.root / "cron.log").start()
            try:
                redis_url = stack.env["REDIS_URL"]
                sigkills = [_round(bench, stack.url, redis_url, horse_only=False) for _ in range(KILLS)]
                horse_kills = [_round(bench, stack.url, redis_url, horse_only=True) for _ in range(HORSE_KILLS)]
            finally:
                cron.stop()
                pool.stop()
    finally:
        moto.stop()
    kills = ", ".join(f"{s:.1f}" for s in sigkills)
    horses = ", ".join(f"{s:.1f}" for s in horse_kills)
    return [
        figure(
            "recovery_after_sigkill_s",
            ours=median(sigkills),
            baseline=None,
            unit="s",
            goal=f"p50 <= {SIGKILL_GOAL_S:g} s",
            check=lambda f: f.ours <= SIGKILL_GOAL_S,
            note=f"SIGKILL of worker and horse mid-transfer (256 MiB to S3), {KILLS} kills: {kills} s",
        ),
        figure(
            "recovery_after_sigkill_s_max",
            ours=max(sigkills),
            baseline=None,
            unit="s",
            goal=f"max <= {SIGKILL_GOAL_S:g} s",
            check=lambda f: f.ours <= SIGKILL_GOAL_S,
        ),
        figure(
            "recovery_after_horse_kill_s",
            ours=max(horse_kills),
            baseline=None,
            unit="s",
            goal=f"max <= {HORSE_GOAL_S:g} s",
            check=lambda f: f.ours <= HORSE_GOAL_S,
            note=f"SIGKILL of the work horse alone, its worker alive, {HORSE_KILLS} kills: {horses} s",
        ),
    ]
