"""The RQ worker class for transfers: a warm shutdown stops a transfer between parts.

RQ's warm shutdown (SIGTERM) waits for the whole job, and its work horse dies on SIGTERM with no
clean-up. Here the worker passes SIGTERM on to the horse, whose handler only sets a flag: the
transfer starts no new part, lets the parts in flight finish and enter the ledger, and gives the
upload back to the queue, where another worker resumes it from the confirmed parts.

The worker closes its database connections before each fork: a work horse must never use (or,
closing it, terminate) a connection that belongs to its parent.
"""

from __future__ import annotations

import signal
from types import FrameType

from django.db import connections
from rq import Queue, Worker
from rq.job import Job

from backend.uploads.transfer import stop_requested


class UploadWorker(Worker):
    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        connections.close_all()
        super().fork_work_horse(job, queue)

    def setup_work_horse_signals(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _horse_stop)

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()
        if self.horse_pid:
            self.log.info(
                "Worker %s: asking the transfer in horse %s to stop after its parts", self.name, self.horse_pid
            )
            self.kill_horse(sig=signal.SIGTERM)


def _horse_stop(signum: int, frame: FrameType | None) -> None:
    stop_requested.set()
