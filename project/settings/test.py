"""Test settings: the suite's own SQLite file and embedded server under var/test/.

With DATABASE_URL / REDIS_URL set (as CI's second run does), PostgreSQL and Redis.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("BEATKEEPER_VAR_DIR", str(Path(__file__).resolve().parents[2] / "var" / "test"))

from project.settings.base import *  # noqa: E402, F403
from project.settings.base import DATABASES  # noqa: E402

SECRET_KEY = "test-only-secret-key-not-for-production"  # noqa: S105
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # One file shared with the worker and beat subprocesses the tests start.
    DATABASES["default"]["TEST"] = {"NAME": DATABASES["default"]["NAME"]}
