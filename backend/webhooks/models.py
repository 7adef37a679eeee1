"""Webhook endpoints, the deliveries owed to them, and every attempt made (CONTRACT section 10)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from backend.uploads.models import UploadStatus


class WebhookEvent(models.TextChoices):
    UPLOAD_COMPLETED = "UPLOAD_COMPLETED"
    UPLOAD_FAILED = "UPLOAD_FAILED"
    UPLOAD_CANCELLED = "UPLOAD_CANCELLED"


EVENT_FOR_STATUS = {
    UploadStatus.COMPLETED: WebhookEvent.UPLOAD_COMPLETED,
    UploadStatus.FAILED: WebhookEvent.UPLOAD_FAILED,
    UploadStatus.CANCELLED: WebhookEvent.UPLOAD_CANCELLED,
}
# The payload's `type`, full-stop delimited as the Standard Webhooks specification recommends.
EVENT_TYPE = {
    WebhookEvent.UPLOAD_COMPLETED: "upload.completed",
    WebhookEvent.UPLOAD_FAILED: "upload.failed",
    WebhookEvent.UPLOAD_CANCELLED: "upload.cancelled",
}


class WebhookEndpoint(models.Model):
    """A URL of a user's that hears about their uploads' ends, and the secret deliveries are signed with."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.CharField(max_length=2048)
    events = models.JSONField(default=list, help_text="WebhookEvent names this endpoint receives")
    # Kept to sign with (HMAC needs the secret itself); answered to the client once, at creation.
    secret = models.CharField(max_length=128)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return self.url


class DeliveryStatus(models.TextChoices):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"  # given up after WEBHOOK_MAX_ATTEMPTS


class WebhookDelivery(models.Model):
    """One event owed to one endpoint. Its id is the `webhook-id` of every attempt (receivers dedupe on it).

    `payload` is the exact body: built once, when the event happened, and sent unchanged by every
    attempt. `upload_id` is not a foreign key: the record outlives a deleted upload.
    `next_attempt_at` is when the next attempt is due while PENDING (null while one is running).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32, choices=WebhookEvent.choices)
    upload_id = models.UUIDField()
    payload = models.TextField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.IntegerField(default=0)
    response_status = models.IntegerField(null=True, blank=True)
    last_error = models.TextField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["endpoint", "-created_at"]),
            models.Index(fields=["status", "next_attempt_at"]),
        ]

    @property
    def message_id(self) -> str:
        return f"msg_{self.id.hex}"

    def __str__(self) -> str:
        return f"{self.event} of {self.upload_id} to {self.endpoint_id} ({self.status})"


class WebhookAttempt(models.Model):
    """One POST of a delivery: where it went and how it ended."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.IntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    address = models.CharField(max_length=64, null=True, blank=True, help_text="The IP address connected to")
    response_status = models.IntegerField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)

    class Meta:
        ordering = ["number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="uniq_delivery_attempt")]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"
