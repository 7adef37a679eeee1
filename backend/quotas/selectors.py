"""Reads: where a user stands against their quota."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Sum
from django.db.models.functions import Coalesce

from backend.quotas.models import UserQuota
from backend.uploads.models import ACTIVE_STATUSES, FileUpload, UploadStatus

# What a user's quota holds (CONTRACT section 10): their COMPLETED uploads and the declared sizes of
# the active ones. FAILED and CANCELLED uploads hold nothing (a retry reserves again).
COUNTED_STATUSES = (*ACTIVE_STATUSES, UploadStatus.COMPLETED)


@dataclass(frozen=True)
class QuotaUsage:
    used_bytes: int
    limit_bytes: int | None  # None: unlimited

    @property
    def free_bytes(self) -> int | None:
        return None if self.limit_bytes is None else max(0, self.limit_bytes - self.used_bytes)


def quota_limit_for(*, user: User) -> int | None:
    """The user's limit in bytes: the admin's override if set, else UPLOAD_QUOTA_BYTES; None when unlimited."""
    override = UserQuota.objects.filter(user_id=user.pk).values_list("limit_bytes", flat=True).first()
    limit = settings.UPLOAD_QUOTA_BYTES if override is None else override
    return limit or None


def quota_used_bytes(*, user: User) -> int:
    """Bytes of the user's COMPLETED uploads plus the declared sizes of their active ones."""
    rows = FileUpload.objects.filter(owner_id=user.pk, status__in=COUNTED_STATUSES)
    return int(rows.aggregate(used=Coalesce(Sum("size"), 0))["used"])


def quota_usage_for(*, user: User) -> QuotaUsage:
    return QuotaUsage(used_bytes=quota_used_bytes(user=user), limit_bytes=quota_limit_for(user=user))
