"""The ASGI application: HTTP through Django's handler (it streams uploads to staging), websockets through Channels."""

from __future__ import annotations

import os
from datetime import timedelta

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from backend.limits import RequestLimits  # noqa: E402
from backend.tus.app import TusRouter  # noqa: E402
from schema import schema  # noqa: E402
from schema.consumers import UploadGraphQLWSConsumer  # noqa: E402

# No AuthMiddlewareStack: the consumer reads the session cookie itself, only when a socket's
# connection_init carries no bearer token (schema/consumers.py, `_session_key`).
websocket_application = URLRouter(
    [
        re_path(
            r"^graphql/?$",
            UploadGraphQLWSConsumer.as_asgi(
                schema=schema,
                connection_init_wait_timeout=timedelta(seconds=10),
                max_subscriptions_per_connection=50,
            ),
        )
    ]
)

# /uploads (tus) bypasses Django's handler, which would read each PATCH body whole before any view.
http_application = TusRouter(fallback=RequestLimits(django_application))
application = ProtocolTypeRouter({"http": http_application, "websocket": websocket_application})
