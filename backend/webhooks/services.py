"""Writes: webhook endpoints, the deliveries an upload's end creates, and each attempt's bookkeeping.

A delivery is created in the same transaction as the upload's move to COMPLETED, FAILED or
CANCELLED (the `upload_finished` signal), and queued once that commits: an event is never lost
to a crash between the two, and never sent for a move that rolled back. Each attempt is claimed
with a conditional update on the attempt count, so two runs of one delivery's job (a requeue that
raced the scheduler) never send the same attempt twice; delivery is at least once all the same,
and the receiver dedupes on `webhook-id`, which is the delivery's id for every attempt.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from backend.uploads.errors import BadUserInput, NotFound
from backend.uploads.models import FileUpload, UploadStatus
from backend.webhooks.addresses import UnsafeWebhookUrl, target_resolve
from backend.webhooks.backoff import retry_delay
from backend.webhooks.errors import TooManyWebhooks
from backend.webhooks.metrics import webhook_metrics_count
from backend.webhooks.models import (
    EVENT_FOR_STATUS,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from backend.webhooks.payloads import event_body
from backend.webhooks.queueing import delivery_enqueue
from backend.webhooks.sending import AttemptOutcome, post
from backend.webhooks.signing import secret_generate, signed_headers

logger = logging.getLogger(__name__)

MAX_ENDPOINTS_PER_USER = 20


# --- endpoints --------------------------------------------------------------------------------


def webhook_create(*, user: User, url: str, events: list[str] | None) -> tuple[WebhookEndpoint, str]:
    """Register `url` for `events` (all three when None); the endpoint and its signing secret.

    The URL must be http(s) and resolve to public addresses only (unless
    WEBHOOK_ALLOW_PRIVATE_ADDRESSES): BAD_USER_INPUT otherwise. The secret is answered here only.
    """
    chosen = list(dict.fromkeys(events)) if events is not None else [e.value for e in WebhookEvent]
    if not chosen:
        raise BadUserInput("events must name at least one event (or be left out for all of them)")
    target_resolve(url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES)
    if WebhookEndpoint.objects.filter(owner=user).count() >= MAX_ENDPOINTS_PER_USER:
        raise TooManyWebhooks(f"you already have {MAX_ENDPOINTS_PER_USER} webhooks; delete one first")
    secret = secret_generate()
    endpoint = WebhookEndpoint.objects.create(owner=user, url=url, events=chosen, secret=secret)
    logger.info("webhook %s created for %s", endpoint.id, url)
    return endpoint, secret


def webhook_delete(*, user: User, endpoint_id: uuid.UUID) -> bool:
    """Remove the caller's endpoint and its deliveries (queued attempts then find nothing to send)."""
    deleted, _ = WebhookEndpoint.objects.filter(id=endpoint_id, owner_id=user.pk).delete()
    if not deleted:
        raise NotFound("no such webhook")
    return True


# --- events -----------------------------------------------------------------------------------


def webhook_deliveries_record(*, upload: FileUpload, **kwargs: Any) -> None:
    """Create a delivery for each of the owner's endpoints that wants this event; queue them after commit.

    Runs inside the transaction of the upload's move (the `upload_finished` receiver). A failure
    here must not undo the move: it runs in a savepoint and is logged.
    """
    event = EVENT_FOR_STATUS.get(UploadStatus(upload.status))
    if event is None:
        return
    try:
        with transaction.atomic():
            endpoints = [e for e in WebhookEndpoint.objects.filter(owner_id=upload.owner_id) if event in e.events]
            if not endpoints:
                return
            now = timezone.now()
            body = event_body(event=event, upload=upload, at=now)
            deliveries = [
                WebhookDelivery.objects.create(
                    endpoint=endpoint, event=event, upload_id=upload.id, payload=body, next_attempt_at=now
                )
                for endpoint in endpoints
            ]
    except Exception:
        logger.exception("upload %s: webhook deliveries of %s not recorded", upload.id, event)
        return
    for delivery in deliveries:
        transaction.on_commit(partial(delivery_enqueue, delivery_id=delivery.id, attempt=1))


# --- attempts ---------------------------------------------------------------------------------


