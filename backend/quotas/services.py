"""Writes: reserving quota for a new upload, atomically.

The API every upload path calls (uploadFile, uploadFiles, tus creation, direct uploads):

    with transaction.atomic():
        quota_reserve(user=user, size=declared_size)   # raises QuotaExceeded
        FileUpload.objects.create(..., size=declared_size, status=<an active status>)

The reservation is the row itself: an upload's declared size counts while its status is active or
COMPLETED, so deleting it (or its failing or being cancelled) frees the quota at once, with no
counter to keep in step. What makes the check and the reservation one atomic step is the per-user
lock `quota_reserve` takes and the transaction keeps until the row is committed: a second
reservation of the same user waits for it, then sums a total that includes the first row.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from backend.quotas.errors import QuotaExceeded
from backend.quotas.models import UserQuota
from backend.quotas.selectors import quota_limit_for, quota_used_bytes


def quota_reserve(*, user: User, size: int) -> None:
    """Check that `size` more bytes fit in `user`'s quota, and hold the user's quota lock.

    Must run inside the `transaction.atomic()` block that also writes the row the bytes count in
    (a new upload with this declared size, or a declared size growing by `size`); the lock is
    released when that transaction ends. Raises QuotaExceeded when the bytes do not fit. An
    unlimited user takes no lock.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("quota_reserve must run inside the transaction that records the upload")
    if quota_limit_for(user=user) is None:
        return
    UserQuota.objects.get_or_create(user=user)
    # The lock: an UPDATE of the user's row. PostgreSQL keeps the row locked until commit (what
    # select_for_update would do); SQLite has one writer at a time, so the same statement waits
    # there too, whatever the transaction mode.
    UserQuota.objects.filter(user=user).update(reserved_at=timezone.now())
    # Read again under the lock: the override may have changed, and so may the uploads.
    limit = quota_limit_for(user=user)
    if limit is None:
        return
    used = quota_used_bytes(user=user)
    if used + size > limit:
        raise QuotaExceeded(f"this upload of {size} bytes would pass your quota: {used} of {limit} bytes are taken")
