from __future__ import annotations

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "backend.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from backend.uploads.signals import upload_finished
        from backend.webhooks.services import webhook_deliveries_record

        # Inside the transaction of the move to COMPLETED/FAILED/CANCELLED: the deliveries are
        # committed with it, and queued only once it commits.
        upload_finished.connect(webhook_deliveries_record, dispatch_uid="webhooks-deliveries")
