"""Writes shared by the admin, the API and the management commands: pause, resume, run
now, duplicate, retry and revoke. The front doors only call these.

A run queued here is recorded at once as a PENDING row carrying its trigger and who
asked, so the operator sees it (and can revoke it) before a worker picks it up. Every
message keeps the schedule's own options (queue, exchange, routing key, priority,
expiry, headers and policy limits), as beat sends them.
"""

from __future__ import annotations

import ast
import json
import logging
import time
import uuid
from typing import Any

from celery import current_app
from celery import states as celery_states
from celery.app.task import Context
from celery.utils.saferepr import saferepr
from django.db import DatabaseError, transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from scheduler_app import broker, catalog, limits, signatures
from scheduler_app.beat import entries
from scheduler_app.models import SchedulePolicy
from scheduler_app.runs import dead_letters, history, ledger, states
from scheduler_app.runs.policy import task_policy

REPR_LIMIT = 1024  # characters of a run's arguments that Celery records (argsrepr)
# A publish on a lost connection is tried once more at once: a web request waits for at most two
# bounded attempts (broker.bound() each), not kombu's default of retrying for as long as it takes.
SEND_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
logger = logging.getLogger(__name__)
REVOCABLE = {celery_states.PENDING, celery_states.RECEIVED, celery_states.RETRY, states.WAITING, *history.RUNNING}


class ServiceError(Exception):
    """What went wrong and what to do, for the operator."""


class BrokerUnavailable(ServiceError):
    """The broker did not answer: nothing was sent. The API answers it with 503."""


class ArgumentsRefused(ServiceError):
    """The arguments do not fit the task's signature: nothing was sent. The API answers it with 400."""


def registered_tasks() -> list[str]:
    """The task names a worker of this project can run (Celery's own excluded)."""
    discover_tasks()
    return sorted(name for name in current_app.tasks if not name.startswith("celery."))


def discover_tasks() -> None:
    """Every app's tasks module, imported once per process, as a worker imports them."""
    catalog.discover()


def overrides_of(task: PeriodicTask) -> dict[str, Any]:
    """The policy fields the schedule sets (its task's defaults apply to the rest)."""
    policy = SchedulePolicy.objects.filter(periodic_task=task).first()
    return policy.overrides() if policy else {}


def policy_of(task: PeriodicTask) -> SchedulePolicy:
    policy, _ = SchedulePolicy.objects.get_or_create(periodic_task=task)
    return policy


def username(user: Any) -> str:
    return getattr(user, "get_username", lambda: "")() or "system"


# --- Schedules -------------------------------------------------------------------------


@transaction.atomic
def pause(task: PeriodicTask, *, by: Any, note: str = "") -> None:
    """Stop sending the schedule until it is resumed, saying who paused it, when and why."""
    set_enabled(task, False, paused_at=timezone.now(), paused_by=by, pause_note=note.strip()[:500])


@transaction.atomic
def resume(task: PeriodicTask, *, by: Any) -> None:
    """Send the schedule again from its next slot (missed slots follow its catch-up policy)."""
    set_enabled(task, True, paused_at=None, paused_by=None, pause_note="")


def set_enabled(task: PeriodicTask, enabled: bool, **pause: Any) -> None:
    """Write only `enabled` (and the pause facts) on the row as it is now, locked, so an
    edit saved meanwhile by someone else, or beat's last-run write, is not undone."""
    current = PeriodicTask.objects.select_for_update().get(pk=task.pk)
    SchedulePolicy.objects.get_or_create(periodic_task=current)
    policy = SchedulePolicy.objects.select_for_update().get(periodic_task=current)
    for field, value in pause.items():
        setattr(policy, field, value)
    policy.save()
    current.enabled = enabled
    fields = ["enabled", "last_run_at", "date_changed"]
    if enabled and (current.one_off or current.clocked_id):  # enabled again, a one-off runs once more
        current.one_off, current.total_run_count = True, 0  # a clocked row is one (save() refuses it otherwise)
        fields += ["one_off", "total_run_count"]
    current.save(update_fields=fields)  # save(): the change log sees it
    task.enabled, task.last_run_at = current.enabled, current.last_run_at


