"""Uploads in the Django admin: find them, read them, and cancel, retry or delete them.

The admin never writes an upload itself: rows are read-only, and the actions call the same
services the GraphQL mutations call (on behalf of the upload's owner), so the state table, the
claim fencing and the clean-up hold here too. Each row's outcome is reported as a message, a
refused move with its contract code (INVALID_STATE, ...).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from backend.logs import upload_log_context
from backend.uploads.errors import UploadError
from backend.uploads.models import FileUpload, UploadPart, UploadStatus
from backend.uploads.parts import progress_fraction
from backend.uploads.services import upload_cancel, upload_delete, upload_retry
from backend.uploads.storage import StorageError

logger = logging.getLogger(__name__)


class UploadPartInline(admin.TabularInline):
    """The part ledger: what the bucket confirmed, read-only."""

    model = UploadPart
    fields = ("part_number", "size", "etag", "checksum", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# The upload's page: every field, read-only, in sections.
_SECTIONS: tuple[tuple[str | None, tuple[str, ...]], ...] = (
    (None, ("id", "filename", "owner", "status", "error")),
    ("Progress", ("progress_percent", "bytes_uploaded", "size", "parts_uploaded", "parts_total", "part_size")),
    ("Content", ("content_type", "sha256")),
    ("Storage", ("storage_backend", "storage_key", "storage_upload_id")),
    ("Transfer", ("attempts", "sequence", "claim", "job_id", "heartbeat_at", "staged_at")),
    ("Times", ("created_at", "updated_at", "completed_at")),
)


@admin.register(FileUpload)
class FileUploadAdmin(admin.ModelAdmin):
    list_display = (
        "filename",
        "id",
        "owner",
        "status",
        "progress_percent",
        "parts",
        "size",
        "storage_backend",
        "attempts",
        "created_at",
        "updated_at",
    )
    list_filter = ("status", "storage_backend")
    list_select_related = ("owner",)
    # The id is matched whole in get_search_results (a UUID column is stored differently per database).
    search_fields = ("filename", "owner__username")
    search_help_text = "A filename (or part of one), a username, or a whole upload id."
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    inlines = (UploadPartInline,)
    actions = ("cancel_uploads", "retry_uploads", "delete_uploads")
    fieldsets = tuple((title, {"fields": fields}) for title, fields in _SECTIONS)
    readonly_fields = tuple(field for _, fields in _SECTIONS for field in fields)

    # --- read-only: the rows change only through the services ---------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Allowed on the list (it gates the actions), never on one row: its page is view-only.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Allowed on the list (the delete action, through the service); no ORM delete of a row.
        return obj is None and super().has_delete_permission(request)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # an ORM delete would leave the object and staged bytes
        return actions

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[FileUpload], search_term: str
    ) -> tuple[QuerySet[FileUpload], bool]:
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        try:
            upload_id = uuid.UUID(search_term.strip())
        except ValueError:
            return results, may_have_duplicates
        return results | queryset.filter(id=upload_id), may_have_duplicates

    @admin.display(description="progress")
    def progress_percent(self, upload: FileUpload) -> str:
        fraction = progress_fraction(
            bytes_uploaded=upload.bytes_uploaded, size=upload.size, completed=upload.status == UploadStatus.COMPLETED
        )
        return f"{fraction:.1%}"

    @admin.display(description="parts")
    def parts(self, upload: FileUpload) -> str:
        return f"{upload.parts_uploaded}/{upload.parts_total}"

    # --- actions ------------------------------------------------------------------------------

    @admin.action(description="Cancel the selected uploads", permissions=["change"])
    def cancel_uploads(self, request: HttpRequest, queryset: QuerySet[FileUpload]) -> None:
        self._each(request, queryset, upload_cancel, done="Cancelled")

    @admin.action(description="Retry the selected uploads", permissions=["change"])
    def retry_uploads(self, request: HttpRequest, queryset: QuerySet[FileUpload]) -> None:
        self._each(request, queryset, upload_retry, done="Queued again")

    @admin.action(description="Delete the selected uploads (object, staged bytes and row)", permissions=["delete"])
    def delete_uploads(self, request: HttpRequest, queryset: QuerySet[FileUpload]) -> None:
        self._each(request, queryset, upload_delete, done="Deleted")

    def _each(
        self, request: HttpRequest, queryset: QuerySet[FileUpload], service: Callable[..., Any], *, done: str
    ) -> None:
        """Call `service` for each selected upload as its owner; one message per refusal, one for the rest."""
        succeeded = []
        for upload in queryset.select_related("owner"):
            with upload_log_context(upload.id):
                try:
                    service(user=upload.owner, upload_id=upload.id)
                except UploadError as exc:
                    self.message_user(request, f"{upload.filename} ({upload.id}): {exc.code}: {exc}", messages.ERROR)
                    continue
                except StorageError as exc:
                    logger.warning("admin %s on upload %s: the store failed", service.__name__, upload.id)
                    self.message_user(request, f"{upload.filename} ({upload.id}): STORAGE_ERROR: {exc}", messages.ERROR)
                    continue
                logger.info("admin %s: %s upload %s", request.user, service.__name__, upload.id)
                succeeded.append(upload)
        if succeeded:
            names = ", ".join(f"{u.filename} ({u.id})" for u in succeeded)
            self.message_user(request, f"{done} {len(succeeded)}: {names}", messages.SUCCESS)
