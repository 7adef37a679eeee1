"""Reading a bearer credential: the one place that parses `Authorization: Bearer <token>`.

The GraphQL view (HTTP), the websocket consumer (`connection_init` payload) and the request
limits in front of Django (quotas) all read the credential through `bearer_token`.
"""

from __future__ import annotations

# Where the request limits (backend/limits.py), which look a multipart request's bearer token up
# before the body is read (for its sender's quota), leave what they found for the GraphQL view:
# `(the Authorization value, its user or None)`. The view reuses the user only for that exact
# value, so the token is looked up once per request, not again after the body.
BEARER_USER_SCOPE_KEY = "upload_service.bearer_user"


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization` value, or None unless its scheme is Bearer (any case) with a token."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