def clear_pause(task: PeriodicTask) -> None:
    """A schedule enabled in its form is no longer paused."""
    SchedulePolicy.objects.filter(periodic_task=task, paused_at__isnull=False).update(
        paused_at=None, paused_by=None, pause_note=""
    )


@transaction.atomic
def duplicate(task: PeriodicTask, *, by: Any) -> PeriodicTask:
    """A disabled copy of the schedule and its policy, named "<name> (copy)", to edit."""
    policy = SchedulePolicy.objects.filter(periodic_task=task).first()
    copy = PeriodicTask.objects.get(pk=task.pk)
    copy.pk, copy.id, copy.name = None, None, free_name(f"{task.name} (copy)")
    copy.enabled, copy.last_run_at, copy.total_run_count = False, None, 0
    copy.save()
    if policy is None:
        SchedulePolicy.objects.create(periodic_task=copy, owner=by)
        return copy
    policy.pk, policy.periodic_task = copy.pk, copy
    policy.catalog_key, policy.seeded_state = "", {}
    policy.paused_at, policy.paused_by, policy.pause_note = None, None, ""
    policy.owner = by if policy.owner is None else policy.owner
    policy.save(force_insert=True)
    return copy


def free_name(name: str) -> str:
    candidate, number = name[:200], 2
    while PeriodicTask.objects.filter(name=candidate).exists():
        candidate, number = f"{name[:190]} {number}", number + 1
    return candidate


