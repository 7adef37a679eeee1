"""The RQ processes: the transfer worker and the periodic-jobs scheduler.

RQ's warm shutdown (SIGTERM) waits for the whole job, and its work horse dies on SIGTERM with no
clean-up. Here the worker passes SIGTERM on to the horse, whose handler only sets a flag: the
transfer starts no new part, lets the parts in flight finish and enter the ledger, and gives the
upload back to the queue, where another worker resumes it from the confirmed parts.

The worker closes its database connections before each fork: a work horse must never use (or,
closing it, terminate) a connection that belongs to its parent.

Both processes outlive a Redis outage. RQ's worker retries only its dequeue: a connection error
in any other bookkeeping write (its heartbeat while a horse transfers, its state) ends the worker,
and RQ's cron scheduler stops on the first one. Here that bookkeeping is skipped while Redis is
away (it only feeds RQ's registries and dashboards; the upload row is the truth), the horse goes
on transferring, and both carry on once Redis answers again. Jobs a Redis without persistence lost
are queued again by the reaper (`services.upload_requeue_lost`).

RQ forks a fresh work horse for every job, and whatever the worker has not imported each horse
imports again: the channel layer (channels_redis, msgpack, cryptography), the storage backend and
the ORM's SQL compiler cost tens of milliseconds per job, more than a small file's whole transfer. The worker imports
them once, before its first fork (`transfer_modules_preload`), which opens no connection. The one
socket a horse inherits is the Redis connection of the publisher kept for small jobs (below); a
horse never uses it (it starts a publisher of its own per job).

A small file's transfer (one plain put of at most UPLOAD_IN_PROCESS_MAX_BYTES, flagged so when
queued: `jobqueue.job_runs_in_process`) runs in the worker process itself, as RQ's SimpleWorker
runs every job: a fork, a fresh interpreter state and new connections cost more than that whole
transfer. The trade-off (README, "Small files in the worker process"): a crash of such a job
takes the worker down with it, and its upload waits for the reaper instead of being given back
at once by a surviving parent.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from importlib import import_module
from types import FrameType
from typing import Any, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils.module_loading import import_string
from django_rq.cron import DjangoCronScheduler
from rq import Queue, Worker
from rq.cron import CronJob
from rq.job import Job
from rq.worker import WorkerStatus

from backend.redis_errors import REDIS_UNREACHABLE, redis_unless_unreachable
from backend.uploads import jobs
from backend.uploads.jobqueue import PIPELINE_JOB, TRANSFER_JOB, job_runs_in_process
from backend.uploads.progress import ProgressPublisher, progress_publisher, progress_publisher_start
from backend.uploads.transfer import stop_requested

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The periodic jobs (reaper, sweep) have a queue of their own that every UploadWorker drains
# before the transfers, so a backlog of transfers never delays the reaper behind it.
MAINTENANCE_QUEUE = "maintenance"

# How long the scheduler waits before trying Redis again after a failed round.
CRON_RETRY_SECONDS = 2.0


def _unless_redis_away(what: str, call: Callable[[], T], default: T) -> T:
    """Run a bookkeeping call; while Redis is unreachable, log it and answer `default`."""
    return redis_unless_unreachable(what, call, default, logger=logger)


def transfer_modules_preload() -> None:
    """Import (only import: no client, no connection) what every transfer job needs."""
    import_module("backend.uploads.jobs")
    # The ORM imports its SQL compiler, and builds the database backend's wrapper, at the first
    # query: each horse did both again (about 8 ms of a small upload's job, in py-spy). The wrapper
    # opens no connection until a query asks for one.
    import_module("django.db.models.sql.compiler")
    connections[DEFAULT_DB_ALIAS].ops.compiler("SQLCompiler")
    backend = "s3" if settings.STORAGE_BACKEND == "s3" else "local"
    import_module(f"backend.uploads.storage.{backend}")
    for layer in settings.CHANNEL_LAYERS.values():
        import_string(str(layer["BACKEND"]))


class UploadWorker(Worker):
    # Whether this worker takes the periodic jobs too (before anything else); the webhook worker does not.
    drains_maintenance = True
    # While Redis is away the dequeue is retried at most every 2 s (RQ's default backs off to 60 s,
    # leaving a worker idle for up to a minute after Redis is back).
    max_connection_wait_time = 2.0

    def __init__(self, queues: Any, *args: Any, **kwargs: Any) -> None:
        listed: list[Any] = [queues] if isinstance(queues, (str, Queue)) else list(queues)
        if self.drains_maintenance and MAINTENANCE_QUEUE not in {getattr(q, "name", q) for q in listed}:
            listed.insert(0, MAINTENANCE_QUEUE)  # first: RQ dequeues from its queues in order
        super().__init__(listed, *args, **kwargs)
        self.modules_preload()

    def modules_preload(self) -> None:
        """Import once, before the first fork, what every job of this worker needs."""
        transfer_modules_preload()

    # Whether a job runs in this process now (`execute_in_process`), not in a horse.
    _in_process = False
    # The progress publisher of the jobs run in this process, kept open between them.
    _publisher: ProgressPublisher | None = None

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        connections.close_all()  # the horse opens its own; it must not inherit (and close) ours
        super().fork_work_horse(job, queue)

    def execute_in_process(self, job: Job, queue: Queue) -> None:
        """Run `job` here, without a work horse, as RQ's SimpleWorker does: the same bookkeeping
        (`perform_job`: started, finished or failed, its result) and the same job timeout (RQ's
        death penalty is a SIGALRM in this process, as it would be in the horse)."""
        self._in_process = True
        try:
            execution = self.prepare_execution(job)
            if self._publisher is None:
                self._publisher = progress_publisher_start()
            with progress_publisher(self._publisher):
                self.perform_job(job, queue, execution)
        finally:
            self._in_process = False
            # As a horse's would, the job's connections end with it: an idle worker holds none,
            # and the next horse inherits none.
            connections.close_all()
        self.set_state(WorkerStatus.IDLE)

    # --- graceful stop -------------------------------------------------------------------------

    def setup_work_horse_signals(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _horse_stop)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        if self._in_process:
            # RQ's SimpleWorker's: nothing refreshes the job's heartbeat while it runs here, so it
            # must last the whole job timeout (a horse's is refreshed by its watching parent).
            return int(job.timeout or Queue.DEFAULT_TIMEOUT) + 60
        return int(super().get_heartbeat_ttl(job, working_time))

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()
        if self._in_process:
            # The same flag the horse's handler sets: the transfer starts no new part.
            stop_requested.set()
        elif self.horse_pid:
            self.log.info(
                "Worker %s: asking the transfer in horse %s to stop after its parts", self.name, self.horse_pid
            )
            self.kill_horse(sig=signal.SIGTERM)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        # RQ's kill_horse signals the horse's process group; with no horse (a job running in
        # this process) that group would be the worker's own.
        if self.horse_pid:
            super().kill_horse(sig)

    # --- a work horse that dies ----------------------------------------------------------------

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        """RQ calls this when the horse ended without finishing its job (SIGKILL, out of memory, a
        crash); RQ then marks the job failed. The upload it was transferring goes back to the queue
        now (`jobs.upload_transfer_orphaned`), instead of waiting out UPLOAD_STALE_AFTER_SECONDS
        for the reaper: this worker saw its child die, so nothing is left to wait for."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        orphaned = {TRANSFER_JOB: jobs.upload_transfer_orphaned, PIPELINE_JOB: jobs.upload_pipeline_orphaned}
        if job.func_name not in orphaned or not job.args:
            return
        if ret_val is not None and os.WIFSIGNALED(ret_val):
            cause = f"killed by signal {os.WTERMSIG(ret_val)}"
        else:
            cause = f"exit status {os.waitstatus_to_exitcode(ret_val) if ret_val is not None else 'unknown'}"
        try:
            orphaned[job.func_name](job_id=job.id, upload_id=str(job.args[0]), cause=cause)
        except Exception:
            self.log.warning("Worker %s: could not give back job %s; the reaper will", self.name, job.id, exc_info=True)
        finally:
            connections.close_all()  # the next horse must not inherit this connection

    # --- riding out a Redis outage -------------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        _unless_redis_away("worker heartbeat", lambda: super(UploadWorker, self).heartbeat(timeout, pipeline), None)

    def maintain_heartbeats(self, job: Job, execution: Any) -> None:
        # Called while the horse transfers: a failure here must not abandon the horse.
        _unless_redis_away("job heartbeat", lambda: super(UploadWorker, self).maintain_heartbeats(job, execution), None)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        _unless_redis_away("worker state", lambda: super(UploadWorker, self).set_state(state, pipeline), None)

    def check_for_suspension(self, burst: bool) -> None:
        _unless_redis_away("suspension check", lambda: super(UploadWorker, self).check_for_suspension(burst), None)

    def run_maintenance_tasks(self) -> None:
        _unless_redis_away("registry maintenance", super().run_maintenance_tasks, None)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run `job` in a horse (or here: `execute_in_process`); RQ's record of it may be lost to an
        outage, the upload row is not.

        A connection error before the fork leaves the job unstarted (the reaper queues its upload
        again); after the horse ended, only RQ's record of the result is lost.
        """
        run = self.execute_in_process if job_runs_in_process(job) else super().execute_job
        _unless_redis_away(f"bookkeeping of job {job.id}", lambda: run(job, queue), None)

    def teardown(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        _unless_redis_away("worker deregistration", super().teardown, None)


def _horse_stop(signum: int, frame: FrameType | None) -> None:
    stop_requested.set()


class UploadCronScheduler(DjangoCronScheduler):
    """RQ's cron scheduler, carrying on through a Redis outage instead of exiting.

    A round that cannot reach Redis enqueues nothing (a due job stays due and is enqueued as soon
    as Redis answers) and the next round comes CRON_RETRY_SECONDS later.
    """

    _redis_away = False

    def enqueue_jobs(self) -> list[CronJob]:
        try:
            enqueued = super().enqueue_jobs()
        except REDIS_UNREACHABLE as exc:
            self._redis_away = True
            logger.warning("cron: Redis unreachable, due jobs wait for it: %s", exc)
            return []
        self._redis_away = False
        return enqueued

    def save(self, pipeline: Any = None) -> None:
        _unless_redis_away("cron scheduler state", lambda: super(UploadCronScheduler, self).save(pipeline), None)

    def register_birth(self) -> None:
        # Started while Redis is away: the first heartbeat that reaches it registers the scheduler.
        _unless_redis_away("cron registration", super().register_birth, None)

    def heartbeat(self) -> None:
        _unless_redis_away("cron heartbeat", super().heartbeat, None)

    def register_death(self, pipeline: Any = None) -> None:
        _unless_redis_away(
            "cron deregistration", lambda: super(UploadCronScheduler, self).register_death(pipeline), None
        )

    def calculate_sleep_interval(self) -> float:
        # While Redis is away RQ's interval may be its 60 s default (a job that never ran has no
        # next time): try again soon instead, the due jobs are still due.
        return CRON_RETRY_SECONDS if self._redis_away else float(super().calculate_sleep_interval())
