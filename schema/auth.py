"""Who the caller is, for resolvers: one check every protected field uses."""

from __future__ import annotations

from django.contrib.auth.models import User

from backend.uploads.errors import Unauthenticated
from schema.context import Info


def require_user(info: Info) -> User:
    user = info.context.user
    if user is None or not user.is_authenticated:
        raise Unauthenticated("authentication required: send Authorization: Bearer <token>")
    return user
