from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand

from scheduler_app.local.accounts import ensure_admin


class Command(BaseCommand):
    help = (
        "Create the local administrator if missing: ADMIN_USERNAME (default admin) with "
        "ADMIN_PASSWORD, or a generated password printed once. Used by `make run`."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        account = ensure_admin(
            os.environ.get("ADMIN_USERNAME", "admin"),
            os.environ.get("ADMIN_PASSWORD", ""),
            os.environ.get("ADMIN_EMAIL", ""),
        )
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
