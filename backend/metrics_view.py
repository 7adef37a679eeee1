from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from backend.uploads.metrics import UploadCollector
from backend.webhooks.metrics import WebhookCollector


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of the upload metrics (CONTRACT section 1)."""
    registry = CollectorRegistry()
    registry.register(UploadCollector())
    registry.register(WebhookCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
