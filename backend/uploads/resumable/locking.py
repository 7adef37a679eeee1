"""The writer's lock on an upload: one request at a time appends to it, across every server process.

A Redis lock (redis-py's `Lock`: SET NX PX with a random token, released and extended by a Lua
script that checks the token) with a TTL of `UPLOAD_LOCK_TTL_SECONDS`. The holder renews it while
it writes; a holder that died (SIGKILL, a lost machine) stops renewing and the lock frees itself
within the TTL. Holding the lock is not the only fence: every checkpoint of the offset is a
conditional UPDATE on the offset the writer started from, so a writer that lost its lock (paused
longer than the TTL) cannot move the offset over another writer's bytes.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from functools import cache

import redis
from django.conf import settings
from redis.exceptions import LockError, RedisError

from backend.uploads.errors import ServiceUnavailable, UploadLocked


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def _key(upload_id: uuid.UUID) -> str:
    return f"uploads:writer-lock:{upload_id}"


class WriterLock:
    """The lock on one upload, taken by `acquire`; `renew` and `release` may run in any thread."""

    def __init__(self, upload_id: uuid.UUID) -> None:
        self.upload_id = upload_id
        self._lock = _redis().lock(
            _key(upload_id), timeout=settings.UPLOAD_LOCK_TTL_SECONDS, blocking=False, thread_local=False
        )
        self.held = False
        self.renewed_at = 0.0

    def acquire(self) -> WriterLock:
        """Take the lock, or raise UploadLocked (someone holds it) or ServiceUnavailable (no Redis)."""
        try:
            acquired = self._lock.acquire(blocking=False)
        except RedisError as exc:
            raise ServiceUnavailable("the upload lock cannot be taken right now (Redis unreachable); retry") from exc
        if not acquired:
            raise UploadLocked("another request is writing to this upload right now; retry later")
        self.held = True
        self.renewed_at = time.monotonic()
        return self

    def renew(self, *, unless_fresh: bool = False) -> bool:
        """Reset the TTL; False if the lock is no longer ours (it expired, and maybe someone took it).

        With `unless_fresh`, a lock renewed within the last third of its TTL is taken as still ours
        without asking Redis (the holder renews it that often anyway).
        """
        if not self.held:
            return False
        if unless_fresh and time.monotonic() - self.renewed_at < settings.UPLOAD_LOCK_TTL_SECONDS / 3:
            return True
        try:
            self._lock.reacquire()
            self.renewed_at = time.monotonic()
        except LockError:
            self.held = False
        except RedisError:
            # Redis is away for a moment: the lock may still be ours; the offset's fence decides.
            return True
        return self.held

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        # Expired already, or Redis is away: the TTL frees it.
        with contextlib.suppress(LockError, RedisError):
            self._lock.release()
