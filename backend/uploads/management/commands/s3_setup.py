from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from backend.uploads.storage import StorageError
from backend.uploads.storage.s3_bucket import s3_bucket_cors, s3_bucket_setup
from backend.uploads.storage.s3_client import s3_clients_from_settings


def _default_days() -> int:
    # A FAILED upload keeps its multipart upload for `retryUpload` as long as its staged bytes
    # live (UPLOAD_STAGING_TTL): the backstop must not abort it before then.
    return max(1, math.ceil(settings.UPLOAD_STAGING_TTL / 86400)) + 1


class Command(BaseCommand):
    help = (
        "Prepare S3_BUCKET: create it with --create-bucket if missing, and put the lifecycle rule "
        "that aborts multipart uploads left incomplete (where the store supports it), and the CORS rule for "
        "CORS_ALLOWED_ORIGINS that lets browsers put parts straight into it (exposing ETag)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--create-bucket", action="store_true", help="create the bucket if it does not exist")
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="abort incomplete multipart uploads this many days after they start "
            "(default: UPLOAD_STAGING_TTL in days, plus one)",
        )

        parser.add_argument(
            "--cors-origin",
            action="append",
            default=[],
            help="a browser origin allowed to upload straight to the bucket, besides CORS_ALLOWED_ORIGINS (repeatable)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"] if options["days"] is not None else _default_days()
        if days < 1:
            raise CommandError("--days must be at least 1")
        try:
            client, _ = s3_clients_from_settings()
            report = s3_bucket_setup(
                client=client,
                bucket=settings.S3_BUCKET,
                region=settings.S3_REGION,
                create_bucket=options["create_bucket"],
                days=days,
            )
            origins = list(dict.fromkeys([*settings.CORS_ALLOWED_ORIGINS, *options["cors_origin"]]))
            report.append(s3_bucket_cors(client=client, bucket=settings.S3_BUCKET, origins=origins))
        except (ImproperlyConfigured, StorageError) as exc:
            raise CommandError(str(exc)) from exc
        for line in report:
            self.stdout.write(line)
