"""The webhook part of the schema: endpoints, their deliveries, creating and deleting (CONTRACT section 2)."""

from __future__ import annotations

from datetime import datetime

import strawberry
from asgiref.sync import sync_to_async

from backend.webhooks import models
from backend.webhooks.selectors import delivery_list_for_endpoint, webhook_id_parse, webhook_list_for_user
from backend.webhooks.services import webhook_create, webhook_delete
from schema.auth import require_user
from schema.context import Info

WebhookEvent = models.WebhookEvent
strawberry.enum(WebhookEvent, name="WebhookEvent")
WebhookDeliveryStatus = models.DeliveryStatus
strawberry.enum(WebhookDeliveryStatus, name="WebhookDeliveryStatus")


@strawberry.type(name="WebhookEndpoint")
class WebhookEndpointType:
    id: strawberry.ID
    url: str
    events: list[WebhookEvent]
    created_at: datetime
    secret: str | None  # only in createWebhook's answer

    @classmethod
    def from_model(cls, endpoint: models.WebhookEndpoint, *, secret: str | None = None) -> WebhookEndpointType:
        return cls(
            id=strawberry.ID(str(endpoint.id)),
            url=endpoint.url,
            events=[WebhookEvent(e) for e in endpoint.events],
            created_at=endpoint.created_at,
            secret=secret,
        )


@strawberry.type(name="WebhookDelivery")
class WebhookDeliveryType:
    id: strawberry.ID
    event: WebhookEvent
    upload_id: strawberry.ID
    attempts: int
    status: WebhookDeliveryStatus
    response_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def from_model(cls, delivery: models.WebhookDelivery) -> WebhookDeliveryType:
        return cls(
            id=strawberry.ID(str(delivery.id)),
            event=WebhookEvent(delivery.event),
            upload_id=strawberry.ID(str(delivery.upload_id)),
            attempts=delivery.attempts,
            status=WebhookDeliveryStatus(delivery.status),
            response_status=delivery.response_status,
            last_error=delivery.last_error,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
        )


@strawberry.type
class WebhookQuery:
    @strawberry.field
    async def webhooks(self, info: Info) -> list[WebhookEndpointType]:
        user = require_user(info)
        return [WebhookEndpointType.from_model(e) for e in await sync_to_async(webhook_list_for_user)(user=user)]

    @strawberry.field
    async def webhook_deliveries(
        self, info: Info, endpoint_id: strawberry.ID, first: int | None = 20
    ) -> list[WebhookDeliveryType]:
        user = require_user(info)
        deliveries = await sync_to_async(delivery_list_for_endpoint)(
            user=user, endpoint_id=webhook_id_parse(endpoint_id), first=20 if first is None else first
        )
        return [WebhookDeliveryType.from_model(d) for d in deliveries]


@strawberry.type
class WebhookMutation:
    @strawberry.mutation
    async def create_webhook(
        self, info: Info, url: str, events: list[WebhookEvent] | None = None
    ) -> WebhookEndpointType:
        user = require_user(info)
        names = None if events is None else [e.value for e in events]
        endpoint, secret = await sync_to_async(webhook_create)(user=user, url=url, events=names)
        return WebhookEndpointType.from_model(endpoint, secret=secret)

    @strawberry.mutation
    async def delete_webhook(self, info: Info, id: strawberry.ID) -> bool:
        user = require_user(info)
        return await sync_to_async(webhook_delete)(user=user, endpoint_id=webhook_id_parse(id))
