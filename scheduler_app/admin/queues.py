"""The console's Queues page: each queue's depth per priority level, the age of its oldest
message and who consumes it; the runs workers hold for their ETA; purge of one queue behind
a confirmation page (POST, CSRF, an audit entry). Seen with the permission to view runs;
purged with "Can purge a queue". `?queue=<name>` looks at a queue no worker, schedule or
catalog entry names. The queue purged is named by `?queue=` too (a queue's name may hold a
`/`); only a queue the page knows can be (`backlog.purgeable`), anything else is a 404."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import urlencode

from scheduler_app import audit, backlog, fleet
from scheduler_app.admin import live
from scheduler_app.admin.workers import QUEUE_NAME, REFRESH, duration

VIEW, PURGE = "scheduler_app.view_run", "scheduler_app.purge_queue"


def allowed(request: HttpRequest, perm: str) -> None:
    if not request.user.has_perm(perm):
        raise PermissionDenied


def asked_for(request: HttpRequest) -> list[str]:
    return [name.strip() for name in request.GET.getlist("queue") if 0 < len(name.strip()) <= QUEUE_NAME]


def queues_view(request: HttpRequest) -> HttpResponse:
    allowed(request, VIEW)
    consumed, error = fleet.consumed()
    errors = [error] if error else []
    names = backlog.queue_names([*asked_for(request), *(q for queues in consumed.values() for q in queues)])
    queues: list[backlog.Queue] = []
    held: list[backlog.Waiting] = []
    total = 0
    try:
        queues = backlog.read(names)
        backlog.consumers_of(queues, consumed)
        held, total = backlog.waiting()
    except Exception as exc:  # noqa: BLE001  (the broker did not answer: say so, show what was read)
        errors.append(f"the broker did not answer ({type(exc).__name__}: {exc})")
    now = timezone.now()
    rows = [{"queue": queue, "age": duration((now - queue.oldest).total_seconds()) if queue.oldest else ""}
            for queue in queues]  # fmt: skip
    context = {"rows": rows, "waiting": held, "unacked": total, "errors": errors, "now": now}
    context |= {"can_purge": request.user.has_perm(PURGE), "refresh": REFRESH, "scan_limit": backlog.SCAN_LIMIT}
    return live.render(request, "beatkeeper/queues.html", "beatkeeper/queues_table.html", "Queues", context)


def purge_url(name: str) -> str:
    return reverse("beatkeeper-queue-purge") + "?" + urlencode({"queue": name})


def purge_view(request: HttpRequest) -> HttpResponse:
    """GET: the confirmation page, with what waits there now. POST: purge it. The queue is
    `?queue=` on both (the confirmation's form posts to its own address)."""
    allowed(request, VIEW)
    allowed(request, PURGE)
    name = request.GET.get("queue", "")
    try:
        known = 0 < len(name) <= QUEUE_NAME and backlog.purgeable(name, consumed_queues)
    except Exception as exc:  # noqa: BLE001  (nothing was purged)
        messages.error(request, f"{name} was not purged: the broker did not answer ({type(exc).__name__}: {exc}).")
        return HttpResponseRedirect(reverse("beatkeeper-queues"))
    if not known:
        raise Http404("No such queue: only a queue the Queues page lists can be purged.")
    if request.method != "POST":
        try:
            queue: backlog.Queue | None = backlog.read([name])[0]
        except Exception:  # noqa: BLE001  (the page says the depth is unknown)
            queue = None
        context = {**admin.site.each_context(request), "title": f"Purge {name}", "name": name, "queue": queue}
        return TemplateResponse(request, "beatkeeper/queue_purge.html", context)
    try:
        purged = backlog.purge(name, by=request.user.get_username())
    except Exception as exc:  # noqa: BLE001  (nothing was purged)
        messages.error(request, f"{name} was not purged: the broker did not answer ({type(exc).__name__}: {exc}).")
        return HttpResponseRedirect(reverse("beatkeeper-queues"))
    changes = {"messages": purged.messages, "runs_revoked": purged.runs}
    audit.record(request.user, "purge", None, object_type="queue", object_id=name[:64], changes=changes, via="admin")
    messages.success(request, f"Purged {name}: {purged.messages} message{'s' * (purged.messages != 1)} dropped, "
                              f"{purged.runs} queued run{'s' * (purged.runs != 1)} marked REVOKED.")  # fmt: skip
    return HttpResponseRedirect(reverse("beatkeeper-queues"))


def consumed_queues() -> list[str]:
    consumed, _ = fleet.consumed()
    return [queue for queues in consumed.values() for queue in queues]


def urls() -> list[Any]:
    view = admin.site.admin_view
    return [
        path("", view(queues_view), name="beatkeeper-queues"),
        path("purge/", view(purge_view), name="beatkeeper-queue-purge"),
    ]
