"""Reading a bearer credential: the one place that parses `Authorization: Bearer <token>`.

The GraphQL view (HTTP), the websocket consumer (`connection_init` payload) and the request
limits in front of Django (quotas) all read the credential through `bearer_token`.
"""

from __future__ import annotations


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization` value, or None unless its scheme is Bearer (any case) with a token."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
