"""The console's dead letters: messages workers set aside instead of running
(scheduler_app/runs/poison.py). A list, each one's whole message, and retry / discard
behind a confirmation page (POST, CSRF). Seen with the permission to view runs; retried
with the permission to retry a run; discarded with the permission to revoke one."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.contrib import admin, messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from redis.exceptions import RedisError

from scheduler_app import audit, services
from scheduler_app.admin.access import ACTIONS, DISCARD, RETRY, VIEW, allowed
from scheduler_app.runs import dead_letters
from scheduler_app.runs.dead_letters import DeadLetter

PAGE = 100


def client() -> Any:
    return dead_letters.client()


def when(letter: DeadLetter) -> dt.datetime:
    return dt.datetime.fromtimestamp(letter.set_aside_at, dt.UTC)


def render(request: HttpRequest, template: str, title: str, **context: Any) -> TemplateResponse:
    user = request.user
    context |= {"can_retry": user.has_perm(RETRY), "can_discard": user.has_perm(DISCARD)}
    return TemplateResponse(request, template, {**admin.site.each_context(request), "title": title, **context})


def list_view(request: HttpRequest) -> HttpResponse:
    allowed(request, VIEW)
    page = request.GET.get("page", "1")
    number = int(page) if page.isdigit() and int(page) > 0 else 1
    try:
        letters, count = dead_letters.page((number - 1) * PAGE, PAGE, client()), dead_letters.count(client())
    except RedisError as exc:
        return render(request, "beatkeeper/dead_letters.html", "Dead letters", error=str(exc), rows=[], count=None)
    rows = [{"letter": letter, "at": when(letter)} for letter in letters]
    more = count > number * PAGE
    return render(request, "beatkeeper/dead_letters.html", "Dead letters", rows=rows, count=count, page=number,
                  next_page=number + 1 if more else None, previous_page=number - 1 if number > 1 else None)  # fmt: skip


def found(letter_id: str) -> DeadLetter:
    """The letter (RedisError when Redis does not answer: see `unavailable`)."""
    letter = dead_letters.get(letter_id, client())
    if letter is None:
        raise Http404("No such dead letter: it was retried or discarded.")
    return letter


def unavailable(request: HttpRequest, exc: RedisError) -> HttpResponse:
    """Redis did not answer: the list page saying so, as a 503 (not a "no such letter")."""
    response = render(request, "beatkeeper/dead_letters.html", "Dead letters", error=str(exc), rows=[], count=None)
    response.status_code = 503
    return response


def detail_view(request: HttpRequest, letter_id: str) -> HttpResponse:
    allowed(request, VIEW)
    try:
        letter = found(letter_id)
    except RedisError as exc:
        return unavailable(request, exc)
    return render(request, "beatkeeper/dead_letter.html", f"Dead letter {letter.task}", letter=letter,
                  at=when(letter), body=pretty_body(letter.body), headers=pretty(letter.headers),
                  delivery=pretty({**letter.delivery, **letter.properties}))  # fmt: skip


def action_view(request: HttpRequest, letter_id: str, what: str) -> HttpResponse:
    """GET: the confirmation page. POST: do it."""
    if what not in ACTIONS:
        raise Http404("Dead letters can be retried or discarded.")
    allowed(request, VIEW)
    allowed(request, ACTIONS[what])
    try:
        letter = found(letter_id)
    except RedisError as exc:
        return unavailable(request, exc)
    if request.method != "POST":
        return render(request, "beatkeeper/dead_letter_confirm.html", f"{what.capitalize()} a dead letter",
                      letter=letter, at=when(letter), what=what)  # fmt: skip
    try:
        if what == "retry":
            run_id = services.retry_dead_letter(letter.id, by=request.user)
            audit.record(request.user, "retry", None, object_type="dead letter", object_id=letter.id, via="admin",
                         changes={"run": run_id, "task": letter.task, "retry_of": letter.task_id})  # fmt: skip
            messages.success(request, f"Retried {letter.task}: new run {run_id}.")
        else:
            services.discard_dead_letter(letter.id)
            audit.record(request.user, "discard", None, object_type="dead letter", object_id=letter.id, via="admin",
                         changes={"task": letter.task, "run": letter.task_id, "reason": letter.reason})  # fmt: skip
            messages.success(request, f"Discarded the dead letter of {letter.task} (run {letter.task_id}).")
    except services.ServiceError as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(reverse("beatkeeper-dead-letter", args=[letter.id]))
    return HttpResponseRedirect(reverse("beatkeeper-dead-letters"))


def pretty(value: dict[str, Any]) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=True, default=str)
    except (RecursionError, ValueError):
        return repr(value)


def pretty_body(body: str) -> str:
    """The body indented when it is JSON that reads back; as it came otherwise."""
    try:
        return json.dumps(json.loads(body), indent=2)
    except (RecursionError, ValueError):
        return body


def urls() -> list[Any]:
    view = admin.site.admin_view
    return [
        path("", view(list_view), name="beatkeeper-dead-letters"),
        path("<str:letter_id>/", view(detail_view), name="beatkeeper-dead-letter"),
        path("<str:letter_id>/<str:what>/", view(action_view), name="beatkeeper-dead-letter-do"),
    ]
