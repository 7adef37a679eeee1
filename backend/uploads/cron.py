"""Periodic jobs, run by `manage.py rqcron backend.uploads.cron` (started by `make run`)."""

from __future__ import annotations

from django.conf import settings
from rq import cron

from backend.uploads.jobs import uploads_reap

cron.register(uploads_reap, queue_name="default", interval=max(5, int(settings.UPLOAD_STALE_AFTER_SECONDS // 4)))
