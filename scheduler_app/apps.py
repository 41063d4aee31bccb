from __future__ import annotations

from django.apps import AppConfig


class SchedulerAppConfig(AppConfig):
    name = "scheduler_app"
    verbose_name = "Beatkeeper"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Signal handlers: run context and expiry (history), the progress throttle (runtime),
        # the unacked-message heartbeat, the start-up health check; the pools published at
        # worker start (pools); beat's configuration check; the Redis bound of web requests
        # (connection); the change log's triggers put back after every migrate (triggers).
        from django.db.models.signals import post_migrate, pre_migrate

        from scheduler_app import connection, fleet, pools  # noqa: F401  (fleet: the workers' bk_load inspect command)
        from scheduler_app.beat import checks, triggers  # noqa: F401
        from scheduler_app.runs import heartbeat, history, runtime, startup  # noqa: F401

        pre_migrate.connect(triggers.before_migrate, sender=self, dispatch_uid="beatkeeper-change-log-triggers-off")
        post_migrate.connect(triggers.after_migrate, sender=self, dispatch_uid="beatkeeper-change-log-triggers")

        pools.install()  # a worker reads a pool missing from Redis from the database
