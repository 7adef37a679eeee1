"""Prometheus metrics for /metrics.

Counters that every worker process adds to live in Redis (one INCRBY each, shared by all
processes, surviving a worker's exit); gauges are read from the database and the queue at scrape
time. Losing a counter increment when Redis is briefly down costs a metric, never an upload.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import cache

import django_rq
import redis
from django.conf import settings
from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from backend.uploads.models import FileUpload, UploadStatus

logger = logging.getLogger(__name__)

_KEY = "uploads:metrics:"
COUNTERS = {
    "part_attempts": "Part uploads tried, first tries and retries",
    "part_failures": "Part attempts that failed (each one retried or, on the last attempt, failing the upload)",
    "bytes_transferred": "Bytes the bucket confirmed",
    "parts_confirmed": "Parts the bucket confirmed",
}


@cache
def _counters() -> redis.Redis:
    """A client of its own that fails at once: a part must not wait on Redis retries for a metric."""
    return redis.Redis.from_url(
        settings.REDIS_URL, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1, socket_timeout=1
    )


def metrics_count(name: str, amount: int = 1) -> None:
    """Add `amount` to the shared counter `name` (one of COUNTERS)."""
    try:
        _counters().incrby(_KEY + name, amount)
    except Exception:
        logger.debug("metrics counter %s not updated", name, exc_info=True)


class UploadCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        by_status = dict(FileUpload.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        uploads = GaugeMetricFamily("uploads", "Uploads by status", labels=["status"])
        for status in UploadStatus:
            uploads.add_metric([status.value], by_status.get(status.value, 0))
        yield uploads
        try:
            values = _counters().mget([_KEY + name for name in COUNTERS])
            depth = django_rq.get_queue("default", connection=_counters()).count
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            # Redis is away: the scrape still answers, without what only Redis knows.
            logger.warning("metrics: Redis unreachable; counters and queue depth left out")
            return
        for (name, description), value in zip(COUNTERS.items(), values, strict=True):
            yield CounterMetricFamily(f"uploads_{name}", description, value=int(value or 0))
        yield GaugeMetricFamily("uploads_queue_depth", "Jobs waiting in the queue", value=depth)