def delivery_attempt(*, delivery_id: uuid.UUID) -> WebhookDelivery | None:
    """Make the next attempt of a PENDING delivery and book its outcome; None if there is nothing to do.

    Success (2xx) makes it DELIVERED. A failure schedules the next attempt after `retry_delay`,
    or makes it FAILED once WEBHOOK_MAX_ATTEMPTS attempts have failed. The URL is resolved and
    checked again first: an address that is not allowed any more fails the attempt unsent.
    """
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(id=delivery_id).first()
    if delivery is None or delivery.status != DeliveryStatus.PENDING:
        return None
    maximum = settings.WEBHOOK_MAX_ATTEMPTS
    if delivery.attempts >= maximum:
        # Its last attempt never finished (the worker was lost): nothing more is owed.
        return _delivery_give_up(delivery, error=delivery.last_error or "the last attempt did not finish")
    number = delivery.attempts + 1
    now = timezone.now()
    claimed = WebhookDelivery.objects.filter(
        id=delivery.id, status=DeliveryStatus.PENDING, attempts=delivery.attempts
    ).update(attempts=number, next_attempt_at=None, updated_at=now)
    if not claimed:
        return None  # another run took this attempt
    attempt = WebhookAttempt.objects.create(delivery=delivery, number=number, started_at=now)
    outcome = _attempt_send(delivery, at=now)
    WebhookAttempt.objects.filter(id=attempt.id).update(
        finished_at=timezone.now(), address=outcome.address, response_status=outcome.status, error=outcome.error
    )
    webhook_metrics_count("attempts")
    if outcome.delivered:
        WebhookDelivery.objects.filter(id=delivery.id).update(
            status=DeliveryStatus.DELIVERED,
            response_status=outcome.status,
            last_error=None,
            delivered_at=timezone.now(),
        )
        webhook_metrics_count("delivered")
        logger.info("webhook delivery %s delivered on attempt %d", delivery.id, number)
    else:
        webhook_metrics_count("attempt_failures")
        if number >= maximum:
            return _delivery_give_up(delivery, error=outcome.error or "failed", status=outcome.status)
        delay = retry_delay(failed_attempts=number, base=settings.WEBHOOK_RETRY_BASE_SECONDS)
        WebhookDelivery.objects.filter(id=delivery.id).update(
            response_status=outcome.status,
            last_error=outcome.error,
            next_attempt_at=timezone.now() + timedelta(seconds=delay),
        )
        logger.info(
            "webhook delivery %s attempt %d failed (%s); next in %.1fs", delivery.id, number, outcome.error, delay
        )
        delivery_enqueue(delivery_id=delivery.id, attempt=number + 1, delay=delay)
    return WebhookDelivery.objects.get(id=delivery.id)


def _attempt_send(delivery: WebhookDelivery, *, at: Any) -> AttemptOutcome:
    try:
        target = target_resolve(delivery.endpoint.url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES)
    except UnsafeWebhookUrl as exc:
        return AttemptOutcome(status=None, error=f"not sent: {exc.message}", address=None)
    headers = signed_headers(
        secret=delivery.endpoint.secret, message_id=delivery.message_id, body=delivery.payload, at=at
    )
    return post(
        target=target, body=delivery.payload.encode(), headers=headers, timeout=settings.WEBHOOK_TIMEOUT_SECONDS
    )


def _delivery_give_up(delivery: WebhookDelivery, *, error: str, status: int | None = None) -> WebhookDelivery:
    fields: dict[str, Any] = {"status": DeliveryStatus.FAILED, "last_error": error, "next_attempt_at": None}
    if status is not None:
        fields["response_status"] = status
    if WebhookDelivery.objects.filter(id=delivery.id, status=DeliveryStatus.PENDING).update(**fields):
        webhook_metrics_count("failed")
        logger.warning("webhook delivery %s given up after %d attempts: %s", delivery.id, delivery.attempts, error)
    return WebhookDelivery.objects.get(id=delivery.id)


# --- upkeep -----------------------------------------------------------------------------------


def deliveries_requeue_overdue(*, overdue_seconds: float) -> list[uuid.UUID]:
    """Queue again every PENDING delivery whose attempt is overdue: its job was lost with Redis or a worker.

    Overdue: due more than `overdue_seconds` ago, or claimed by an attempt that has been running
    longer than the attempt's time limit allows (its worker died mid-attempt).
    """
    now = timezone.now()
    pending = WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING)
    late = pending.filter(next_attempt_at__lt=now - timedelta(seconds=overdue_seconds))
    stuck_after = timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS + overdue_seconds + 30)
    stuck = pending.filter(next_attempt_at__isnull=True, updated_at__lt=now - stuck_after)
    requeued = []
    for rows, error in ((late, None), (stuck, "the attempt did not finish (its worker was lost)")):
        for delivery_id, attempts in rows.values_list("id", "attempts"):
            # Touched, so the next sweep waits again before queueing it once more.
            fields: dict[str, Any] = {"next_attempt_at": now, "updated_at": now}
            if error is not None:
                fields["last_error"] = error
            if WebhookDelivery.objects.filter(id=delivery_id, attempts=attempts, status=DeliveryStatus.PENDING).update(
                **fields
            ):
                delivery_enqueue(delivery_id=delivery_id, attempt=attempts + 1, redelivery=True)
                requeued.append(delivery_id)
    if requeued:
        logger.warning("webhooks: %d overdue deliveries queued again", len(requeued))
    return requeued
