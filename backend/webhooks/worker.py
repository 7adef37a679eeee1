"""The webhook worker: an UploadWorker for the `webhooks` queue alone.

It rides out Redis outages and closes database connections before each fork like the transfer
workers, but drains neither the transfers nor the maintenance queue: a receiver that hangs for
the whole attempt time limit only ever holds a webhook worker.
"""

from __future__ import annotations

from importlib import import_module

from backend.uploads.worker import UploadWorker


class WebhookWorker(UploadWorker):
    drains_maintenance = False

    def modules_preload(self) -> None:
        import_module("backend.webhooks.jobs")
        import_module("standardwebhooks.webhooks")
        import_module("urllib3")
