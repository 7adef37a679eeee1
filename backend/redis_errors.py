"""Redis unreachable: the one definition, and the one way to carry on without it.

Redis holds the queue, the channel layer and the metrics counters, never the truth (the upload
row is): every caller that must outlive a Redis outage catches `REDIS_UNREACHABLE` (a connection
error or a timeout; a Redis that answers with an error is a bug, not an outage) and logs it as a
warning, or runs its call through `redis_unless_unreachable`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import redis

T = TypeVar("T")

REDIS_UNREACHABLE: tuple[type[Exception], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def redis_unless_unreachable(what: str, call: Callable[[], T], default: T, *, logger: logging.Logger) -> T:
    """Run `call`; while Redis is unreachable, log that `what` was skipped and answer `default`."""
    try:
        return call()
    except REDIS_UNREACHABLE as exc:
        logger.warning("Redis unreachable, %s skipped: %s", what, exc)
        return default
