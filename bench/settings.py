"""Settings of bench/ledger.py's variants: the local settings, changed by BENCH_VARIANT.

- "platform" (the default): Beatkeeper as shipped;
- "nobackend": the platform's Celery settings with no result backend;
- "stock": Celery's defaults plus django-celery-results' database backend with
  result_extended (what a stock django-celery-results user runs);
- "prefetch4", "noevents", "prefetch4-noevents": the platform without a result backend and
  one of the settings measured changed (bench/ledger.py --settings).
"""

from __future__ import annotations

import os

from project.settings.local import *  # noqa: F403

VARIANT = os.environ.get("BENCH_VARIANT", "platform")

if VARIANT == "stock":
    CELERY_RESULT_BACKEND = "django-db"
    CELERY_TASK_TRACK_STARTED = False
    CELERY_TASK_ACKS_LATE = False
    CELERY_TASK_REJECT_ON_WORKER_LOST = False
    CELERY_WORKER_PREFETCH_MULTIPLIER = 4
    CELERY_WORKER_SEND_TASK_EVENTS = False
    CELERY_TASK_SEND_SENT_EVENT = False
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
    CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
elif VARIANT != "platform":
    CELERY_RESULT_BACKEND = None  # type: ignore[assignment]  # no result backend at all
    if "prefetch4" in VARIANT:
        CELERY_WORKER_PREFETCH_MULTIPLIER = 4
    if "noevents" in VARIANT:
        CELERY_WORKER_SEND_TASK_EVENTS = False
        CELERY_TASK_SEND_SENT_EVENT = False
