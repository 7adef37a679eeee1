"""`manage.py sweep_uploads [--dry-run] [--grace SECONDS]`: the periodic sweep, run once by hand."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from backend.uploads.services import SWEEP_GRACE_SECONDS, upload_sweep


class Command(BaseCommand):
    help = (
        "Remove staged bytes, temporary files and open store objects that no upload needs: COMPLETED "
        "uploads' staged bytes, FAILED/CANCELLED uploads kept past UPLOAD_STAGING_TTL, and orphans "
        "older than the grace period. Prints one line per item."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="print what would be removed; change nothing")
        parser.add_argument(
            "--grace",
            type=float,
            default=SWEEP_GRACE_SECONDS,
            metavar="SECONDS",
            help=f"leave orphan files younger than this alone (default {int(SWEEP_GRACE_SECONDS)})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = upload_sweep(dry_run=options["dry_run"], grace_seconds=options["grace"])
        verb = "would remove" if report.dry_run else "removed"
        for item in report.items:
            size = f"; {item.size} bytes" if item.size else ""
            self.stdout.write(f"{verb} {item.kind} {item.target} ({item.reason}{size})")
        freed = "would be freed" if report.dry_run else "freed"
        self.stdout.write(f"{len(report.items)} items, {report.freed_bytes} bytes {freed}")
