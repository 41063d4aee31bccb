"""The local administrator account that `make run` creates for a first log-in."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model


@dataclass(frozen=True)
class AdminAccount:
    username: str
    created: bool
    password: str | None  # set only when this call chose or changed the password


def ensure_admin(username: str, password: str = "", email: str = "") -> AdminAccount:
    """Create the superuser if missing (with `password`, or a generated one); if it
    exists and a password is given, set it; otherwise leave the account alone."""
    users = get_user_model()
    user = users.objects.filter(username=username).first()
    if user is None:
        chosen = password or secrets.token_urlsafe(12)
        users.objects.create_superuser(username=username, email=email, password=chosen)
        return AdminAccount(username, created=True, password=chosen)
    if password and not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])
        return AdminAccount(username, created=False, password=password)
    return AdminAccount(username, created=False, password=None)
