"""Liveness and readiness probes (CONTRACT section 1)."""

from __future__ import annotations

import django_rq
from django.db import connection
from django.http import HttpRequest, JsonResponse

from backend.uploads.staging import staging_short_of_space
from backend.uploads.storage import get_storage


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"redis": _redis, "database": _database, "storage": _storage, "staging": _staging}
    report: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            report[name] = "ok"
        except Exception as exc:
            report[name] = f"error: {exc}"[:200]
    ready = all(v == "ok" for v in report.values())
    return JsonResponse({"status": "ok" if ready else "error", **report}, status=200 if ready else 503)


def _redis() -> None:
    django_rq.get_connection("default").ping()


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _storage() -> None:
    get_storage().check()


def _staging() -> None:
    free = staging_short_of_space()
    if free is not None:
        raise RuntimeError(f"only {free} bytes free")
