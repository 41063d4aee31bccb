from __future__ import annotations

from django.apps import AppConfig


class SchedulerAppConfig(AppConfig):
    name = "scheduler_app"
    verbose_name = "Beatkeeper"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Signal handlers: run context and expiry (history), the progress throttle (runtime),
        # the unacked-message heartbeat, the start-up health check, the schedule change log
        # beat reloads from; the pools published at worker start (pools); beat's configuration
        # check; the Redis bound of web requests (connection).
        from scheduler_app import connection, fleet, pools  # noqa: F401  (fleet: the workers' bk_load inspect command)
        from scheduler_app.beat import changes, checks  # noqa: F401
        from scheduler_app.runs import heartbeat, history, runtime, startup  # noqa: F401

        pools.install()  # a worker reads a pool missing from Redis from the database
