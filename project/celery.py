"""The Celery app: `celery -A project worker` and `celery -A project beat`.

All Celery configuration lives in Django settings under the CELERY_ prefix
(project/settings/base.py).
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# A poison message is set aside in the dead letters, never a crash loop (scheduler_app/runs/poison.py);
# named, not imported: the step loads with the worker's consumer, after Django is set up.
app.steps["consumer"].add("scheduler_app.runs.poison:PoisonGuard")
