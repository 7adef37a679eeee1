"""Prometheus metrics for /metrics.

Counters that every worker process adds to live in Redis (one INCRBY each, shared by all
processes, surviving a worker's exit); gauges are read from the database and the queue at scrape
time. Losing a counter increment when Redis is briefly down costs a metric, never an upload.
Each process keeps one Redis client for its counters: `django_rq.get_connection` builds a new
client, and so a new connection, on every call (a connect and a handshake per counted part).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

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
    metrics_add({name: amount})


def metrics_add(amounts: Mapping[str, int]) -> None:
    """Add to several shared counters (names from COUNTERS) in one round trip."""
    try:
        pipeline = _counters_client().pipeline(transaction=False)
        for name, amount in amounts.items():
            pipeline.incrby(_KEY + name, amount)
        pipeline.execute()
    except Exception:
        logger.debug("metrics counters %s not updated", ", ".join(amounts), exc_info=True)


@cache
def _counters_client() -> Any:
    """This process's client for the counters; its pool opens new connections in a forked child."""
    return django_rq.get_connection("default")


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
