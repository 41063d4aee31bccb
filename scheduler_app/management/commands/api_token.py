from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token

from scheduler_app import limits


class Command(BaseCommand):
    help = (
        "Show, create, rotate or revoke a user's API token (one per user). The key is printed "
        "when it is created or rotated. Tokens are also managed in the admin (Auth Token)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--rotate", action="store_true", help="Replace the user's token with a new one.")
        action.add_argument("--revoke", action="store_true", help="Delete the user's token; calls with it get 401.")

    def handle(self, *args: Any, username: str, rotate: bool, revoke: bool, **options: Any) -> None:
        try:
            limits.check_text("username", username, 150)  # Django's usernames are at most 150 characters
        except limits.LimitExceeded as exc:
            raise CommandError(f"{exc} No token was changed.") from None
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}; create one first (manage.py createsuperuser).")
        if not user.is_staff:
            raise CommandError(f"{username!r} is not staff; the API answers staff users only.")
        if revoke or rotate:
            deleted, _ = Token.objects.filter(user=user).delete()
            if revoke:
                self.stdout.write(f"revoked the token of {username!r}" if deleted else f"{username!r} had no token")
                return
        token, created = Token.objects.get_or_create(user=user)
        if created:
            self.stdout.write(f"API token of {username!r}: {token.key}")
            self.stdout.write("Send it as `Authorization: Token <key>`.")
        else:
            self.stdout.write(
                f"{username!r} already has a token (created {token.created:%Y-%m-%d}); --rotate for a new one."
            )
