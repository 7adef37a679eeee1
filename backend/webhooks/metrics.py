"""Webhook figures for /metrics: counters shared by every worker (Redis), deliveries by status (database)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import django_rq
from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.redis_errors import REDIS_UNREACHABLE
from backend.uploads.metrics import metrics_add, metrics_read

logger = logging.getLogger(__name__)

_PREFIX = "webhook_"
COUNTERS = {
    "attempts": "Webhook delivery attempts made (first tries and retries)",
    "attempt_failures": "Webhook attempts that failed (timeout, connection error, non-2xx, refused address)",
    "delivered": "Webhook deliveries delivered (a 2xx answer)",
    "failed": "Webhook deliveries given up after WEBHOOK_MAX_ATTEMPTS",
}


def webhook_metrics_count(name: str, amount: int = 1) -> None:
    """Add to the shared counter `name` (one of COUNTERS)."""
    metrics_add({_PREFIX + name: amount})


class WebhookCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        from backend.webhooks.models import DeliveryStatus, WebhookDelivery
        from backend.webhooks.queueing import WEBHOOK_QUEUE

        by_status = dict(
            WebhookDelivery.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n")
        )
        deliveries = GaugeMetricFamily("webhook_deliveries", "Webhook deliveries by status", labels=["status"])
        for status in DeliveryStatus:
            deliveries.add_metric([status.value], by_status.get(status.value, 0))
        yield deliveries
        try:
            values = metrics_read([_PREFIX + name for name in COUNTERS])
            depth = django_rq.get_queue(WEBHOOK_QUEUE).count
        except REDIS_UNREACHABLE:
            logger.warning("metrics: Redis unreachable; webhook counters left out")
            return
        for (name, description), value in zip(COUNTERS.items(), values, strict=True):
            yield CounterMetricFamily(f"webhook_{name}", description, value=value)
        yield GaugeMetricFamily("webhook_queue_depth", "Webhook attempts waiting in their queue", value=depth)
