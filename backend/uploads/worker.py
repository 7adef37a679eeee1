"""The RQ worker class for transfers: a warm shutdown stops a transfer between parts.

RQ's warm shutdown (SIGTERM) waits for the whole job, and its work horse dies on SIGTERM with no
clean-up. Here the worker passes SIGTERM on to the horse, whose handler only sets a flag: the
transfer starts no new part, lets the parts in flight finish and enter the ledger, and gives the
upload back to the queue, where another worker resumes it from the confirmed parts.

RQ forks a fresh work horse for every job, and whatever the worker has not imported each horse
imports again: the channel layer (channels_redis, msgpack, cryptography) and the storage backend
cost tens of milliseconds per job, more than a small file's whole transfer. The worker imports
them once, before its first fork (`transfer_modules_preload`); it opens no connection, so the
horses share nothing but code.
"""

from __future__ import annotations

import signal
from importlib import import_module
from types import FrameType
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string
from rq import Worker

from backend.uploads.transfer import stop_requested


def transfer_modules_preload() -> None:
    """Import (only import: no client, no connection) what every transfer job needs."""
    import_module("backend.uploads.jobs")
    backend = "s3" if settings.STORAGE_BACKEND == "s3" else "local"
    import_module(f"backend.uploads.storage.{backend}")
    for layer in settings.CHANNEL_LAYERS.values():
        import_string(str(layer["BACKEND"]))


class UploadWorker(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        transfer_modules_preload()

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
