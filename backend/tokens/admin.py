"""API tokens in the Django admin: issue one (shown once), list them, revoke them.

Only a token's hash is stored, so the admin can show a new token exactly once: in the message
after it is issued. Lists and pages show its first characters, never the hash. Tokens are issued
and revoked through backend/tokens/services.py; rows are never edited or deleted here (a revoked
row stays, so it is clear which token was revoked and when).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from backend.tokens.models import ApiToken
from backend.tokens.services import token_issue, token_revoke_many


class ApiTokenIssueForm(forms.ModelForm):
    """Who the token is for and how long it lives; the admin's add page (the service saves it)."""

    expires_in_days = forms.FloatField(
        required=False, min_value=0.001, help_text="Leave empty for a token that does not expire."
    )

    class Meta:
        model = ApiToken
        fields = ("user",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("__str__", "user", "created_at", "expires_at", "revoked_at", "state")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "created_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "=prefix")
    ordering = ("-created_at",)
    actions = ("revoke_tokens",)
    # Never token_hash.
    fields = ("user", "prefix", "created_at", "expires_at", "revoked_at")
    readonly_fields = fields

    @admin.display(description="state")
    def state(self, token: ApiToken) -> str:
        if token.revoked_at is not None:
            return "revoked"
        if token.expires_at is not None and token.expires_at <= timezone.now():
            return "expired"
        return "live"

    # --- issuing ------------------------------------------------------------------------------

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            return ApiTokenIssueForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ("user", "expires_in_days") if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        """Issue the token through the service; the one time its value is shown is this message."""
        if change:
            raise PermissionDenied
        token, value = token_issue(
            user=form.cleaned_data["user"], expires_in_days=form.cleaned_data.get("expires_in_days")
        )
        self.message_user(
            request,
            f"New token for {token.user}: {value} (copy it now: it is stored hashed and will not be shown again)",
            messages.WARNING,
        )
        return token

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        """Nothing to write: the service saved the token in save_form."""

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Nothing to save: the token has no many-to-many relations and the form was never saved."""

    # --- read-only rows, revocation as the one change -----------------------------------------

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Allowed on the list (it gates the revoke action), never on one row: its page is view-only.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        selected = list(queryset.values_list("id", flat=True))
        revoked = token_revoke_many(token_ids=selected)
        self.message_user(request, f"Revoked {revoked} of {len(selected)} selected tokens.", messages.SUCCESS)
        if revoked < len(selected):
            self.message_user(request, f"{len(selected) - revoked} were already revoked.", messages.WARNING)
