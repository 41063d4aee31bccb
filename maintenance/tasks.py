"""The maintenance tasks: thin Celery tasks over plain functions, each with its defaults.

Every one is idempotent (running it twice does no more than running it once), because
delivery is at-least-once: a worker lost mid-run means the run is delivered again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings

from maintenance import health, runs, sessions, statistics, system, tempfiles
from scheduler_app import broker
from scheduler_app.catalog import Cron, Every, platform_task
from scheduler_app.monitoring import alerts
from scheduler_app.monitoring import health as monitoring

HOUR = 3600


@platform_task(
    name="maintenance.cleanup_old_runs",
    schedule_name="Clean up old runs",
    schedule=Every(HOUR),
    overlap="skip",
    soft_time_limit=30 * 60,
    time_limit=35 * 60,
    expires=HOUR,
)
def cleanup_old_runs(
    max_age_hours: float | None = None, keep_last: int | None = None, batch_size: int = 50_000
) -> dict[str, Any]:
    """Delete finished run records older than RUN_RETENTION_HOURS, keeping each schedule's newest."""
    hours = settings.RUN_RETENTION_HOURS if max_age_hours is None else max_age_hours
    keep = settings.RUN_RETENTION_KEEP_LAST if keep_last is None else keep_last
    return runs.cleanup_old_runs(dt.timedelta(hours=hours), keep_last=keep, batch_size=batch_size)


@platform_task(
    name="maintenance.system_health_check",
    schedule_name="System health check",
    schedule=Every(5 * 60),
    max_retries=0,  # the next check is five minutes away; a retry would only pile up
    soft_time_limit=60,
    time_limit=90,
    expires=5 * 60,
)
def system_health_check() -> dict[str, Any]:
    """Check memory, disk, CPU, the broker, the workers and the queues."""
    host = system.sample_host(settings.HEALTH_DISK_PATH)
    return health.evaluate(host, platform_sample(), settings.HEALTH_THRESHOLDS)


@platform_task(
    name="maintenance.cleanup_temp_files",
    schedule_name="Clean up temporary files",
    schedule=Every(6 * HOUR),
    overlap="skip",
    soft_time_limit=30 * 60,
    time_limit=35 * 60,
    expires=6 * HOUR,
)
def cleanup_temp_files(max_age_hours: float | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Delete files older than TEMP_CLEANUP_MAX_AGE_HOURS under TEMP_CLEANUP_DIRS."""
    hours = settings.TEMP_CLEANUP_MAX_AGE_HOURS if max_age_hours is None else max_age_hours
    return tempfiles.cleanup_temp_files(settings.TEMP_CLEANUP_DIRS, dt.timedelta(hours=hours), dry_run=dry_run)


@platform_task(
    name="maintenance.log_statistics",
    schedule_name="Log statistics",
    schedule=Every(15 * 60),
    max_retries=0,
    soft_time_limit=60,
    time_limit=90,
    expires=15 * 60,
)
def log_statistics(window_minutes: float = 15) -> dict[str, Any]:
    """Log runs by status, queue depths, workers and host use as one structured line."""
    sample = platform_sample()
    return statistics.log_statistics(
        dt.timedelta(minutes=window_minutes),
        queue_depths=sample.queue_depths,
        workers=sample.workers,
        host=system.sample_host(settings.HEALTH_DISK_PATH).as_dict(),
    )


@platform_task(
    name="maintenance.purge_expired_sessions",
    schedule_name="Purge expired sessions",
    schedule=Cron(minute="17", hour="3"),
    overlap="skip",
    soft_time_limit=10 * 60,
    time_limit=12 * 60,
    expires=12 * HOUR,
)
def purge_expired_sessions() -> dict[str, Any]:
    """Delete Django's expired login sessions."""
    return sessions.purge_expired_sessions()


@platform_task(
    name="maintenance.check_schedules",
    schedule_name="Check schedules (late, failing)",
    schedule=Every(60),
    overlap="skip",
    max_retries=0,  # the next check is a minute away
    soft_time_limit=50,
    time_limit=58,
    expires=60,
)
def check_schedules() -> dict[str, Any]:
    """Mark each enabled schedule on time, late (its run did not start in time) or failing."""
    return {"schedules": monitoring.check_schedules()}


@platform_task(
    name="maintenance.send_alert",
    max_retries=6,  # about 5 minutes of attempts: 5, 10, 20, 40, 80, 160 s (with jitter)
    retry_backoff=5,
    soft_time_limit=60,
    time_limit=90,
    retry_for=alerts.RETRY_FOR,
)
def send_alert(incident_id: int, channel: str) -> dict[str, Any]:
    """Deliver one incident through one channel (queued once per channel by the checks)."""
    attempt = send_alert.request.retries + 1
    last = send_alert.request.retries >= send_alert.effective_policy().max_retries
    return alerts.deliver(incident_id, channel, attempt=attempt, last_attempt=last)


def platform_sample() -> health.PlatformSample:
    status = broker.broker_status()
    return health.PlatformSample(
        broker_reachable=status.reachable,
        broker_error=status.error,
        workers=broker.workers_online() if status.reachable else [],
        queue_depths=broker.queue_depths(),
    )
