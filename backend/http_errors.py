"""JSON error bodies for requests refused before GraphQL runs (CONTRACT section 4): never HTML."""

from __future__ import annotations

import json

from django.http import JsonResponse


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]}).encode()


def error_response(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"errors": [{"message": message, "extensions": {"code": code}}]}, status=status)
