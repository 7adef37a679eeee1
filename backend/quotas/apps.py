from __future__ import annotations

from django.apps import AppConfig


class QuotasConfig(AppConfig):
    name = "backend.quotas"
    label = "quotas"
    verbose_name = "Quotas"
