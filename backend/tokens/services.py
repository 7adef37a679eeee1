"""Issuing, checking and revoking API tokens."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db.models import Q, QuerySet
from django.utils import timezone

from backend.tokens.models import ApiToken


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _live_tokens() -> QuerySet[ApiToken]:
    """The tokens neither revoked nor expired (whether their user is active is the caller's)."""
    return ApiToken.objects.filter(revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    )


def token_create(*, user: User, expires_in_days: float | None = None) -> str:
    """Issue a new token for `user` and return it; this is the only time it is seen in clear."""
    return token_issue(user=user, expires_in_days=expires_in_days)[1]


def token_issue(*, user: User, expires_in_days: float | None = None) -> tuple[ApiToken, str]:
    """Issue a new token for `user`: its row and the token itself, seen in clear only here."""
    token = secrets.token_urlsafe(32)
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    row = ApiToken.objects.create(user=user, token_hash=_token_hash(token), prefix=token[:8], expires_at=expires_at)
    return row, token


def token_user(*, token: str) -> User | None:
    """The active user a token belongs to, or None if it is unknown, expired or revoked."""
    if not token or len(token) > 256:
        return None
    found = _live_tokens().select_related("user").filter(token_hash=_token_hash(token)).first()
    if found is None or not found.user.is_active:
        return None
    return found.user


def token_revoke(*, token: str) -> int:
    """Revoke one token; returns how many were revoked (0 or 1)."""
    return ApiToken.objects.filter(token_hash=_token_hash(token), revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


def token_revoke_many(*, token_ids: Iterable[int]) -> int:
    """Revoke the live tokens among `token_ids` (rows, as the admin lists them); returns how many."""
    return ApiToken.objects.filter(id__in=list(token_ids), revoked_at__isnull=True).update(revoked_at=timezone.now())


def token_revoke_for_user(*, username: str) -> int:
    """Revoke every live token of a user; returns how many."""
    return ApiToken.objects.filter(user__username=username, revoked_at__isnull=True).update(revoked_at=timezone.now())


def dev_user_ensure(*, username: str, password: str, token: str | None) -> str:
    """Make `username` an active superuser with `password` in the database in use, and return a
    token of theirs that this database accepts: `token` itself when it does, else a new one.

    For `make run`'s development login, which must work whatever database it now runs on (a new
    SQLite file, another `DATABASE_URL`): a missing user is created, a changed password, a
    deactivated user or a revoked, expired or unknown token are repaired.
    """
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username=username)
    repaired = not user.check_password(password)
    if repaired:
        user.set_password(password)
    if not (user.is_active and user.is_staff and user.is_superuser):
        user.is_active = user.is_staff = user.is_superuser = True
        repaired = True
    if repaired:
        user.save()
    if token:
        owner = token_user(token=token)
        if owner is not None and owner.pk == user.pk:
            return token
    return token_create(user=user)


def user_get_or_create(*, username: str, create: bool) -> User | None:
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    if user is None and create:
        user = user_model.objects.create_user(username=username)
    return user


def token_users(*, tokens: Iterable[str]) -> dict[str, int]:
    """The tokens among `tokens` that are live (known, not expired, not revoked, their user active),
    each with its user's id: `token_user` for many tokens in a few queries."""
    by_hash = {_token_hash(token): token for token in tokens if token and len(token) <= 256}
    hashes = list(by_hash)
    live: dict[str, int] = {}
    for start in range(0, len(hashes), 500):  # SQLite allows 999 parameters per statement
        page = hashes[start : start + 500]
        rows = _live_tokens().filter(token_hash__in=page, user__is_active=True).values_list("token_hash", "user_id")
        live.update((by_hash[token_hash], user_id) for token_hash, user_id in rows)
    return live
