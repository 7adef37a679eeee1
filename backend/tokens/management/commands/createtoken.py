from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from backend.tokens.services import token_create, user_get_or_create


class Command(BaseCommand):
    help = "Create an API token for a user; the token is printed alone on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--create", action="store_true", help="create the user if missing")
        parser.add_argument("--expires", type=float, metavar="DAYS", help="expire after DAYS days")

    def handle(self, *args: Any, **options: Any) -> None:
        user = user_get_or_create(username=options["username"], create=options["create"])
        if user is None:
            raise CommandError(f"no user {options['username']!r} (use --create to make one)")
        token = token_create(user=user, expires_in_days=options["expires"])
        self.stdout.write(token)
