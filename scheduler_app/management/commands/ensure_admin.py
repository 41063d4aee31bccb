from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from scheduler_app import limits
from scheduler_app.local.accounts import ensure_admin

ENVIRONMENT = [("ADMIN_USERNAME", "admin"), ("ADMIN_PASSWORD", ""), ("ADMIN_EMAIL", "")]
LONGEST = {"ADMIN_USERNAME": 150, "ADMIN_PASSWORD": 4096, "ADMIN_EMAIL": 254}  # Django's columns; a sane password


class Command(BaseCommand):
    help = (
        "Create the local administrator if missing: ADMIN_USERNAME (default admin) with "
        "ADMIN_PASSWORD, or a generated password printed once. Used by `make run`."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        values = [os.environ.get(name, default) for name, default in ENVIRONMENT]
        for (name, _), value in zip(ENVIRONMENT, values, strict=True):
            try:
                limits.check_text(name, value, LONGEST[name])
            except limits.LimitExceeded as exc:
                raise CommandError(f"{exc} No user was created.") from None
        if not values[0].strip():
            raise CommandError("ADMIN_USERNAME: empty; give a user name, or leave it unset for 'admin'.")
        account = ensure_admin(*values)
        if account.created and account.password and not os.environ.get("ADMIN_PASSWORD"):
            self.stdout.write(
                f"created admin user {account.username!r} with password {account.password!r} "
                "(shown only now; change it with `python manage.py changepassword "
                f"{account.username}`)"
            )
        elif account.password:
            self.stdout.write(f"admin user {account.username!r} uses the password from ADMIN_PASSWORD")
        else:
            self.stdout.write(
                f"admin user {account.username!r} exists; its password was shown when it was "
                f"created (reset it with `python manage.py changepassword {account.username}`)"
            )
