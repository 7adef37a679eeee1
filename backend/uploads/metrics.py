"""Prometheus metrics for /metrics.

Counters that every worker process adds to live in Redis (one INCRBY each, shared by all
processes, surviving a worker's exit); gauges are read from the database and the queue at scrape
time. Losing a counter increment when Redis is briefly down costs a metric, never an upload.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import django_rq
from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.uploads.models import FileUpload, UploadStatus

logger = logging.getLogger(__name__)

_KEY = "uploads:metrics:"
COUNTERS = {
    "part_attempts": "Part uploads tried, first tries and retries",
    "part_failures": "Part attempts that failed (each one retried or, on the last attempt, failing the upload)",
    "bytes_transferred": "Bytes the bucket confirmed",
    "parts_confirmed": "Parts the bucket confirmed",
}


def metrics_count(name: str, amount: int = 1) -> None:
    """Add `amount` to the shared counter `name` (one of COUNTERS)."""
    try:
        django_rq.get_connection("default").incrby(_KEY + name, amount)
    except Exception:
        logger.debug("metrics counter %s not updated", name, exc_info=True)


class UploadCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        by_status = dict(FileUpload.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        uploads = GaugeMetricFamily("uploads", "Uploads by status", labels=["status"])
        for status in UploadStatus:
            uploads.add_metric([status.value], by_status.get(status.value, 0))
        yield uploads
        connection = django_rq.get_connection("default")
        values = connection.mget([_KEY + name for name in COUNTERS])
        for (name, description), value in zip(COUNTERS.items(), values, strict=True):
            yield CounterMetricFamily(f"uploads_{name}", description, value=int(value or 0))
        yield GaugeMetricFamily(
            "uploads_queue_depth", "Jobs waiting in the queue", value=django_rq.get_queue("default").count
        )