def run_now(
    task: PeriodicTask,
    *,
    by: Any,
    trigger: str = "manual",
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> str:
    """Queue one run of the schedule now, with every option beat would send it with.
    `args` / `kwargs` replace the schedule's own for this run only. Returns the run's id."""
    if task.expires and task.expires <= timezone.now():
        raise ServiceError(
            f"{task.name!r} expired at {task.expires:%Y-%m-%d %H:%M %Z}; clear or move its expiry first."
        )
    overrides = overrides_of(task)
    header = {"trigger": trigger, "by": username(by), "schedule": task.name, "policy": overrides}
    overridden = args is not None or kwargs is not None
    args = stored_args(task.args, "[]") if args is None else args
    kwargs = stored_args(task.kwargs, "{}") if kwargs is None else kwargs
    check_message(args, kwargs, task.headers)
    if overridden:
        check_signature(task.task, args, kwargs)
    return send(task.task, args, kwargs, options=schedule_options(task, overrides), header=header)


def check_message(args: Any, kwargs: Any, headers: str | None = None) -> None:
    """Refuse, before anything is recorded or queued, what a worker could not take: JSON
    nested too deep, too large, or with a NUL character (a schedule saved before the
    doors refused such values, or a run recorded with them)."""
    try:
        limits.check_json("args", args)
        limits.check_json("kwargs", kwargs)
        limits.check_json_text("headers", headers or "{}", max_bytes=limits.MAX_HEADERS_BYTES)
    except limits.LimitExceeded as exc:
        raise ServiceError(f"{exc} Nothing was queued.") from None
    except ValueError as exc:
        message = f"headers: not JSON ({exc}); nothing was queued. Fix them in the schedule's form."
        raise ServiceError(message) from None


def check_signature(task_name: str, args: Any, kwargs: Any) -> None:
    """Refuse arguments the task's function does not take (signatures.check), naming them."""
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return  # send() refuses these with its own message
    discover_tasks()
    try:
        signatures.check(task_name, args, kwargs)
    except signatures.ArgumentsRefused as exc:
        raise ArgumentsRefused(f"{exc} Nothing was queued.") from None


def unregistered(task_name: str) -> str:
    """The refusal for a task no worker of this project can run, listing those it can."""
    names = registered_tasks()
    shown = ", ".join(names[:UNREGISTERED_LISTED]) + (f" and {len(names) - UNREGISTERED_LISTED} more"
                                                      if len(names) > UNREGISTERED_LISTED else "")  # fmt: skip
    return (f"no task named {task_name!r} is registered; the registered tasks are: {shown or 'none'} "
            "(GET /api/tasks/ lists them with their defaults).")  # fmt: skip


UNREGISTERED_LISTED = 40  # names a refusal lists at most


def run_warnings() -> list[str]:
    """A word for a run queued while no worker answers a ping (broker.workers_online, bounded):
    it is queued all the same, and runs when a worker starts."""
    if broker.workers_online(timeout=QUEUE_ASK_SECONDS, limit=1):  # one answer is enough: no wait
        return []
    return [f"No worker answered within {QUEUE_ASK_SECONDS:g} s: the run is queued and waits until a worker "
            "starts (celery -A project worker)."]  # fmt: skip


def schedule_options(task: PeriodicTask, overrides: dict[str, Any]) -> dict[str, Any]:
    values = {key: getattr(task, key) for key in ("name", "queue", "exchange", "routing_key", "priority", "headers")}
    values |= {"expires": task.expires, "expire_seconds": task.expire_seconds}
    policy = task_policy(task.task).with_overrides(overrides)
    return entries.message_options(values, overrides, policy)


def stored_args(raw: str, empty: str) -> Any:
    try:
        return limits.check_json_text("arguments", raw or empty)
    except limits.LimitExceeded as exc:
        raise ServiceError(f"the stored {exc} Nothing was queued; fix them in the schedule's form.") from None
    except ValueError as exc:
        raise ServiceError(f"the stored arguments are not JSON ({exc}); fix them in the schedule's form.") from None


QUEUE_ASK_SECONDS = 1.0  # how long the workers are given to say which queues they consume


def queue_warnings(queue: str) -> list[str]:
    """A word for a queue that no worker consumes (its runs would wait for ever). The
    running workers are asked (Celery's `inspect().active_queues()`); when none answers,
    the queues the catalog's tasks use are what workers started as documented consume."""
    consumed = consumed_queues()
    if consumed is not None:
        if queue in consumed:
            return []
        return [f"No running worker consumes queue {queue!r} (they consume {', '.join(sorted(consumed))}); "
                f"its runs wait until a worker does (celery -A project worker -Q {queue})."]  # fmt: skip
    known = broker.known_queues()
    if queue in known:
        return []
    return [f"No worker answered within {QUEUE_ASK_SECONDS:g} s, and queue {queue!r} is none of the catalog's "
            f"({', '.join(known)}): its runs wait until a worker consumes it "
            f"(celery -A project worker -Q {queue})."]  # fmt: skip


QUEUES_KEPT_SECONDS = 10.0  # one answer serves the saves of the next seconds
_consumed: tuple[float, set[str] | None] = (-QUEUES_KEPT_SECONDS, None)


def consumed_queues() -> set[str] | None:
    """The queues the running workers consume, or None if none answered in time (an
    answer is kept for QUEUES_KEPT_SECONDS, so a burst of saves asks the workers once)."""
    global _consumed
    asked_at, queues = _consumed
    if time.monotonic() - asked_at < QUEUES_KEPT_SECONDS:
        return queues
    queues = ask_consumed_queues()
    _consumed = (time.monotonic(), queues)
    return queues


def ask_consumed_queues() -> set[str] | None:
    if not broker.broker_status().reachable:
        return None
    try:  # a connection of its own, bounded: the app's shared pool would wait 30 s on a hung Redis
        with broker.bounded_connection() as conn:
            replies = current_app.control.inspect(timeout=QUEUE_ASK_SECONDS, connection=conn).active_queues() or {}
    except Exception:  # noqa: BLE001  (no answer is an answer: the catalog's queues are used)
        return None
    queues = {queue["name"] for found in replies.values() for queue in (found or [])}
    return queues if replies else None


# --- Runs ------------------------------------------------------------------------------


def retry_run(row: TaskResult, *, by: Any, trigger: str = "retry") -> str:
    """Run a finished run again with the same task and arguments: a new run, linked to
    the old one (`retry_of`), with the schedule's options if the schedule still exists."""
    if row.status not in states.TERMINAL_STATES:
        raise ServiceError(f"run {row.task_id} is {row.status}, not finished; revoke it first or wait for it.")
    args, kwargs = recorded_arguments(row.task_args, "args"), recorded_arguments(row.task_kwargs, "kwargs")
    check_message(args, kwargs)
    if not row.task_name:
        raise ServiceError(f"run {row.task_id} has no task name recorded, so there is nothing to run again.")
    header: dict[str, Any] = {"trigger": trigger, "by": username(by), "retry_of": row.task_id}
    name = row.periodic_task_name
    schedule = PeriodicTask.objects.filter(name=name).first() if name else None
    if schedule is None:
        return send(row.task_name, args, kwargs, options={}, header=header)
    overrides = overrides_of(schedule)
    header |= {"schedule": schedule.name, "policy": overrides}
    return send(row.task_name, args, kwargs, options=schedule_options(schedule, overrides), header=header)


def recorded_arguments(stored: str | None, what: str) -> Any:
    """The arguments a run was recorded with (django-celery-results keeps their repr)."""
    empty: Any = [] if what == "args" else {}
    if not stored:
        return empty
    if len(stored) >= REPR_LIMIT - 8:  # Celery cuts a longer repr, and what is cut may still parse
        raise ServiceError(
            f"the run's {what} were recorded shortened (Celery keeps {REPR_LIMIT} characters); "
            "run the schedule again instead, or send the task with its full arguments."
        )
    try:
        value = json.loads(stored)
        value = ast.literal_eval(value) if isinstance(value, str) else value
        value = list(value) if isinstance(value, tuple) else value  # a worker may record args as a tuple
        json.dumps(value)  # a shortened repr ends in "..." (Ellipsis): not data to send
        return value
    except (ValueError, SyntaxError, TypeError):
        raise ServiceError(
            f"the run's {what} were recorded shortened or not as data ({stored[:80]}...); "
            "run the schedule again instead, or send the task with its full arguments."
        ) from None


def revoke_run(row: TaskResult, *, by: Any) -> None:
    """Stop a queued or running run: workers drop it when it arrives, or end it (SIGTERM)."""
    if row.status not in REVOCABLE:
        raise ServiceError(f"run {row.task_id} is already {row.status}; only a queued or running run can be revoked.")
    status = broker.broker_status()  # first: with Redis hung, one bounded wait instead of three
    if not status.reachable:
        raise BrokerUnavailable(f"the broker did not answer ({status.error}); nothing was revoked. Check Redis.")
    row = ledger.fresh(row)  # it may have finished since the recorder last wrote it
    if row.status not in REVOCABLE:
        raise ServiceError(f"run {row.task_id} is already {row.status}; only a queued or running run can be revoked.")
    try:  # terminate only touches a run that has started; asking for it covers a start just now
        with broker.bounded_connection() as connection:
            current_app.control.revoke(row.task_id, terminate=True, signal="SIGTERM", connection=connection)
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"the broker did not answer ({exc}); nothing was revoked. Check Redis.") from None
    meta = {**history.run_context(row), "revoked_by": username(by), "revoked_at": timezone.now().isoformat()}
    # Redis first, which a worker reads before the row: the revocation refines a RETRY of the
    # same attempt, and loses to an end that got there first (the run finished meanwhile).
    request = Context(meta=meta, task=row.task_name, periodic_task_name=row.periodic_task_name, bk_refines=True)
    try:
        current_app.backend.store_result(row.task_id, {"reason": "revoked"}, celery_states.REVOKED, request=request)
        now = ledger.latest(row.task_id)
    except RedisError as exc:  # the broadcast went out; the row says it, and a worker reads the row
        logger.warning("run %s: its revocation was not written to Redis (%s)", row.task_id, exc)
        now = None
    if now is not None and now.status != celery_states.REVOKED:
        raise ServiceError(f"run {row.task_id} ended ({now.status}) before the revocation reached it.")
    if row.pk is not None:
        TaskResult.objects.filter(pk=row.pk, status__in=REVOCABLE).update(
            status=celery_states.REVOKED, date_done=timezone.now(), meta=json.dumps(meta)
        )


