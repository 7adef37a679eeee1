"""Prometheus metrics for /metrics.

Counters that every worker process adds to live in Redis (one INCRBY each, shared by all
processes, surviving a worker's exit); so do the transfer-duration histogram's buckets. Gauges
are read from the database and the queue at scrape time. Active subscriptions are counted by
each server process and published to Redis under the process's own name with a heartbeat
(`SubscriptionGauge`): a scrape sums the processes heard from within METRICS_PROCESS_TTL_SECONDS,
so several processes never count one subscription twice, and a crashed process's count stops
counting once its heartbeat is that old. Losing a metric write when Redis is briefly down costs
a metric, never an upload. Each process keeps one cached client for them (`_counters`):
`django_rq.get_connection` builds a new client, and so a new connection, on every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import django_rq
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from backend.redis_errors import REDIS_UNREACHABLE
from backend.uploads.models import FileUpload, UploadStatus

logger = logging.getLogger(__name__)

_KEY = "uploads:metrics:"
COUNTERS = {
    "part_attempts": "Part uploads tried, first tries and retries",
    "part_failures": "Part attempts that failed (each one retried or, on the last attempt, failing the upload)",
    "bytes_received": "Bytes of the uploads accepted (staged and queued)",
    "bytes_transferred": "Bytes the bucket confirmed",
    "parts_confirmed": "Parts the bucket confirmed",
}


@cache
def _counters() -> redis.Redis:
    """A client of its own that fails at once: a part must not wait on Redis retries for a metric."""
    # driver_info=None: no CLIENT SETINFO round trips, and no package-metadata scan for redis-py's
    # version, on connecting (each work horse connects anew).
    return redis.Redis.from_url(
        settings.REDIS_URL,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=1,
        socket_timeout=1,
        driver_info=None,
    )


def metrics_count(name: str, amount: int = 1) -> None:
    """Add `amount` to the shared counter `name` (one of COUNTERS)."""
    metrics_add({name: amount})


def metrics_add(amounts: Mapping[str, int]) -> None:
    """Add to several shared counters (names from COUNTERS) in one round trip."""
    try:
        pipeline = _counters().pipeline(transaction=False)
        for name, amount in amounts.items():
            pipeline.incrby(_KEY + name, amount)
        pipeline.execute()
    except Exception:
        logger.debug("metrics counters %s not updated", ", ".join(amounts), exc_info=True)


def metrics_read(names: list[str]) -> list[int]:
    """The shared counters `names` (as `metrics_add` names them); raises when Redis is unreachable."""
    return [int(value or 0) for value in _counters().mget([_KEY + name for name in names])]


# --- transfer durations -----------------------------------------------------------------------
# One Redis hash per outcome: a field per bucket (counts not yet cumulative), "sum" and "count".

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
DURATION_OUTCOMES = ("completed", "failed")
_DURATION_KEY = _KEY + "transfer_duration:"


def metrics_observe_transfer(*, seconds: float, outcome: str) -> None:
    """Record one transfer run of `seconds` that ended `outcome` (one of DURATION_OUTCOMES)."""
    bucket = next((str(b) for b in DURATION_BUCKETS if seconds <= b), "+Inf")
    try:
        pipe = _counters().pipeline(transaction=True)
        key = _DURATION_KEY + outcome
        pipe.hincrby(key, bucket, 1)
        pipe.hincrby(key, "count", 1)
        pipe.hincrbyfloat(key, "sum", seconds)
        pipe.execute()
    except Exception:
        logger.debug("transfer duration not recorded", exc_info=True)


def _duration_histogram(connection: Any) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(
        "uploads_transfer_duration_seconds",
        "Wall time of a transfer run, from taking the upload to its end",
        labels=["outcome"],
    )
    pipe = connection.pipeline(transaction=False)
    for outcome in DURATION_OUTCOMES:
        pipe.hgetall(_DURATION_KEY + outcome)
    for outcome, raw in zip(DURATION_OUTCOMES, pipe.execute(), strict=True):
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        cumulative, buckets = 0, []
        for bound in DURATION_BUCKETS:
            cumulative += int(fields.get(str(bound), 0))
            buckets.append((str(bound), cumulative))
        buckets.append(("+Inf", int(fields.get("count", 0))))
        histogram.add_metric([outcome], buckets, sum_value=float(fields.get("sum", 0)))
    return histogram


# --- active subscriptions ---------------------------------------------------------------------
# `_SUBSCRIPTIONS` maps each server process to its count, `_HEARTBEATS` (a sorted set) to the
# Redis time of its last write. Redis's clock orders them, so hosts with skewed clocks agree.

_SUBSCRIPTIONS = _KEY + "subscriptions"
_HEARTBEATS = _KEY + "subscriptions:heartbeat"


def _subscriptions_write(*, process: str, count: int) -> None:
    connection = _counters()
    seconds, micros = connection.time()
    pipe = connection.pipeline(transaction=True)
    pipe.hset(_SUBSCRIPTIONS, process, count)
    pipe.zadd(_HEARTBEATS, {process: seconds + micros / 1e6})
    pipe.execute()


def _subscriptions_active(connection: Any) -> int:
    """The sum over the processes heard from within the TTL; forgets the long-silent ones."""
    ttl = settings.METRICS_PROCESS_TTL_SECONDS
    seconds, micros = connection.time()
    now = seconds + micros / 1e6
    alive = [p.decode() for p in connection.zrangebyscore(_HEARTBEATS, now - ttl, "+inf")]
    total = sum(int(n or 0) for n in connection.hmget(_SUBSCRIPTIONS, alive)) if alive else 0
    # Far older than the TTL: a process that comes back after this long writes itself in again.
    gone = connection.zrangebyscore(_HEARTBEATS, "-inf", now - 10 * ttl)
    if gone:
        pipe = connection.pipeline(transaction=True)
        pipe.zrem(_HEARTBEATS, *gone)
        pipe.hdel(_SUBSCRIPTIONS, *gone)
        pipe.execute()
    return total


class SubscriptionGauge:
    """This server process's open subscriptions, kept in Redis for every process's /metrics.

    `opened`/`closed` only change a number on the event loop; one task writes it to Redis (in a
    thread) when it changes and every third of METRICS_PROCESS_TTL_SECONDS while it is above 0,
    then stops: a process with none open needs no heartbeat, as its expired entry counts 0 too.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Named per process (a forked child starts from zero under a name of its own).
        self.pid = os.getpid()
        self.process = f"{socket.gethostname()}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.count = 0
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def opened(self) -> None:
        if self.pid != os.getpid():
            self._reset()
        self.count += 1
        self._wake()

    def closed(self) -> None:
        self.count -= 1
        self._wake()

    def _wake(self) -> None:
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # a stream finalised outside any loop: the next change publishes the count
            self._changed = asyncio.Event()
            # An empty context: a copy of the subscription's that opened it would keep that
            # subscription's sink, and so its socket, alive as long as this task runs.
            self._task = loop.create_task(self._publish(), context=contextvars.Context())
        assert self._changed is not None
        self._changed.set()

    async def _publish(self) -> None:
        assert self._changed is not None
        while True:
            self._changed.clear()
            count = self.count
            try:
                await sync_to_async(_subscriptions_write, thread_sensitive=False)(process=self.process, count=count)
            except Exception:
                logger.debug("active subscriptions not published", exc_info=True)
            if count == 0 and not self._changed.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=settings.METRICS_PROCESS_TTL_SECONDS / 3)


subscription_gauge = SubscriptionGauge()


class UploadCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        by_status = dict(FileUpload.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        uploads = GaugeMetricFamily("uploads", "Uploads by status", labels=["status"])
        for status in UploadStatus:
            uploads.add_metric([status.value], by_status.get(status.value, 0))
        yield uploads
        try:
            connection = _counters()
            values = connection.mget([_KEY + name for name in COUNTERS])
            depth = django_rq.get_queue("default", connection=connection).count
            durations = _duration_histogram(connection)
            subscriptions = _subscriptions_active(connection)
        except REDIS_UNREACHABLE:
            # Redis is away: the scrape still answers, without what only Redis knows.
            logger.warning("metrics: Redis unreachable; counters, durations, queue depth and subscriptions left out")
            return
        for (name, description), value in zip(COUNTERS.items(), values, strict=True):
            yield CounterMetricFamily(f"uploads_{name}", description, value=int(value or 0))
        yield durations
        yield GaugeMetricFamily("uploads_queue_depth", "Jobs waiting in the queue", value=depth)
        yield GaugeMetricFamily(
            "uploads_subscriptions_active",
            "Open uploadProgress subscriptions, summed over the server processes alive",
            value=subscriptions,
        )
