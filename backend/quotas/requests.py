"""The quota's early refusal: a multipart upload whose Content-Length alone passes the caller's quota.

The request-limits middleware (backend/limits.py) asks this before Django reads the body, so such a
request is answered 413 QUOTA_EXCEEDED without a byte of it being read or staged. It only refuses
what could never fit: the exact check is `quota_reserve`, once the file is staged.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import User
from django.db import close_old_connections
from django.db.models import Sum
from django.db.models.functions import Coalesce

from backend.quotas.selectors import QuotaUsage, quota_limit_for, quota_used_bytes
from backend.tokens.bearer import bearer_token
from backend.tokens.services import token_user
from backend.uploads.models import FileUpload


def request_user(*, headers: dict[str, str]) -> User | None:
    """The user a request's credentials name, as the GraphQL view will find them (a bearer token decides)."""
    authorization = headers.get("authorization", "")
    if authorization:
        token = bearer_token(authorization)
        return token_user(token=token) if token else None
    try:
        cookies = SimpleCookie(headers.get("cookie", ""))
    except CookieError:
        return None
    morsel = cookies.get(settings.SESSION_COOKIE_NAME)
    if morsel is None:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(morsel.value)
    user = get_user(SimpleNamespace(session=store))  # type: ignore[arg-type]
    return user if isinstance(user, User) and user.is_active else None


def quota_room_for_request(*, headers: dict[str, str]) -> tuple[User | None, int | None]:
    """(the sender, `quota_room` for them), with a request's connection handling (this runs before Django's handler)."""
    close_old_connections()
    try:
        user = request_user(headers=headers)
        return user, quota_room(user=user)
    finally:
        close_old_connections()


def quota_room(*, user: User | None) -> int | None:
    """The most file bytes this request could carry within its sender's quota; None: no bound.

    The bytes a user may still send are their free quota, plus what their uploads still
    RECEIVING may yet get in chunks (those bytes were reserved when the upload was created, so a
    chunk of one must not be refused here).
    """
    if user is None:
        return None  # no credentials, or bad ones: the view answers that
    limit = quota_limit_for(user=user)
    if limit is None:
        return None  # unlimited (the default): nothing to sum
    free = QuotaUsage(used_bytes=quota_used_bytes(user=user), limit_bytes=limit).free_bytes or 0
    receiving = FileUpload.objects.filter(owner_id=user.pk, status="RECEIVING")
    return free + int(receiving.aggregate(n=Coalesce(Sum("size"), 0))["n"])
