"""Beat's configuration, refused at start-up when it would undo what the platform keeps.

Registered as a Django system check (every `manage.py` command, the web server's start)
and raised by the scheduler itself, since `celery beat` runs no system checks.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register

RESULT_EXPIRES_REFUSED = (
    "CELERY_RESULT_EXPIRES is not None (unset, Celery's default is one day), but Beatkeeper keeps runs by its own "
    "retention, and Celery's nightly celery.backend_cleanup would delete every run older than that, the kept ones "
    "included."
)
RESULT_EXPIRES_HINT = (
    "Leave CELERY_RESULT_EXPIRES at None. The hourly maintenance.cleanup_old_runs deletes runs older than "
    "RUN_RETENTION_HOURS and keeps the newest RUN_RETENTION_KEEP_LAST of each schedule: set those instead."
)


@register()
def check_result_expires(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not hasattr(settings, "CELERY_RESULT_EXPIRES") or settings.CELERY_RESULT_EXPIRES:
        return [Error(RESULT_EXPIRES_REFUSED, hint=RESULT_EXPIRES_HINT, id="beatkeeper.E001")]
    return []