# --- Sending ---------------------------------------------------------------------------


def send(task_name: str, args: Any, kwargs: Any, *, options: dict[str, Any], header: dict[str, Any]) -> str:
    """Record a PENDING run, then publish it; if the publish fails, whatever the error, the
    row does not stay PENDING (`not_sent`)."""
    if task_name not in registered_tasks():
        raise ServiceError(unregistered(task_name))
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ServiceError("arguments must be a JSON list and keyword arguments a JSON object.")
    task_id = str(uuid.uuid4())
    header = {**header, "queued_at": timezone.now().isoformat(), "recorded": True}
    options = {**options, "headers": {**options.get("headers", {}), history.HEADER: header}}
    record_pending(task_id, task_name, args, kwargs, header)
    try:
        with broker.bounded_connection() as connection:  # a hung Redis costs seconds, not a proxy's timeout
            current_app.send_task(task_name, args, kwargs, task_id=task_id, connection=connection,
                                  retry_policy=SEND_RETRY, **options)  # fmt: skip
    except BaseException as exc:  # noqa: BLE001  (whatever went wrong, even gunicorn's SystemExit, no PENDING row stays)
        raise not_sent(task_id, exc) from None
    announce_pending(task_id, task_name, header)
    return task_id


BROKER_ERRORS = (BrokerError, RedisError, OSError)  # kombu's, redis-py's (kombu lets some through) and sockets'


