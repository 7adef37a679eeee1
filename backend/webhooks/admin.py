"""Webhooks in the admin: endpoints (their secret never shown), deliveries with every attempt, read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from backend.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


class ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ("url", "owner", "events", "created_at")
    list_filter = ("created_at",)
    search_fields = ("url", "owner__username", "id")
    fields = ("id", "owner", "url", "events", "created_at")
    readonly_fields = fields


class WebhookAttemptInline(ReadOnly, admin.TabularInline):
    model = WebhookAttempt
    fields = ("number", "started_at", "finished_at", "address", "response_status", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ("id", "event", "status", "attempts", "response_status", "endpoint", "created_at", "delivered_at")
    list_filter = ("status", "event")
    search_fields = ("id", "upload_id", "endpoint__url", "endpoint__owner__username")
    fields = (
        "id",
        "webhook_id",
        "endpoint",
        "event",
        "upload_id",
        "status",
        "attempts",
        "response_status",
        "last_error",
        "next_attempt_at",
        "created_at",
        "delivered_at",
        "payload",
    )
    readonly_fields = fields
    inlines = [WebhookAttemptInline]

    @admin.display(description="webhook-id")
    def webhook_id(self, obj: WebhookDelivery) -> str:
        return obj.message_id
