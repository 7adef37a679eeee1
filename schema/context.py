"""The GraphQL context, typed once: who is calling, over which request or websocket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import strawberry
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse


@dataclass
class Context:
    request: HttpRequest | Any
    response: HttpResponse | None = None
    user: User | None = None
    base_url: str | None = None
    connection_params: dict[str, Any] = field(default_factory=dict)
    ws: Any = None


Info = strawberry.Info[Context, None]