def not_sent(task_id: str, exc: BaseException) -> BaseException:
    """What a failed send raises, once its PENDING row is gone. Unless the broker said no
    outright, the message may still reach Redis (a hung server reads its socket when it
    resumes): the row then stays, REVOKED, and a worker that gets the message drops it."""
    maybe_sent = timed_out(exc)
    try:
        if maybe_sent:
            mark_not_queued(task_id, f"not queued: the broker did not answer within {broker.bound():g}s")
        else:
            TaskResult.objects.filter(task_id=task_id).delete()
    except DatabaseError as error:  # the database is away too: the row was most likely never written
        logger.warning("run %s: its row was not cleared after a failed send (%s)", task_id, error)
    if not isinstance(exc, Exception):
        return exc
    cause = f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, BROKER_ERRORS):
        recorded = " (recorded REVOKED, so it will not run should the message reach Redis later)" if maybe_sent else ""
        return BrokerUnavailable(f"the broker did not answer ({cause}); the run was not queued{recorded}. "
                                 "Check that Redis is up.")  # fmt: skip
    logger.error("run %s was not queued", task_id, exc_info=exc)
    return ServiceError(f"the run could not be queued ({cause}); nothing was sent.")


def timed_out(exc: BaseException) -> bool:
    """Whether the send gave up waiting for an answer (kombu wraps redis-py's error)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, TimeoutError | RedisTimeout):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def mark_not_queued(task_id: str, reason: str) -> None:
    row = TaskResult.objects.filter(task_id=task_id, status=celery_states.PENDING).first()
    if row is None:
        return
    meta = {**history.run_context(row), "revoked_by": "system", "revoked_at": timezone.now().isoformat()}
    TaskResult.objects.filter(pk=row.pk, status=celery_states.PENDING).update(
        status=celery_states.REVOKED, date_done=timezone.now(), result=json.dumps({"reason": reason}),
        meta=json.dumps(meta),
    )  # fmt: skip


def pending_meta(header: dict[str, Any]) -> dict[str, Any]:
    return {key: header[key] for key in ("trigger", "by", "schedule", "queued_at", "retry_of") if header.get(key)}


def announce_pending(task_id: str, task_name: str, header: dict[str, Any]) -> None:
    """The queued run's state in Redis, which a worker reads before it starts the run (for a
    revocation meanwhile) instead of the row. A worker that started it already ranks above."""
    context = Context(meta=pending_meta(header), task=task_name, periodic_task_name=header.get("schedule"))
    try:
        current_app.backend.store_result(task_id, None, celery_states.PENDING, request=context)
    except RedisError as exc:  # the run is queued and its row written: the worker reads the row
        logger.warning("run %s: its queued state was not written to Redis (%s)", task_id, exc)


def record_pending(task_id: str, task_name: str, args: Any, kwargs: Any, header: dict[str, Any]) -> None:
    """The row, so the console lists the run at once (its state in Redis follows the send)."""
    meta = pending_meta(header)
    TaskResult.objects.create(
        task_id=task_id,
        task_name=task_name,
        periodic_task_name=header.get("schedule"),
        status=celery_states.PENDING,
        task_args=json.dumps(saferepr(args, REPR_LIMIT)),
        task_kwargs=json.dumps(saferepr(kwargs, REPR_LIMIT)),
        content_type="application/json",
        content_encoding="utf-8",
        meta=json.dumps(meta),
    )


# --- Dead letters (messages a worker set aside: scheduler_app/runs/poison.py) -----------


def retry_dead_letter(letter_id: str, *, by: Any) -> str:
    """Send a dead letter's task again as a new run (trigger `retry`, `retry_of` its run),
    with its schedule's options if the schedule still exists, else the queue and priority it
    came with. The letter leaves the dead letters once the run is queued."""
    letter = _take_dead_letter(letter_id)
    try:
        args, kwargs = dead_letter_arguments(letter)
        check_message(args, kwargs)
        return send(letter.task, args, kwargs, **_dead_letter_options(letter, by))
    except BaseException as exc:
        _put_back_dead_letter(letter, exc)
        raise


def _put_back_dead_letter(letter: dead_letters.DeadLetter, cause: BaseException) -> None:
    """The letter back where it was, after a retry that queued nothing. If Redis fails
    here too, the letter is logged whole (nothing is lost) and the refusal says so."""
    try:
        dead_letters.put_back(letter, dead_letters.client())
    except RedisError as exc:
        logger.error("dead letter %s could not be put back (%s); it was: %s", letter.id, exc, letter.as_json())
        raise BrokerUnavailable(
            f"the retry queued nothing ({cause}) and Redis did not answer ({exc}) when the dead letter was put "
            "back; it is written whole to the web server's log. Check Redis."
        ) from None


def discard_dead_letter(letter_id: str) -> dead_letters.DeadLetter:
    """Drop a dead letter for good; answers what was dropped."""
    return _take_dead_letter(letter_id)


def _take_dead_letter(letter_id: str) -> dead_letters.DeadLetter:
    try:
        letter = dead_letters.take(letter_id, dead_letters.client())
    except RedisError as exc:
        raise BrokerUnavailable(f"Redis did not answer ({exc}); the dead letter was left as it was.") from None
    if letter is None:
        raise ServiceError(f"dead letter {letter_id} is gone: it was retried or discarded meanwhile.")
    return letter


def dead_letter_arguments(letter: dead_letters.DeadLetter) -> tuple[Any, Any]:
    """The arguments of a dead letter's message (protocol 2: [args, kwargs, embed])."""
    try:
        body = json.loads(letter.body) if "json" in letter.content_type else None
    except (RecursionError, ValueError) as exc:
        what = type(exc).__name__
        raise ServiceError(f"the dead letter's arguments cannot be read ({what}); nothing was queued.") from None
    if isinstance(body, list) and len(body) == 3:
        return body[0], body[1]
    if isinstance(body, dict) and "args" in body:  # protocol 1
        return body.get("args"), body.get("kwargs") or {}
    raise ServiceError(f"the dead letter is not a task message this platform can send again ({letter.content_type}).")


