"""The per-user quota override in the admin (CONTRACT section 10)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from backend.quotas.models import UserQuota
from backend.quotas.selectors import quota_usage_for


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin):
    list_display = ("user", "limit_bytes", "used_bytes", "reserved_at")
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)
    readonly_fields = ("used_bytes", "reserved_at")
    fields = ("user", "limit_bytes", "used_bytes", "reserved_at")

    @admin.display(description="used bytes")
    def used_bytes(self, obj: UserQuota) -> int | str:
        return quota_usage_for(user=obj.user).used_bytes if obj.pk else "-"

    def get_readonly_fields(self, request: HttpRequest, obj: UserQuota | None = None) -> tuple[str, ...]:
        # The user of an existing row is fixed: the row is that user's lock too.
        return ("user", *self.readonly_fields) if obj is not None else tuple(self.readonly_fields)
