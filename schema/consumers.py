"""The websocket side of /graphql: subscriptions over graphql-transport-ws (and legacy graphql-ws)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from channels.auth import get_user
from django.conf import settings
from django.http.request import validate_host
from strawberry.channels import GraphQLWSConsumer
from strawberry.exceptions import ConnectionRejectionError

from backend.tokens.services import token_user
from schema.context import Context


class UploadGraphQLWSConsumer(GraphQLWSConsumer):
    """Authenticates at `connection_init` (bearer token in the payload, else the session cookie)."""

    async def get_context(self, request: Any, response: Any) -> Context:  # type: ignore[override]
        return Context(request=request, ws=request)

    async def on_ws_connect(self, context: Context) -> None:  # type: ignore[override]
        params = context.connection_params if isinstance(context.connection_params, dict) else {}
        authorization = next((v for k, v in params.items() if str(k).lower() == "authorization"), None)
        if authorization is not None:
            scheme, _, token = str(authorization).partition(" ")
            user = await sync_to_async(token_user)(token=token.strip()) if scheme.lower() == "bearer" else None
        else:
            user = await _session_user(self.scope)
        if user is None:
            self.credential_refused = True
            raise ConnectionRejectionError({"message": "authentication failed"})
        context.user = user

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close 4403 after a refused credential on both protocols.

        graphql-transport-ws already closes with 4403; strawberry's legacy graphql-ws handler sends
        `connection_error` and then closes with 1011 (internal error), which the contract replaces.
        """
        if getattr(self, "credential_refused", False):
            code, reason = 4403, "Forbidden"
        await super().close(code=code, reason=reason)

    def is_websocket_origin_allowed(self, request: Any, origin: str) -> bool:
        """A browser's Origin must name a host of ALLOWED_HOSTS (no Origin: a non-browser client)."""
        hostname = urlsplit(origin).hostname
        if hostname and ":" in hostname:
            hostname = f"[{hostname}]"  # ALLOWED_HOSTS spells IPv6 hosts with brackets
        return bool(hostname) and validate_host(hostname, settings.ALLOWED_HOSTS)


async def _session_user(scope: dict[str, Any]) -> Any:
    if "session" not in scope:
        return None
    user = await get_user(scope)
    return user if user.is_authenticated else None
