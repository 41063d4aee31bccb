from __future__ import annotations

from django.apps import AppConfig


class SchedulerAppConfig(AppConfig):
    name = "scheduler_app"
    verbose_name = "Beatkeeper"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Signal handlers: run context and expiry (history), the unacked-message heartbeat,
        # the start-up health check.
        from scheduler_app import heartbeat, history, startup  # noqa: F401
