"""Run history in the console, from django-celery-results' rows: read-only, coloured by
state, filtered through indexes (each filter has a `(column, date_created)` index), paged
without counting the table, with retry and revoke through `scheduler_app.services`."""

from __future__ import annotations

import datetime as dt
import json
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_POST
from django_celery_beat.models import PeriodicTask

from scheduler_app import audit, insights, selectors, services
from scheduler_app.admin import display
from scheduler_app.admin.insights import flag_long_running, long_marker, state_history_html
from scheduler_app.admin.readonly import ReadOnly
from scheduler_app.models import Run
from scheduler_app.runs import ledger, states
from scheduler_app.runs.history import TRIGGERS, run_context

TRIGGER_SQL = 'substring(%(expressions)s from \'"trigger": "([a-z]+)"\')'
COUNT_CAP = 10_000  # a filtered list counts no further than this

if TYPE_CHECKING:  # Django's classes take no type arguments at run time (no django_stubs_ext.monkeypatch)
    RunPaginator = Paginator[Run]
    RunModelAdmin = admin.ModelAdmin[Run]
else:
    RunPaginator = Paginator
    RunModelAdmin = admin.ModelAdmin


class CappedPaginator(RunPaginator):
    """Counts at most COUNT_CAP + 1 rows: a page of a million runs costs what a page of ten
    thousand does. The list then says "10,000+"."""

    @cached_property
    def count(self) -> int:
        # Without the list's order, the count reads the filter's own index (4 ms instead of
        # 130 ms for a task filter at a million runs, bench/runs_admin.py).
        runs = cast(QuerySet[Run], self.object_list)  # the admin pages its changelist's queryset
        return runs.order_by()[: COUNT_CAP + 1].count()


class StateFilter(admin.SimpleListFilter):
    title, parameter_name = "state", "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(state, state) for state in selectors.RUN_STATES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        return queryset.filter(status=self.value()) if self.value() else queryset


class TextFilter(admin.SimpleListFilter):
    """A filter typed in (a schedule or task name), not listed: there may be thousands."""

    template = "beatkeeper/text_filter.html"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("", "")]  # a filter with no lookups is not shown at all

    # django-stubs type the choices for the default filter template; this filter's own template takes other keys.
    def choices(self, changelist: Any) -> list[dict[str, Any]]:  # type: ignore[override]  # stub: default template's
        others = {k: v for k, v in changelist.params.items() if k not in (self.parameter_name, "p")}
        return [{"value": self.value() or "", "name": self.parameter_name, "others": others.items()}]


class ScheduleFilter(TextFilter):
    title, parameter_name = "schedule", "schedule"

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        return queryset.filter(periodic_task_name=self.value()) if self.value() else queryset


class TaskFilter(admin.SimpleListFilter):
    title, parameter_name = "task", "task"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in services.registered_tasks()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        return queryset.filter(task_name=self.value()) if self.value() else queryset


class TriggerFilter(admin.SimpleListFilter):
    title, parameter_name = "trigger", "trigger"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(trigger, trigger) for trigger in TRIGGERS]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        trigger = self.value()
        return selectors.with_trigger(queryset, trigger) if trigger in TRIGGERS else queryset


