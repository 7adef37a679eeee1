"""Standard Webhooks signatures, with the `standardwebhooks` package (CONTRACT section 10)."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from standardwebhooks.webhooks import Webhook

# The specification asks for at least 24 random bytes; base64, prefixed `whsec_`.
SECRET_BYTES = 32


def secret_generate() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signed_headers(*, secret: str, message_id: str, body: str, at: datetime) -> dict[str, str]:
    """The headers of one attempt: `webhook-id` (the same for every attempt), its timestamp and signature."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id=message_id, timestamp=at, data=body),
        "content-type": "application/json",
        "user-agent": "upload-service-webhooks/1",
    }