def _dead_letter_options(letter: dead_letters.DeadLetter, by: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"trigger": "retry", "by": username(by), "retry_of": letter.task_id}
    context = letter.headers.get(history.HEADER)
    name = (context.get("schedule") if isinstance(context, dict) else None) or letter.headers.get("periodic_task_name")
    schedule = PeriodicTask.objects.filter(name=name).first() if name else None
    if schedule is not None:
        overrides = overrides_of(schedule)
        header |= {"schedule": schedule.name, "policy": overrides}
        return {"options": schedule_options(schedule, overrides), "header": header}
    options: dict[str, Any] = {"queue": letter.queue} if letter.queue else {}
    if isinstance(letter.properties.get("priority"), int):
        options["priority"] = letter.properties["priority"]
    return {"options": options, "header": header}


# --- Failures dismissed in bulk (the console's failures page; issue 15) --------------------


def dismiss_failure(row: TaskResult, *, by: Any) -> bool:
    """Mark a failed run dismissed: an operator has seen it and it needs nothing more. The
    row, its state and traceback stay (the history stays complete, and a schedule's failure
    streak is not rewritten); the failures page no longer groups it. Claimed with a
    conditional update: False when the run is no longer an undismissed FAILURE."""
    meta = history.run_context(row) | {"children": _children(row)}
    if row.status != celery_states.FAILURE or "dismissed_at" in meta:
        return False
    meta |= {"dismissed_by": username(by), "dismissed_at": timezone.now().isoformat()}
    claimed = TaskResult.objects.filter(pk=row.pk, status=celery_states.FAILURE, meta=row.meta)
    return claimed.update(meta=json.dumps(meta)) == 1


def _children(row: TaskResult) -> Any:
    try:
        meta = json.loads(row.meta or "{}")
    except ValueError:
        return []
    return meta.get("children", []) if isinstance(meta, dict) else []