class SinceFilter(admin.SimpleListFilter):
    title, parameter_name = "date", "since"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("1h", "last hour"), ("24h", "last 24 hours"), ("7d", "last 7 days"), ("30d", "last 30 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        since = self.value()
        if since not in selectors.SINCE:
            return queryset
        return queryset.filter(date_created__gte=timezone.now() - selectors.SINCE[since])


class RunAdmin(ReadOnly, RunModelAdmin):
    class Media:
        css = {"all": ["beatkeeper/console.css"]}

    # Compact, so that all fits at 1024 px beside the filters: schedule and task in one cell,
    # the slot and the start in another, the worker's name short with the whole in its title.
    list_display = ["run", "state", "what", "trigger", "when", "took", "worker_name", "attempt"]
    list_display_links = ["run"]
    list_filter = [StateFilter, ScheduleFilter, TaskFilter, TriggerFilter, SinceFilter]
    search_fields = ["task_id"]
    search_help_text = (
        "A run's id (the whole id, or its first 8 characters), or text in its arguments "
        "(runs of the last 24 hours, or of the date filter's window up to 7 days)."
    )
    ordering = ["-date_created"]
    list_per_page = 50
    paginator = CappedPaginator
    show_full_result_count = False
    actions = ["retry", "revoke"]
    change_form_template = "beatkeeper/run_change_form.html"
    change_list_template = "beatkeeper/run_change_list.html"  # issue 15: refreshes itself (live region)
    fieldsets = [
        (None, {"fields": ["task_id", "state", "schedule", "task_name", "worker"]}),
        ("Run", {"fields": ["context", "progress", "created", "started", "completed", "took"]}),
        ("State history", {"fields": ["state_history"]}),  # issue 15
        ("Arguments", {"fields": ["arguments", "keyword_arguments"]}),
        ("Result", {"fields": ["pretty_result", "error", "shown_traceback"]}),
    ]
    readonly_fields = ["task_id", "state", "schedule", "task_name", "worker", "context", "progress", "created",
                       "started", "completed", "took", "arguments", "keyword_arguments", "pretty_result",
                       "error", "shown_traceback", "state_history"]  # fmt: skip

    def has_retry_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("scheduler_app.retry_run")

    def has_revoke_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("scheduler_app.revoke_run")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Run], search_term: str) -> Any:
        term = search_term.strip()
        if not term:
            return queryset, False
        chosen = selectors.SINCE.get(request.GET.get("since", ""))  # issue 15: by id, else by arguments
        return insights.search_runs(queryset, term, insights.arguments_since(timezone.now(), chosen)), False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context: dict[str, Any] = getattr(response, "context_data", {})
        changelist = context.get("cl")
        if changelist is not None:
            self._link_schedules(changelist.result_list)
            flag_long_running(changelist.result_list)  # issue 15: the "long" marker by the state
            capped = changelist.result_count > COUNT_CAP
            context["title"] = f"Runs ({COUNT_CAP:,}+)" if capped else "Runs"
        return response

    def _link_schedules(self, runs: Any) -> None:
        names = {run.periodic_task_name for run in runs if run.periodic_task_name}
        ids = dict(PeriodicTask.objects.filter(name__in=names).values_list("name", "pk"))
        for run in runs:
            run.schedule_pk = ids.get(run.periodic_task_name)

    # --- columns -------------------------------------------------------------------------
    @admin.display(description="run", ordering="date_created")
    def run(self, run: Run) -> str:
        return run.task_id[:8]

    @admin.display(description="state", ordering="status")
    def state(self, run: Run) -> str:
        return display.state_badge(run.status) + long_marker(run)

    @admin.display(description="state history")
    def state_history(self, run: Run) -> str:  # issue 15: a time per state, the long-running flag (admin/insights.py)
        return state_history_html(run)

    @admin.display(description="schedule")
    def schedule(self, run: Run) -> str:
        if not run.periodic_task_name:
            return "–"
        pk = getattr(run, "schedule_pk", None)
        if pk is None and not hasattr(run, "schedule_pk"):
            pk = PeriodicTask.objects.filter(name=run.periodic_task_name).values_list("pk", flat=True).first()
        if pk is None:
            return run.periodic_task_name
        url = reverse("admin:django_celery_beat_periodictask_change", args=[pk])
        return format_html('<a href="{}">{}</a>', url, run.periodic_task_name)

    @admin.display(description="schedule / task")
    def what(self, run: Run) -> str:
        return format_html(
            '{}<small title="{}">{}</small>', self.schedule(run), run.task_name or "", run.task_name or "–"
        )

    @admin.display(description="trigger")
    def trigger(self, run: Run) -> str:
        return display.trigger_of(run)

    @admin.display(description="scheduled for")
    def scheduled_for(self, run: Run) -> str:
        value: Any = run_context(run).get("scheduled_for")  # any JSON value: what is not a string fails below
        try:
            return display.moment(dt.datetime.fromisoformat(value))
        except (TypeError, ValueError):
            return str(value) if value else "–"

    @admin.display(description="scheduled for / started", ordering="date_created")
    def when(self, run: Run) -> str:
        value: Any = run_context(run).get("scheduled_for")
        try:
            slot = display.short_moment(dt.datetime.fromisoformat(value))
        except (TypeError, ValueError):
            slot = format_html("{}", str(value) if value else "–")
        started = f"{timezone.localtime(run.date_started):%H:%M:%S}" if run.date_started else "–"
        return format_html('{}<small title="{}">started {}</small>', slot, display.moment(run.date_started), started)

    @admin.display(description="took")
    def took(self, run: Run) -> str:
        return display.took(run)

    @admin.display(description="worker", ordering="worker")
    def worker_name(self, run: Run) -> str:
        name = run.worker or ""
        node, _, host = name.partition("@")  # celery@host.example.com: the node, then the host
        return format_html('<span title="{}">{}<small>{}</small></span>', name, node or "–", host)

    @admin.display(description="created")
    def created(self, run: Run) -> str:
        return display.moment(run.date_created)

    @admin.display(description="started")
    def started(self, run: Run) -> str:
        return display.moment(run.date_started)

    @admin.display(description="completed")
    def completed(self, run: Run) -> str:
        return display.completed(run)

    @admin.display(description="traceback")
    def shown_traceback(self, run: Run) -> str:
        if not run.traceback:
            return "–"
        return format_html('<pre class="bk-traceback" id="bk-traceback">{}</pre>', run.traceback)

    @admin.display(description="attempt")
    def attempt(self, run: Run) -> str:
        return str(run_context(run).get("attempt", "–"))

    # --- the run's page ------------------------------------------------------------------
    @admin.display(description="context")
    def context(self, run: Run) -> str:
        facts = run_context(run)
        earlier = Run.objects.filter(task_id=facts.get("retry_of") or "-").values_list("pk", flat=True).first()
        if earlier is None:
            return format_html("<pre class='bk-json'>{}</pre>", pretty(facts))
        url = reverse("admin:scheduler_app_run_change", args=[earlier])
        return format_html("<pre class='bk-json'>{}</pre><a href='{}'>retry of {}</a>", pretty(facts), url,
                           facts["retry_of"][:8])  # fmt: skip

    @admin.display(description="progress")
    def progress(self, run: Run) -> str:
        if run.status != states.PROGRESS:
            return "–"
        data = loads(run.result) or {}
        percent = float(data.get("percent", 0)) if isinstance(data, dict) else 0.0
        return format_html(
            '<progress max="100" value="{}"></progress> {}% {}', f"{percent:.0f}", f"{percent:.0f}",
            data.get("message", "") if isinstance(data, dict) else "",
        )  # fmt: skip

    @admin.display(description="args")
    def arguments(self, run: Run) -> str:
        return format_html("<pre class='bk-json'>{}</pre>", shown_arguments(run.task_args))

    @admin.display(description="kwargs")
    def keyword_arguments(self, run: Run) -> str:
        return format_html("<pre class='bk-json'>{}</pre>", shown_arguments(run.task_kwargs))

    @admin.display(description="result")
    def pretty_result(self, run: Run) -> str:
        return format_html("<pre class='bk-json'>{}</pre>", pretty(loads(run.result)))

    @admin.display(description="error")
    def error(self, run: Run) -> str:
        data = loads(run.result)
        if isinstance(data, dict) and "exc_type" in data:
            message = data.get("exc_message")
            text = " ".join(map(str, message)) if isinstance(message, list) else str(message)
            return format_html("<strong>{}</strong>: {}", data["exc_type"], text)
        return "–"

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        run = context.get("original")
        if run is not None:
            context["can_retry"] = self.has_retry_permission(request) and run.status in states.TERMINAL_STATES
            context["can_revoke"] = self.has_revoke_permission(request) and run.status in services.REVOCABLE
            context["running"] = run.status in services.REVOCABLE
            context["title"] = context["bk_run_title"] = display.run_title(run)  # not `<Task: uuid (SUCCESS)>`
            context["subtitle"] = None
        return super().render_change_form(request, context, *args, **kwargs)

    # --- retry and revoke ----------------------------------------------------------------
    @admin.action(description="Retry selected runs with the same arguments", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        if self._each(request, queryset, lambda run: services.retry_run(run, by=request.user), "retry"):
            self.warn_if_no_worker(request)

    @admin.action(description="Revoke selected queued or running runs…", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[Run]) -> HttpResponse | None:
        if request.POST.get("confirm") != "yes":  # first the confirmation page, then (POSTed again) the revocation
            return self.confirm_revoke(request, list(queryset[:500]), bulk=True)
        self._each(request, queryset, lambda run: services.revoke_run(run, by=request.user), "revoke")
        return None

    def confirm_revoke(self, request: HttpRequest, runs: list[Run], *, bulk: bool) -> TemplateResponse:
        changelist = reverse("admin:scheduler_app_run_changelist")
        one = reverse("admin:scheduler_app_run_change", args=[runs[0].pk]) if runs and not bulk else changelist
        context = {**self.admin_site.each_context(request), "title": "Revoke runs?", "runs": runs, "bulk": bulk,
                   "opts": self.opts, "action_url": request.get_full_path(), "back_url": one}  # fmt: skip
        return TemplateResponse(request, "beatkeeper/run_revoke_confirm.html", context)

    def warn_if_no_worker(self, request: HttpRequest) -> None:
        for warning in services.run_warnings():  # queued all the same; it waits for a worker
            self.message_user(request, warning, messages.WARNING)

    def _each(self, request: HttpRequest, queryset: QuerySet[Run], write: Any, what: str) -> int:
        done, count = DONE[what], 0
        for run in queryset[:500]:
            try:
                new_id = write(run)
                self.log_change(request, run, f"{done}" + (f": new run {new_id}" if new_id else ""))
                audit.record(request.user, what, run, object_type="run", changes={"run": new_id} if new_id else {},
                             via="admin")  # fmt: skip
                count += 1
            except services.BrokerUnavailable as exc:  # one bounded wait, not one per selected run
                self.message_user(request, f"{run.task_id[:8]}: {exc} The rest were not done.", messages.ERROR)
                break
            except services.ServiceError as exc:
                self.message_user(request, f"{run.task_id[:8]}: {exc}", messages.ERROR)
        if count:
            self.message_user(request, f"{done} {count} run(s).", messages.SUCCESS)
        return count

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Run | None:
        run = super().get_object(request, object_id, from_field)
        return ledger.fresh(run) if run is not None else None  # a state the recorder has not written yet

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/do/<str:what>/", view(require_POST(self.button_view)), name="scheduler_app_run_do"),
            *super().get_urls(),
        ]

    def button_view(self, request: HttpRequest, pk: int, what: str) -> HttpResponse:
        run = get_object_or_404(Run, pk=pk)
        if what not in ("retry", "revoke") or not getattr(self, f"has_{what}_permission")(request, run):
            raise PermissionDenied
        if what == "revoke" and request.POST.get("confirm") != "yes":
            return self.confirm_revoke(request, [ledger.fresh(run)], bulk=False)
        try:
            if what == "retry":
                new_id = services.retry_run(run, by=request.user)
                self.log_change(request, run, f"Retried: new run {new_id}")
                audit.record(request.user, "retry", run, object_type="run", changes={"run": new_id}, via="admin")
                run = Run.objects.get(task_id=new_id)
                self.message_user(request, "Retried: this is the new run.", messages.SUCCESS)
                self.warn_if_no_worker(request)
            else:
                services.revoke_run(run, by=request.user)
                self.log_change(request, run, "Revoked")
                audit.record(request.user, "revoke", run, object_type="run", via="admin")
                self.message_user(request, "Revoked.", messages.SUCCESS)
        except services.ServiceError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(reverse("admin:scheduler_app_run_change", args=[run.pk]))


DONE = {"retry": "Retried", "revoke": "Revoked"}


def loads(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str) if not isinstance(value, str) else value


def shown_arguments(stored: str | None) -> str:
    value = loads(stored)
    return value if isinstance(value, str) else pretty(value)
