from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class UploadStatus(models.TextChoices):
    RECEIVING = "RECEIVING"
    QUEUED = "QUEUED"
    UPLOADING = "UPLOADING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class UploadMode(models.TextChoices):
    """How the bytes reach the server: one request, in chunks (tus, uploadChunk), or straight to the bucket."""

    SINGLE = "SINGLE"
    RESUMABLE = "RESUMABLE"
    DIRECT = "DIRECT"


class ConcatRole(models.TextChoices):
    """A tus concatenation role: a piece (`partial`, never listed or transferred) or the whole (`final`)."""

    NONE = ""
    PARTIAL = "partial"
    FINAL = "final"


ACTIVE_STATUSES = (UploadStatus.RECEIVING, UploadStatus.QUEUED, UploadStatus.UPLOADING)
TERMINAL_STATUSES = (UploadStatus.COMPLETED, UploadStatus.FAILED, UploadStatus.CANCELLED)


class FileUpload(models.Model):
    """One file a client sent, and the state of its copy into the bucket.

    `sequence` numbers every progress event of this upload over its whole life; it only ever
    grows, through conditional updates in `services.py`. `claim` fences transfers: a job run
    owns the upload only while the row still carries the claim it wrote.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads")
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255)
    size = models.BigIntegerField(help_text="0 while a deferred length is unknown (length_deferred)")
    sha256 = models.CharField(max_length=64, null=True, blank=True, help_text="null until every byte is in and hashed")
    status = models.CharField(max_length=16, choices=UploadStatus.choices, default=UploadStatus.QUEUED)
    mode = models.CharField(max_length=16, choices=UploadMode.choices, default=UploadMode.SINGLE)
    bytes_received = models.BigIntegerField(default=0, help_text="bytes the server holds from the client")
    length_deferred = models.BooleanField(default=False, help_text="size not known yet (tus Upload-Defer-Length)")
    expected_sha256 = models.CharField(max_length=64, null=True, blank=True, help_text="declared by the client")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="RECEIVING: given up if no byte arrives by then")
    concat_role = models.CharField(max_length=8, choices=ConcatRole.choices, default=ConcatRole.NONE, blank=True)
    concat_header = models.TextField(blank=True, default="", help_text="tus Upload-Concat as the client sent it")
    tus_metadata = models.TextField(blank=True, default="", help_text="tus Upload-Metadata as the client sent it")
    bytes_uploaded = models.BigIntegerField(default=0)
    parts_uploaded = models.IntegerField(default=0)
    parts_total = models.IntegerField(default=0)
    part_size = models.BigIntegerField(default=0)
    attempts = models.IntegerField(default=0)
    error = models.TextField(null=True, blank=True)
    storage_backend = models.CharField(max_length=16)
    storage_key = models.CharField(max_length=255)
    storage_upload_id = models.CharField(max_length=1024, null=True, blank=True)
    sequence = models.IntegerField(default=0)
    claim = models.UUIDField(null=True, blank=True)
    job_id = models.CharField(max_length=128, null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    staged_at = models.DateTimeField(null=True, blank=True, help_text="When the staged bytes were kept; null once gone")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "-created_at", "-id"]),
            models.Index(fields=["status", "heartbeat_at"]),
            models.Index(fields=["status", "expires_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.filename} ({self.id}, {self.status})"

    @property
    def known_size(self) -> int:
        """The size clients see: 0 while the length is deferred (`size` then holds the quota reserved)."""
        return 0 if self.length_deferred else self.size


class UploadPart(models.Model):
    """A part the bucket confirmed: the ledger a resumed transfer trusts."""

    upload = models.ForeignKey(FileUpload, on_delete=models.CASCADE, related_name="parts")
    part_number = models.IntegerField()
    size = models.BigIntegerField()
    etag = models.CharField(max_length=255)
    checksum = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["part_number"]
        constraints = [models.UniqueConstraint(fields=["upload", "part_number"], name="uniq_upload_part")]

    def __str__(self) -> str:
        return f"part {self.part_number} of {self.upload_id}"
