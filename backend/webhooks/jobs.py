"""RQ jobs of the webhooks queue: one attempt of one delivery; and the periodic requeue of overdue ones."""

from __future__ import annotations

import uuid

from django.db import close_old_connections

from backend.webhooks import services

# A delivery due this long ago and still not attempted lost its job (Redis, a worker).
OVERDUE_SECONDS = 30.0


def webhook_deliver(delivery_id: str) -> None:
    """Make the next attempt of a delivery (a no-op if it is no longer owed)."""
    close_old_connections()  # a forked work horse must not share its parent's connections
    services.delivery_attempt(delivery_id=uuid.UUID(delivery_id))


def webhooks_requeue() -> None:
    close_old_connections()
    services.deliveries_requeue_overdue(overdue_seconds=OVERDUE_SECONDS)
