"""System checks refuse a configuration that would deliver long runs twice."""

from __future__ import annotations

from django.conf import settings
from django.test import override_settings

from scheduler_app.checks import time_limits_fit_visibility_timeout


def test_it_accepts_the_default_configuration() -> None:
    assert time_limits_fit_visibility_timeout() == []


def test_it_refuses_a_visibility_timeout_below_a_tasks_hard_time_limit() -> None:
    options = {**settings.CELERY_BROKER_TRANSPORT_OPTIONS, "visibility_timeout": 600}
    with override_settings(CELERY_BROKER_TRANSPORT_OPTIONS=options):
        errors = time_limits_fit_visibility_timeout()
    assert {e.id for e in errors} == {"beatkeeper.E001"}
    assert any("maintenance.cleanup_old_runs has a hard time limit of 2100s" in e.msg for e in errors)
