"""Reads: a user's webhook endpoints and their deliveries."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User

from backend.uploads.errors import BadUserInput, NotFound
from backend.webhooks.models import WebhookDelivery, WebhookEndpoint

MAX_PAGE = 100


def webhook_id_parse(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError as exc:
        raise BadUserInput(f"{raw!r} is not a webhook id") from exc


def webhook_list_for_user(*, user: User) -> list[WebhookEndpoint]:
    return list(WebhookEndpoint.objects.filter(owner_id=user.pk).order_by("-created_at", "-id"))


def delivery_list_for_endpoint(*, user: User, endpoint_id: uuid.UUID, first: int = 20) -> list[WebhookDelivery]:
    """The endpoint's deliveries, newest first; NOT_FOUND when the endpoint is missing or someone else's."""
    if first < 0 or first > MAX_PAGE:
        raise BadUserInput(f"first must be between 0 and {MAX_PAGE}")
    if not WebhookEndpoint.objects.filter(id=endpoint_id, owner_id=user.pk).exists():
        raise NotFound("no such webhook")
    return list(WebhookDelivery.objects.filter(endpoint_id=endpoint_id).order_by("-created_at", "-id")[:first])
