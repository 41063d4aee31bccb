"""The console's failures page: the failed runs of the last 24 hours or 7 days grouped by
task and exception type (count, first and last seen, the newest one's traceback), with
bulk retry and bulk discard behind a confirmation page (POST, CSRF).

Seen with the permission to view runs. Retry (the permission to retry a run) sends each of
the group's newest `insights.BULK_LIMIT` runs again through `services.retry_run` and marks
the original dismissed, so the group shrinks instead of being retried twice. Discard (the
permission to revoke a run) marks them dismissed: the rows, states and tracebacks stay in
the run history; only this page stops grouping them. Each run acted on gets an audit entry."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django_celery_results.models import TaskResult

from scheduler_app import audit, insights, services
from scheduler_app.admin.access import ACTIONS, DISCARD, RETRY, VIEW, allowed

SHOWN_ERRORS = 5


def window_of(request: HttpRequest) -> str:
    window = request.GET.get("window", "24h")
    return window if window in insights.WINDOWS else "24h"


def group_of(request: HttpRequest) -> tuple[str | None, str | None]:
    """The group named in the query: task and exception type ("" for none)."""
    return request.GET.get("task") or None, request.GET.get("exc") or None


def group_query(window: str, task: str | None, exc_type: str | None) -> str:
    return urlencode({"window": window, "task": task or "", "exc": exc_type or ""})


def runs_url(window: str, task: str | None) -> str:
    query = {"state": "FAILURE", "since": window, **({"task": task} if task else {})}
    return reverse("admin:scheduler_app_run_changelist") + "?" + urlencode(query)


def list_view(request: HttpRequest) -> HttpResponse:
    allowed(request, VIEW)
    window = window_of(request)
    groups = insights.failure_groups(insights.window_start(timezone.now(), window))
    rows = [{"group": group, "query": group_query(window, group.task_name, group.exc_type),
             "runs_url": runs_url(window, group.task_name)} for group in groups]  # fmt: skip
    user = request.user
    context = {**admin.site.each_context(request), "title": "Failures", "rows": rows, "window": window,
               "windows": list(insights.WINDOWS), "can_retry": user.has_perm(RETRY),
               "can_discard": user.has_perm(DISCARD), "limit": insights.BULK_LIMIT,
               "total": sum(group.count for group in groups)}  # fmt: skip
    return TemplateResponse(request, "beatkeeper/failures.html", context)


def action_view(request: HttpRequest, what: str) -> HttpResponse:
    """GET: the confirmation page. POST: retry or discard the group's newest runs."""
    if what not in ACTIONS:
        raise Http404("A group of failures can be retried or discarded.")
    allowed(request, VIEW)
    allowed(request, ACTIONS[what])
    window, (task, exc_type) = window_of(request), group_of(request)
    runs = insights.group_runs(insights.window_start(timezone.now(), window), task, exc_type)
    back = reverse("beatkeeper-failures") + "?" + urlencode({"window": window})
    if request.method != "POST":
        context = {**admin.site.each_context(request), "title": f"{what.capitalize()} failures", "what": what,
                   "task": task, "exc_type": exc_type or insights.UNKNOWN, "runs": runs, "window": window,
                   "limit": insights.BULK_LIMIT, "back": back}  # fmt: skip
        return TemplateResponse(request, "beatkeeper/failures_confirm.html", context)
    done, errors = (retry if what == "retry" else discard)(request, runs)
    summary = f"{'Retried' if what == 'retry' else 'Discarded'} {done} of {len(runs)} failed run(s) of {task or '?'}"
    if done:
        messages.success(request, f"{summary} ({exc_type or insights.UNKNOWN}).")
    for error in errors[:SHOWN_ERRORS]:
        messages.error(request, error)
    if len(errors) > SHOWN_ERRORS:
        messages.error(request, f"… and {len(errors) - SHOWN_ERRORS} more refused.")
    return HttpResponseRedirect(back)


def retry(request: HttpRequest, runs: list[TaskResult]) -> tuple[int, list[str]]:
    done, errors = 0, []
    for run in runs:
        try:
            new_id = services.retry_run(run, by=request.user)
        except services.BrokerUnavailable as exc:  # every next one would wait as long: stop
            errors.append(f"{run.task_id[:8]}: {exc} (stopped; the rest were not retried)")
            break
        except services.ServiceError as exc:
            errors.append(f"{run.task_id[:8]}: {exc}")
            continue
        services.dismiss_failure(run, by=request.user)
        audit.record(request.user, "retry", run, object_type="run",
                     changes={"run": new_id, "from": "failures"}, via="admin")  # fmt: skip
        done += 1
    return done, errors


def discard(request: HttpRequest, runs: list[TaskResult]) -> tuple[int, list[str]]:
    done, errors = 0, []
    for run in runs:
        if not services.dismiss_failure(run, by=request.user):
            errors.append(f"{run.task_id[:8]}: no longer an undismissed failure")
            continue
        audit.record(request.user, "dismiss", run, object_type="run",
                     changes={"from": "failures"}, via="admin")  # fmt: skip
        done += 1
    return done, errors


def urls() -> list[Any]:
    view = admin.site.admin_view
    return [
        path("", view(list_view), name="beatkeeper-failures"),
        path("<str:what>/", view(action_view), name="beatkeeper-failures-do"),
    ]
