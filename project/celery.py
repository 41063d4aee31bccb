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
