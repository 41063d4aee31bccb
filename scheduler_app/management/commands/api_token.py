from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token

from scheduler_app import audit, limits


class Command(BaseCommand):
    help = (
        "Show, create, rotate or revoke a user's API token (one per user): prints the key, creating "
        "it if the user has none; --quiet prints only the key, for TOKEN=$(manage.py api_token admin --quiet). "
        "Tokens are also managed in the admin (Auth Token)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--rotate", action="store_true", help="Replace the user's token with a new one.")
        action.add_argument("--revoke", action="store_true", help="Delete the user's token; calls with it get 401.")
        parser.add_argument("--quiet", action="store_true", help="Print only the key (nothing else, on stdout).")

    def handle(self, *args: Any, username: str, rotate: bool, revoke: bool, quiet: bool, **options: Any) -> None:
        user = staff_user(username)
        if revoke or rotate:
            deleted, _ = Token.objects.filter(user=user).delete()
            if deleted:
                record(user, "revoke" if revoke else "rotate")
            if revoke:
                if not quiet:
                    self.stdout.write(f"revoked the token of {username!r}" if deleted else f"{username!r} had no token")
                return
        token, created = Token.objects.get_or_create(user=user)
        if created and not rotate:  # a rotation was recorded as such
            record(user, "create")
        if quiet:
            self.stdout.write(token.key)
            return
        self.stdout.write(f"API token of {username!r}: {token.key}")
        made = "rotated" if rotate else "created" if created else f"created {token.created:%Y-%m-%d}"
        self.stdout.write(f"({made}; --rotate for a new one.) Send it as `Authorization: Token <key>`.")


def record(user: Any, action: str) -> None:
    """The token's change in the audit trail (via="command"); never its key."""
    audit.record(None, action, user, object_type="token", changes={"user": user.get_username()}, via="command")


def staff_user(username: str) -> Any:
    try:
        limits.check_text("username", username, 150)  # Django's usernames are at most 150 characters
    except limits.LimitExceeded as exc:
        raise CommandError(f"{exc} No token was changed.") from None
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"no user named {username!r}; create one first (manage.py createsuperuser).")
    if not user.is_staff:
        raise CommandError(f"{username!r} is not staff; the API answers staff users only.")
    return user
