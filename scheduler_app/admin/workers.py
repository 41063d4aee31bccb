"""The console's Workers page: each worker with its queues, pool, the runs it holds and its
counts, refreshed in place; and the remote control of one worker (warm shutdown behind a
confirmation page, pool grow / shrink, add / cancel a queue consumer), each a POST with CSRF
and an audit entry; the worker is named by `?worker=` (a name may hold any character). Seen with
the permission to view runs; controlled with "Can control workers"."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import urlencode

from scheduler_app import audit, fleet
from scheduler_app.admin import live

VIEW, CONTROL = "scheduler_app.view_run", "scheduler_app.control_workers"
REFRESH = 5  # seconds between refreshes of the table
QUEUE_NAME = 200  # characters a queue's name may have (django-celery-beat's queue field)


def allowed(request: HttpRequest, perm: str) -> None:
    if not request.user.has_perm(perm):
        raise PermissionDenied


def workers_view(request: HttpRequest) -> HttpResponse:
    allowed(request, VIEW)
    surveyed = fleet.survey()
    pages = fleet.run_ids(surveyed)
    now = timezone.now()
    rows = [row_of(worker, pages, now) for worker in surveyed.workers]
    answering = sum(worker.answering for worker in surveyed.workers)
    context = {"survey": surveyed, "rows": rows, "can_control": request.user.has_perm(CONTROL), "refresh": REFRESH}
    context |= {"answering": answering, "silent": len(rows) - answering}
    context |= {"running": sum(len(r["active"]) for r in rows), "reserved": sum(len(r["reserved"]) for r in rows)}
    return live.render(request, "beatkeeper/workers.html", "beatkeeper/workers_table.html", "Workers", context)


def row_of(worker: fleet.Worker, pages: dict[str, int], now: Any) -> dict[str, Any]:
    """The worker and its runs, each with how long it has run and its run page's row id."""

    def runs(held: list[fleet.Held]) -> list[dict[str, Any]]:  # fmt: skip
        return [{"run": run, "for": duration(run.running_for(now)), "pk": pages.get(run.id)} for run in held]

    return {"worker": worker, "active": runs(worker.active), "reserved": runs(worker.reserved)}


def duration(seconds: float | None) -> str:
    """12 s, 3 min 4 s, 2 h 5 min; a dash when the worker did not say when it started."""
    if seconds is None:
        return "–"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def control_url(name: str, command: str) -> str:
    return reverse("beatkeeper-worker-control", args=[command]) + "?" + urlencode({"worker": name})


def control_view(request: HttpRequest, command: str) -> HttpResponse:
    """Shutdown: a confirmation page (GET), then the command (POST). The others: POST only.
    The worker is `?worker=` on both (the confirmation's form posts to its own address)."""
    if command not in fleet.CONTROLS:
        raise Http404("A worker can be shut down, its pool grown or shrunk, a consumer added or cancelled.")
    allowed(request, VIEW)
    allowed(request, CONTROL)
    name = request.GET.get("worker", "")
    if not name:
        raise Http404("Name the worker (?worker=).")
    if request.method == "GET" and command == "shutdown":
        context = {**admin.site.each_context(request), "title": f"Shut down {name}", "name": name}
        return TemplateResponse(request, "beatkeeper/worker_shutdown.html", context)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    queue = request.POST.get("queue", "").strip()
    if command in fleet.QUEUE_CONTROLS and not 0 < len(queue) <= QUEUE_NAME:
        messages.error(request, f"Name the queue ({QUEUE_NAME} characters at most).")
        return HttpResponseRedirect(reverse("beatkeeper-workers"))
    done = fleet.control(name, command, **fleet.arguments_for(command, queue))
    changes = {"command": command, "ok": done.ok, "answer": done.message, **({"queue": queue} if queue else {})}
    audit.record(request.user, command, None, object_type="worker", object_id=name[:64], changes=changes, via="admin")
    (messages.success if done.ok else messages.error)(request, done.message)
    return HttpResponseRedirect(reverse("beatkeeper-workers"))


def urls() -> list[Any]:
    view = admin.site.admin_view
    return [
        path("", view(workers_view), name="beatkeeper-workers"),
        path("control/<str:command>/", view(control_view), name="beatkeeper-worker-control"),
    ]
