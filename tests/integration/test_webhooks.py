"""Webhooks (CONTRACT section 10) against a real receiver on loopback, real workers and RQ's scheduler.

Each stack runs a transfer worker and a webhook worker pool (as `make run` does); the receiver
checks every signature with the `standardwebhooks` verifier. Retries back off from a 0.5 s base
here (WEBHOOK_RETRY_BASE_SECONDS; 10 s in production), so the tests take seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from backend.webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.support.client import data_of, error_codes, graphql, upload_file
from tests.support.processes import wait_until
from tests.support.receiver import Receiver
from tests.support.uploads import upload_wait_for_status

CREATE = """mutation($url: String!, $events: [WebhookEvent!]) {
  createWebhook(url: $url, events: $events) { id url events createdAt secret } }"""
LIST = "{ webhooks { id url events createdAt secret } }"
DELETE = "mutation($id: ID!) { deleteWebhook(id: $id) }"
DELIVERIES = """query($id: ID!, $first: Int) { webhookDeliveries(endpointId: $id, first: $first) {
  id event uploadId attempts status responseStatus lastError createdAt deliveredAt } }"""
CANCEL = "mutation($id: ID!) { cancelUpload(id: $id) { status } }"

FAST_RETRIES = {
    "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.5",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
}


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(script: list[str] | None = None, **kwargs: Any) -> Receiver:
        receiver = Receiver(script=script or ["200"], **kwargs).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def webhook_stack(make_stack: Callable[..., Any], **env: str) -> Any:
    stack = make_stack(env={**FAST_RETRIES, **env}, workers=1)
    stack.add_webhook_worker()
    return stack


def create_webhook(stack: Any, user: Any, receiver: Receiver, events: list[str] | None = None) -> dict[str, Any]:
    endpoint = data_of(graphql(stack.url, CREATE, {"url": receiver.url, "events": events}, user.headers))[
        "createWebhook"
    ]
    receiver.secret = endpoint["secret"]
    return endpoint


def deliveries(stack: Any, user: Any, endpoint_id: str) -> list[dict[str, Any]]:
    return data_of(graphql(stack.url, DELIVERIES, {"id": endpoint_id}, user.headers))["webhookDeliveries"]


def wait_delivery(stack: Any, user: Any, endpoint_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        found = deliveries(stack, user, endpoint_id)
        return found[0] if found and found[0]["status"] == status else None

    return wait_until(settled, timeout=timeout, what=f"a delivery of {endpoint_id} to be {status}")


def test_500_then_200_is_one_event_two_attempts_one_id(make_stack, api_user, receivers) -> None:
    stack = webhook_stack(make_stack)
    receiver = receivers(["500", "200"])
    endpoint = create_webhook(stack, api_user, receiver)
    assert endpoint["events"] == ["UPLOAD_COMPLETED", "UPLOAD_FAILED", "UPLOAD_CANCELLED"]
    assert endpoint["secret"].startswith("whsec_")

    upload = data_of(upload_file(stack.url, b"notify me", headers=api_user.headers))["uploadFile"]
    first, second = receiver.wait_for(2)
    assert first.verified and second.verified
    assert first.webhook_id == second.webhook_id
    assert first.body == second.body  # the same event, byte for byte
    assert 0.25 <= second.at - first.at < 10  # backed off, and the first retry within 10 s
    payload = second.payload
    assert payload["type"] == "upload.completed"
    assert payload["data"]["id"] == upload["id"]
    assert payload["data"]["status"] == "COMPLETED"
    assert payload["data"]["size"] == 9
    assert payload["data"]["sha256"] == upload["sha256"]

    delivery = wait_delivery(stack, api_user, endpoint["id"], "DELIVERED")
    assert delivery["event"] == "UPLOAD_COMPLETED"
    assert delivery["uploadId"] == upload["id"]
    assert delivery["attempts"] == 2
    assert delivery["responseStatus"] == 200
    assert delivery["lastError"] is None
    assert delivery["deliveredAt"] is not None
    attempts = list(WebhookAttempt.objects.filter(delivery_id=delivery["id"]).values_list("response_status", "error"))
    assert attempts == [(500, "answered 500"), (200, None)]
    assert first.webhook_id == f"msg_{delivery['id'].replace('-', '')}"
    # Nothing more is sent once delivered.
    assert len(receiver.received) == 2

    metrics = httpx.get(f"{stack.url}/metrics", timeout=10).text
    assert 'webhook_deliveries{status="DELIVERED"}' in metrics
    assert "webhook_attempts_total" in metrics


def test_a_hanging_receiver_times_out_and_never_delays_a_transfer(make_stack, api_user, receivers) -> None:
    stack = webhook_stack(make_stack)
    receiver = receivers(["hang", "200"])
    endpoint = create_webhook(stack, api_user, receiver)

    first = data_of(upload_file(stack.url, b"first", headers=api_user.headers))["uploadFile"]
    receiver.wait_for(1)  # the webhook worker is now held by the hanging receiver
    second = data_of(upload_file(stack.url, b"second", headers=api_user.headers))["uploadFile"]
    upload_wait_for_status(stack.url, api_user.headers, second["id"], {"COMPLETED"}, timeout=30)
    # The second transfer finished while the receiver was still hanging on the first delivery.
    assert receiver.hanging == 1, "the transfer should not have waited for the receiver"

    delivery = WebhookDelivery.objects.get(endpoint_id=endpoint["id"], upload_id=first["id"])
    wait_until(
        lambda: WebhookDelivery.objects.get(id=delivery.id).status == DeliveryStatus.DELIVERED,
        timeout=30,
        what="the first upload's delivery to be delivered",
    )
    attempts = list(WebhookAttempt.objects.filter(delivery_id=delivery.id))
    assert attempts[0].error == "timed out waiting for the answer"
    assert attempts[0].response_status is None
    assert 1.8 < (attempts[0].finished_at - attempts[0].started_at).total_seconds() < 6
    assert attempts[-1].response_status == 200
    ids = {r.webhook_id for r in receiver.received if r.payload["data"]["id"] == first["id"]}
    assert len(ids) == 1
    assert all(r.verified for r in receiver.received)


def test_a_receiver_down_and_back_gets_every_event(make_stack, api_user, receivers) -> None:
    stack = webhook_stack(make_stack)
    receiver = Receiver()  # not listening yet: its port refuses connections
    endpoint = create_webhook(stack, api_user, receiver)
    uploads = [
        data_of(upload_file(stack.url, bytes([i]) * 100, headers=api_user.headers))["uploadFile"] for i in (1, 2)
    ]

    def failing_attempts() -> bool:
        rows = WebhookDelivery.objects.filter(endpoint_id=endpoint["id"])
        return len(rows) == 2 and all(r.attempts >= 3 and r.status == DeliveryStatus.PENDING for r in rows)

    wait_until(failing_attempts, timeout=60, what="both deliveries to fail three attempts")
    finished = WebhookAttempt.objects.filter(delivery__endpoint_id=endpoint["id"], finished_at__isnull=False)
    errors = set(finished.values_list("error", flat=True))  # (a later attempt may be running right now)
    assert all(e.startswith("could not connect") for e in errors), errors

    back = receivers(port=receiver.port)
    back.secret = receiver.secret
    got = back.wait_for(2, timeout=60)
    assert {r.payload["data"]["id"] for r in got} == {u["id"] for u in uploads}
    assert all(r.verified for r in got)
    assert len({r.webhook_id for r in got}) == 2
    for row in WebhookDelivery.objects.filter(endpoint_id=endpoint["id"]):
        wait_until(lambda row=row: WebhookDelivery.objects.get(id=row.id).status == DeliveryStatus.DELIVERED)


def test_a_failing_receiver_is_given_up_after_the_max_attempts(make_stack, api_user, receivers) -> None:
    stack = webhook_stack(make_stack, WEBHOOK_MAX_ATTEMPTS="3")
    receiver = receivers(["503"])
    endpoint = create_webhook(stack, api_user, receiver)
    data_of(upload_file(stack.url, b"never heard", headers=api_user.headers))
    delivery = wait_delivery(stack, api_user, endpoint["id"], "FAILED")
    assert delivery["attempts"] == 3
    assert delivery["responseStatus"] == 503
    assert delivery["lastError"] == "answered 503"
    assert len(receiver.received) == 3
    assert len({r.webhook_id for r in receiver.received}) == 1


def test_a_redirect_is_not_followed(make_stack, api_user, receivers) -> None:
    stack = webhook_stack(make_stack, WEBHOOK_MAX_ATTEMPTS="1")
    elsewhere = receivers(["200"])
    receiver = receivers([f"302 {elsewhere.url}"])
    endpoint = create_webhook(stack, api_user, receiver)
    data_of(upload_file(stack.url, b"go elsewhere", headers=api_user.headers))
    delivery = wait_delivery(stack, api_user, endpoint["id"], "FAILED")
    assert delivery["responseStatus"] == 302
    assert "not followed" in delivery["lastError"]
    assert elsewhere.received == []


def test_cancelled_and_failed_events_go_to_the_endpoints_that_want_them(make_stack, api_user, receivers) -> None:
    stack = make_stack(env=FAST_RETRIES, workers=0)  # no transfer worker: the upload stays QUEUED
    stack.add_webhook_worker()
    cancelled = receivers()
    completed_only = receivers()
    endpoint = create_webhook(stack, api_user, cancelled, events=["UPLOAD_CANCELLED"])
    create_webhook(stack, api_user, completed_only, events=["UPLOAD_COMPLETED"])
    upload = data_of(upload_file(stack.url, b"to cancel", headers=api_user.headers))["uploadFile"]
    data_of(graphql(stack.url, CANCEL, {"id": upload["id"]}, api_user.headers))
    (event,) = cancelled.wait_for(1)
    assert event.verified
    assert event.payload["type"] == "upload.cancelled"
    assert event.payload["data"]["status"] == "CANCELLED"
    assert wait_delivery(stack, api_user, endpoint["id"], "DELIVERED")["event"] == "UPLOAD_CANCELLED"
    assert completed_only.received == []


def test_a_private_address_is_refused_without_the_setting(make_stack, api_user, receivers) -> None:
    stack = make_stack(env={"WEBHOOK_RETRY_BASE_SECONDS": "0.5", "WEBHOOK_MAX_ATTEMPTS": "2"}, workers=1)
    stack.add_webhook_worker()
    receiver = receivers()
    for url in (
        receiver.url,  # loopback
        f"http://localhost:{receiver.port}/",  # a name resolving to loopback
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data/",  # link-local: the cloud metadata address
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0:9000/",
        "ftp://example.com/hook",
        "not a url",
        "http://user:pw@example.com/",
    ):
        refused = graphql(stack.url, CREATE, {"url": url}, api_user.headers)
        assert error_codes(refused) == ["BAD_USER_INPUT"], (url, refused.json())
    assert not WebhookEndpoint.objects.filter(owner=api_user.user).exists()

    # Checked again at delivery: an endpoint that passed once (DNS said otherwise then) is not sent to.
    endpoint = WebhookEndpoint.objects.create(
        owner=api_user.user, url=receiver.url, events=["UPLOAD_COMPLETED"], secret="whsec_" + "A" * 43
    )
    data_of(upload_file(stack.url, b"to a private address", headers=api_user.headers))
    delivery = wait_delivery(stack, api_user, str(endpoint.id), "FAILED")
    assert delivery["lastError"].startswith("not sent: the host 127.0.0.1 resolves to 127.0.0.1")
    assert delivery["responseStatus"] is None
    assert receiver.received == []


def test_webhooks_list_delete_and_ownership(stack, make_user) -> None:
    owner, other = make_user(), make_user()
    url = "http://93.184.215.14/hooks"  # a public address; never contacted by this test
    created = data_of(graphql(stack.url, CREATE, {"url": url, "events": ["UPLOAD_FAILED"]}, owner.headers))[
        "createWebhook"
    ]
    listed = data_of(graphql(stack.url, LIST, headers=owner.headers))["webhooks"]
    assert listed == [{**created, "secret": None}]  # the secret is answered once, at creation
    assert data_of(graphql(stack.url, LIST, headers=other.headers))["webhooks"] == []
    assert error_codes(graphql(stack.url, DELIVERIES, {"id": created["id"]}, other.headers)) == ["NOT_FOUND"]
    assert error_codes(graphql(stack.url, DELETE, {"id": created["id"]}, other.headers)) == ["NOT_FOUND"]
    assert error_codes(graphql(stack.url, DELIVERIES, {"id": "nope"}, owner.headers)) == ["BAD_USER_INPUT"]
    too_many = graphql(stack.url, DELIVERIES, {"id": created["id"], "first": 101}, owner.headers)
    assert error_codes(too_many) == ["BAD_USER_INPUT"]
    assert deliveries(stack, owner, created["id"]) == []
    assert error_codes(graphql(stack.url, CREATE, {"url": url, "events": []}, owner.headers)) == ["BAD_USER_INPUT"]
    assert error_codes(graphql(stack.url, LIST)) == ["UNAUTHENTICATED"]

    assert data_of(graphql(stack.url, DELETE, {"id": created["id"]}, owner.headers))["deleteWebhook"] is True
    assert data_of(graphql(stack.url, LIST, headers=owner.headers))["webhooks"] == []
    assert error_codes(graphql(stack.url, DELETE, {"id": created["id"]}, owner.headers)) == ["NOT_FOUND"]
