"""Periodic jobs, run by `manage.py rqcron backend.uploads.cron` (started by `make run`).

Each runs once when the scheduler starts, then every interval. The reaper's interval follows
UPLOAD_STALE_AFTER_SECONDS so a silent transfer is picked up soon after it goes stale; the sweep's
follows UPLOAD_STAGING_TTL (a quarter of it, between a minute and ten) so expired bytes do not
linger long past their time. Both go to the maintenance queue, which workers drain before the
transfers. `rqcron` here is this project's command (`UploadCronScheduler`, which outlives a Redis
outage), not django-rq's.
"""

from __future__ import annotations

from django.conf import settings
from rq import cron

from backend.uploads.jobs import uploads_reap, uploads_sweep
from backend.uploads.worker import MAINTENANCE_QUEUE
from backend.webhooks.jobs import webhooks_requeue

# Every fifth of the stale window (2 s with the defaults, at least 1 s): a silent transfer is picked
# up at most that long after it goes stale.
cron.register(
    uploads_reap, queue_name=MAINTENANCE_QUEUE, interval=max(1, round(settings.UPLOAD_STALE_AFTER_SECONDS / 5))
)
# Webhook deliveries whose queued attempt was lost (Redis, a worker): queued again.
cron.register(webhooks_requeue, queue_name=MAINTENANCE_QUEUE, interval=30)
cron.register(
    uploads_sweep,
    queue_name=MAINTENANCE_QUEUE,
    interval=min(600, max(60, int(settings.UPLOAD_STAGING_TTL // 4))),
    job_timeout=3600,
)
