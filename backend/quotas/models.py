from __future__ import annotations

from django.conf import settings
from django.db import models


class UserQuota(models.Model):
    """One row per user who has ever reserved quota: the per-user lock, and the admin's override.

    `quota_reserve` writes this row before it sums the user's uploads, so two reservations of one
    user run one after the other on every database: PostgreSQL holds the row lock to the end of
    the transaction, SQLite holds its one write lock (IMMEDIATE transactions take it at BEGIN).
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True)
    limit_bytes = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Bytes this user's completed and active uploads may take. Empty: UPLOAD_QUOTA_BYTES; 0: unlimited.",
    )
    reserved_at = models.DateTimeField(null=True, blank=True, help_text="The last reservation (it takes the lock)")

    class Meta:
        verbose_name = "user quota"

    def __str__(self) -> str:
        return f"quota of {self.user}"
