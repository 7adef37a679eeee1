"""The admin pages of quotas and webhooks over HTTP: an override set through the form takes effect
at once; deliveries and their attempts are shown, read-only, and the endpoint's secret never is."""

from __future__ import annotations

import uuid

from backend.quotas.models import UserQuota
from backend.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.integration.test_admin import Admin, _csrf
from tests.support.client import data_of, error_codes, graphql, upload_file

ME = "{ me { quota { usedBytes limitBytes } } }"


def _staff() -> tuple[str, str]:
    from django.contrib.auth import get_user_model

    username, password = f"admin-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    get_user_model().objects.create_user(username=username, password=password, is_staff=True, is_superuser=True)
    return username, password


def test_a_quota_override_set_in_the_admin_applies_at_once(stack, api_user) -> None:
    admin = Admin(stack.url)
    admin.login(*_staff())
    form = admin.get("/admin/quotas/userquota/add/")
    assert form.status_code == 200
    saved = admin.client.post(
        "/admin/quotas/userquota/add/",
        data={"user": str(api_user.user.pk), "limit_bytes": "10", "csrfmiddlewaretoken": _csrf(form)},
    )
    assert saved.status_code == 200, saved.text[:500]
    assert UserQuota.objects.get(user=api_user.user).limit_bytes == 10
    assert data_of(graphql(stack.url, ME, headers=api_user.headers))["me"]["quota"] == {
        "usedBytes": 0,
        "limitBytes": 10,
    }
    assert error_codes(upload_file(stack.url, b"x" * 11, headers=api_user.headers)) == ["QUOTA_EXCEEDED"]
    listing = admin.get("/admin/quotas/userquota/")
    assert api_user.username in listing.text


def test_deliveries_and_attempts_are_shown_and_the_secret_is_not(stack, api_user) -> None:
    endpoint = WebhookEndpoint.objects.create(
        owner=api_user.user,
        url="https://hooks.example/in",
        events=["UPLOAD_COMPLETED"],
        secret="whsec_c2VjcmV0LXNlY3JldA==",
    )
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint, event="UPLOAD_COMPLETED", upload_id=uuid.uuid4(), payload="{}", attempts=1
    )
    WebhookAttempt.objects.create(
        delivery=delivery, number=1, started_at=delivery.created_at, response_status=503, error="answered 503"
    )
    admin = Admin(stack.url)
    admin.login(*_staff())
    page = admin.get(f"/admin/webhooks/webhookdelivery/{delivery.id}/change/")
    assert page.status_code == 200
    assert delivery.message_id in page.text
    assert "answered 503" in page.text
    assert 'name="status"' not in page.text  # read-only
    endpoint_page = admin.get(f"/admin/webhooks/webhookendpoint/{endpoint.id}/change/")
    assert endpoint_page.status_code == 200
    assert "hooks.example" in endpoint_page.text
    assert endpoint.secret not in endpoint_page.text
    assert admin.get("/admin/webhooks/webhookdelivery/", status="PENDING").status_code == 200
