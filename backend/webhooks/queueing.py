"""Putting delivery attempts on the `webhooks` queue: at once, or after a delay (RQ's scheduler).

The queue is drained only by webhook workers (`WebhookWorker`, `make run`'s `webhooks` process,
compose's `webhook-worker`), so a receiver that hangs for the whole time limit holds a webhook
worker, never a transfer. A delayed attempt goes through `Queue.enqueue_in`: the webhook workers run
RQ's scheduler (`rqworker-pool` starts it), which moves due jobs to the queue about every second.
If Redis cannot take a job, the delivery row still says it is owed, and `deliveries_requeue_overdue`
(a periodic job) queues it again.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import django_rq
from django.conf import settings

from backend.redis_errors import REDIS_UNREACHABLE

logger = logging.getLogger(__name__)

WEBHOOK_QUEUE = "webhooks"
# What RQ runs for one attempt, by dotted path (the queue never imports the jobs it queues).
DELIVERY_JOB = "backend.webhooks.jobs.webhook_deliver"


def delivery_enqueue(
    *, delivery_id: uuid.UUID, attempt: int, delay: float | None = None, redelivery: bool = False
) -> None:
    """Queue attempt `attempt` of a delivery, after `delay` seconds if given. Never raises for Redis."""
    job_id = f"webhook-{delivery_id}-{attempt}"
    if redelivery:
        job_id += f"-{uuid.uuid4().hex[:8]}"  # the lost job may still hold its id in RQ's registries
    options = {
        "job_id": job_id,
        # The attempt's own limit plus room for the bookkeeping; RQ kills a run that passes it.
        "job_timeout": int(settings.WEBHOOK_TIMEOUT_SECONDS) + 30,
        "result_ttl": 600,
        "failure_ttl": 86400,
    }
    try:
        queue = django_rq.get_queue(WEBHOOK_QUEUE)
        if delay:
            queue.enqueue_in(timedelta(seconds=delay), DELIVERY_JOB, str(delivery_id), **options)
        else:
            queue.enqueue(DELIVERY_JOB, str(delivery_id), **options)
    except REDIS_UNREACHABLE as exc:
        logger.warning("webhook delivery %s: Redis unreachable, the requeue sweep will queue it: %s", delivery_id, exc)
