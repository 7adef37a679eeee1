"""`manage.py rqcron CONFIG`: django-rq's command, running the scheduler that outlives a Redis outage.

It takes the place of django-rq's `rqcron` (this app comes before django_rq in INSTALLED_APPS, and
the first app wins), so `make run`, deployments and the README keep one command line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django_rq.management.commands import rqcron

from backend.uploads.worker import UploadCronScheduler


class Command(rqcron.Command):
    help = "Starts the RQ cron scheduler (carrying on through Redis outages)"

    def handle(self, *args: Any, **options: Any) -> None:
        scheduler = UploadCronScheduler(logging_level=getattr(logging, options["logging_level"]))
        self.stdout.write(f"Loading cron configuration from {options['config_path']}")
        scheduler.load_config_from_file(options["config_path"])
        self.stdout.write(self.style.SUCCESS(f"Starting cron scheduler with {len(scheduler.get_jobs())} jobs..."))
        try:
            scheduler.start()
        except KeyboardInterrupt:
            sys.exit(0)
