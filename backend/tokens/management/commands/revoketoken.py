from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from backend.tokens.services import token_revoke, token_revoke_for_user


class Command(BaseCommand):
    help = "Revoke one API token, or every token of a user with --user."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("token", nargs="?")
        parser.add_argument("--user", metavar="USERNAME")

    def handle(self, *args: Any, **options: Any) -> None:
        if bool(options["token"]) == bool(options["user"]):
            raise CommandError("give either TOKEN or --user USERNAME")
        if options["user"]:
            count = token_revoke_for_user(username=options["user"])
        else:
            count = token_revoke(token=options["token"])
            if count == 0:
                raise CommandError("no such live token")
        self.stdout.write(f"revoked {count} token(s)")
