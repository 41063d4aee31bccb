"""Schedules in the console: the list with next and last runs, health and policy; the
form with a live preview; run now, pause with a note, resume and duplicate. Every write
goes through `scheduler_app.services`, so beat's change log sees it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, QuerySet, Subquery, prefetch_related_objects
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import conditional_escape, format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.views.decorators.http import require_POST
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import audit, limits, schedules, selectors, services, versions
from scheduler_app import forms as shared
from scheduler_app.admin import display
from scheduler_app.admin.audit import Audited
from scheduler_app.admin.forms import AdminScheduleForm, ScheduleActionForm, zone_choices
from scheduler_app.admin.insights import attach_timelines, schedule_timeline
from scheduler_app.beat import slots
from scheduler_app.models import BusinessCalendar, ScheduleHealth, SchedulePolicy, ScheduleVersion
from scheduler_app.monitoring import alerts
from scheduler_app.runs.policy import task_policy

if TYPE_CHECKING:  # Django's classes take no type arguments at run time (no django_stubs_ext.monkeypatch)
    PolicyModelForm = forms.ModelForm[SchedulePolicy]
    PolicyFormSetBase = BaseInlineFormSet[SchedulePolicy, PeriodicTask, forms.ModelForm[SchedulePolicy]]
    PolicyInlineBase = admin.StackedInline[SchedulePolicy, PeriodicTask]
    ScheduleModelAdmin = admin.ModelAdmin[PeriodicTask]
else:
    PolicyModelForm = forms.ModelForm
    PolicyFormSetBase = BaseInlineFormSet
    PolicyInlineBase = admin.StackedInline
    ScheduleModelAdmin = admin.ModelAdmin


class PolicyFormSet(PolicyFormSetBase):
    def _construct_form(self, i: int, **kwargs: Any) -> Any:
        form = super()._construct_form(i, **kwargs)  # type: ignore[misc]  # django-stubs omit this private method
        form.instance.task_for_checks = self.instance.task  # a new schedule's policy is checked against its task
        form.schedule = self.instance  # the schedule as its form left it: jitter and calendars are checked on it
        return form


class PolicyForm(PolicyModelForm):
    """The policy with the schedule's own rules: jitter and calendars checked against the
    schedule as its form left it (`forms.policy_problems`, the API's words)."""

    class Meta:
        model = SchedulePolicy
        fields = "__all__"
        widgets = {"calendars": forms.CheckboxSelectMultiple}

    def clean_jitter(self) -> int | None:
        jitter: int | None = self.cleaned_data.get("jitter")
        problem = shared.jitter_problem(jitter, None, "")  # the range; the gap is checked with the schedule
        if problem:
            raise forms.ValidationError(problem)
        return jitter

    def clean(self) -> dict[str, Any]:
        data = cast(dict[str, Any], super().clean())
        task: PeriodicTask | None = getattr(self, "schedule", None)  # set by PolicyFormSet
        row = (task.clocked or task.interval or task.crontab or task.solar) if task is not None else None
        if task is None or row is None or "jitter" in self.errors:
            return data
        given = shared.Rules(data.get("jitter"), tuple(data.get("calendars") or ()), data.get("calendar_rule") or "")
        for field, problem in shared.policy_problems(row, task.name, given).items():
            self.add_error(field, problem)
        return data


class PolicyInline(PolicyInlineBase):
    model = SchedulePolicy
    form = PolicyForm
    formset = PolicyFormSet
    can_delete = False
    max_num = 1
    verbose_name = "policy and owner"
    verbose_name_plural = "policy and owner"
    # The owner is picked from a plain list: Django's autocomplete asks for the permission to
    # view users, which an Editor (scheduler_app.roles) does not hold.
    fields = ["owner", "overlap", "catch_up", "max_retries", "retry_backoff", "retry_backoff_max", "soft_time_limit",
              "time_limit", "lock_ttl", "late_after", "alert_after_failures", "pause_after_failures", "jitter",
              "calendars", "calendar_rule", "pool", "pool_full"]  # fmt: skip

    # A page the user may only read (a Viewer's, an Operator's) has no empty policy form to fill:
    # Django zeroes it only after the forms are built, so the editable fields would show.
    def get_extra(self, request: HttpRequest, obj: PeriodicTask | None = None, **kwargs: Any) -> int:
        return self.extra if editable(request, obj) else 0

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "owner":  # who may answer for a schedule: an active user, by name
            kwargs["queryset"] = get_user_model().objects.filter(is_active=True).order_by("username")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_max_num(self, request: HttpRequest, obj: PeriodicTask | None = None, **kwargs: Any) -> int | None:
        return self.max_num if editable(request, obj) else 0


def editable(request: HttpRequest, task: PeriodicTask | None) -> bool:
    """Whether the user may change this schedule (or, for a new one, add schedules)."""
    return bool(request.user.has_perm(f"django_celery_beat.{'change' if task else 'add'}_periodictask"))


class StateFilter(admin.SimpleListFilter):
    title, parameter_name = "state", "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("enabled", "enabled"), ("paused", "paused"), ("disabled", "disabled, not paused")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> QuerySet[PeriodicTask]:
        if self.value() == "enabled":
            return queryset.filter(enabled=True)
        if self.value() == "paused":
            return queryset.filter(enabled=False, policy__paused_at__isnull=False)
        if self.value() == "disabled":
            return queryset.filter(enabled=False).exclude(policy__paused_at__isnull=False)
        return queryset


class HealthFilter(admin.SimpleListFilter):
    title, parameter_name = "health", "health"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(state, state) for state in ScheduleHealth.STATES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> QuerySet[PeriodicTask]:
        return queryset.filter(health__state=self.value()) if self.value() else queryset


class TaskFilter(admin.SimpleListFilter):
    title, parameter_name = "task", "task"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = set(PeriodicTask.objects.values_list("task", flat=True).distinct()) | set(services.registered_tasks())
        return [(name, name) for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> QuerySet[PeriodicTask]:
        return queryset.filter(task=self.value()) if self.value() else queryset


class QueueFilter(admin.SimpleListFilter):
    title, parameter_name = "queue", "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        queues = PeriodicTask.objects.exclude(queue=None).values_list("queue", flat=True).distinct()
        return [("-", "default"), *((q, q) for q in sorted(queues) if q)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> QuerySet[PeriodicTask]:
        if self.value() == "-":
            return queryset.filter(queue__isnull=True)
        return queryset.filter(queue=self.value()) if self.value() else queryset


class LastOutcomeFilter(admin.SimpleListFilter):
    title, parameter_name = "last outcome", "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(s, s) for s in ("SUCCESS", "FAILURE", "SKIPPED", "EXPIRED", "REVOKED", "STARTED")] + [
            ("none", "never")
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> QuerySet[PeriodicTask]:
        if not self.value():
            return queryset
        runs = TaskResult.objects.filter(periodic_task_name=OuterRef("name")).order_by("-date_created")
        queryset = queryset.annotate(last_status=Subquery(runs.values("status")[:1]))
        return (
            queryset.filter(last_status__isnull=True)
            if self.value() == "none"
            else queryset.filter(last_status=self.value())
        )


class ScheduleChangeList(ChangeList):
    """Reads the page's run statistics in one pass once the page is known."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        # The page's calendars and their dates, for the next runs and the timelines: three queries, not three a row.
        prefetch_related_objects(list(self.result_list), "policy__calendars__exclusions")
        stats = selectors.run_stats([task.name for task in self.result_list])
        now = timezone.now()
        attach_timelines(self.result_list, now)  # the page's timelines: one query
        for task in self.result_list:
            task.stats = stats.get(task.name)
            task.upcoming = schedules.shown_next_run(task, now)


class ScheduleAdmin(Audited, ScheduleModelAdmin):
    class Media:
        css = {"all": ["beatkeeper/console.css"]}

    form = AdminScheduleForm
    action_form = ScheduleActionForm
    inlines = [PolicyInline]
    list_per_page = 50
    list_select_related = ["interval", "crontab", "solar", "clocked", "policy__owner", "policy__paused_by", "health"]
    # Compact, so that all fits at 1024 px beside the filters: related facts share a cell (the
    # name over its task, success over median, the owner over the overlap policy).
    list_display = ["name_and_task", "schedule", "next_run", "last_run", "timeline", "success_and_median", "state",
                    "owner", "health_state"]  # fmt: skip
    list_display_links = ["name_and_task"]
    list_filter = [StateFilter, HealthFilter, TaskFilter, QueueFilter, LastOutcomeFilter]
    search_fields = ["name", "task", "description"]
    ordering = ["name"]
    actions = ["run_now", "pause", "resume", "duplicate"]
    readonly_fields = ["timeline", "pause_state", "last_runs", "incidents", "versions", "total_run_count",
                       "last_run_at", "date_changed", "calendar_rules"]  # fmt: skip
    change_form_template = "beatkeeper/schedule_change_form.html"
    fieldsets = [
        (None, {"fields": ["name", "task", "description", "enabled", "pause_state"]}),
        (
            "Schedule",
            {
                "fields": [
                    "kind",
                    "cron_expression",
                    ("minute", "hour", "day_of_month", "month_of_year", "day_of_week"),
                    "cron_timezone",
                    ("every", "period"),
                    "clocked_time",
                    ("solar_event", "latitude", "longitude"),
                    "start_time",
                    "one_off",
                    "calendar_rules",
                ]
            },
        ),  # fmt: skip
        ("Arguments", {"fields": ["args", "kwargs"]}),
        ("Message options", {"fields": ["queue", "priority", "expires", "expire_seconds", "headers"]}),
        ("Recent runs", {"fields": ["timeline", "last_runs", "last_run_at", "total_run_count", "date_changed"]}),
        ("Incidents (late, failing, recovered)", {"fields": ["incidents"]}),
        ("Versions", {"fields": ["versions"]}),
    ]
    LATER = ("Recent runs", "Incidents (late, failing, recovered)", "Versions")  # once it exists

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ScheduleChangeList

    def get_fieldsets(self, request: HttpRequest, obj: PeriodicTask | None = None) -> list[Any]:
        if obj is not None and not editable(request, obj):  # read only: the schedule in words, not its inputs
            return [(name, {"fields": READ_ONLY_SCHEDULE}) if name == "Schedule" else (name, options)
                    for name, options in self.fieldsets]  # fmt: skip
        return (
            self.fieldsets if obj else [(name, options) for name, options in self.fieldsets if name not in self.LATER]
        )

    # --- columns -------------------------------------------------------------------------
    @admin.display(description="name / task", ordering="name")
    def name_and_task(self, task: PeriodicTask) -> str:
        return format_html('{}<small title="{}">{}</small>', task.name, task.task, task.task)

    @admin.display(description="schedule")
    def schedule(self, task: PeriodicTask) -> str:
        return schedules.shown_description(task)

    @admin.display(description="success / median")
    def success_and_median(self, task: PeriodicTask) -> str:
        return format_html('{}<small title="median duration">{}</small>', self.success(task), self.median(task))

    @admin.display(description="zone")
    def zone(self, task: PeriodicTask) -> str:
        return schedules.zone_of(task)

    @admin.display(description="next run")
    def next_run(self, task: PeriodicTask) -> str:
        upcoming = getattr(task, "upcoming", None) or schedules.shown_next_run(task)
        if upcoming.at is None:
            return format_html('<span class="bk-muted">{}</span>', upcoming.reason)
        return display.local_and_utc(upcoming.local(), upcoming.at)

    @admin.display(description="last run", ordering="last_run_at")
    def last_run(self, task: PeriodicTask) -> str:
        stats = getattr(task, "stats", None)
        if stats is None:
            return format_html('<span class="bk-muted">{}</span>', "never")
        return format_html("{} {}", display.state_badge(stats.last_state), display.ago(stats.last_at))

    @admin.display(description="success")
    def success(self, task: PeriodicTask) -> str:
        stats = getattr(task, "stats", None)
        return "–" if stats is None or stats.success_rate is None else f"{stats.success_rate:.0%}"

    @admin.display(description="median")
    def median(self, task: PeriodicTask) -> str:
        stats = getattr(task, "stats", None)
        return display.seconds(stats.median_seconds if stats else None)

    @admin.display(description="overlap")
    def overlap(self, task: PeriodicTask) -> str:
        policy = getattr(task, "policy", None)
        return (policy and policy.overlap) or task_policy(task.task).overlap

    @admin.display(description="state", ordering="enabled")
    def state(self, task: PeriodicTask) -> str:
        policy = getattr(task, "policy", None)
        if task.enabled:
            return format_html('<span class="bk-state bk-enabled">{}</span>', "enabled")
        if policy is None or policy.paused_at is None:
            return format_html('<span class="bk-state bk-disabled">{}</span>', "disabled")
        return format_html(
            '<span class="bk-state bk-paused" title="{}">paused</span><small>by {} {}</small>{}',
            policy.pause_note,
            policy.paused_by or "someone",
            display.ago(policy.paused_at),
            format_html("<small>“{}”</small>", Truncator(policy.pause_note).chars(60)) if policy.pause_note else "",
        )

    @admin.display(description="owner / overlap")
    def owner(self, task: PeriodicTask) -> str:
        policy = getattr(task, "policy", None)
        owner = str(policy.owner) if policy and policy.owner else "–"
        return format_html('<span title="{}">{}</span><small title="overlap policy">{}</small>', owner, owner,
                           self.overlap(task))  # fmt: skip

    @admin.display(description="health")
    def health_state(self, task: PeriodicTask) -> str:
        health = getattr(task, "health", None)
        if health is None:
            return "–"
        return format_html('<span class="bk-health bk-health-{}">{}</span>', health.state, health.state)

    @admin.display(description="jitter and calendars")
    def calendar_rules(self, task: PeriodicTask) -> str:
        """The schedule's own rules as saved (edited below, under its policy): jitter, its
        calendars (linked) and what becomes of a slot they exclude."""
        policy = getattr(task, "policy", None) if task.pk else None
        if policy is None:
            return "none yet: set them under policy and owner below"
        jitter = f"jitter up to {policy.jitter} s" if policy.jitter else "no jitter"
        found = list(policy.calendars.all())
        if not found:
            return f"{jitter}; no calendar: every slot runs"
        links = format_html_join(", ", '<a href="{}">{}</a>', (
            (reverse("admin:scheduler_app_businesscalendar_change", args=[c.pk]), c.name) for c in found))  # fmt: skip
        rule = "moved to the next allowed moment" if policy.calendar_rule == "move" else "skipped"
        return format_html("{}; calendars {}: a slot in an excluded time is {}", jitter, links, rule)

    @admin.display(description="paused")
    def pause_state(self, task: PeriodicTask) -> str:
        policy = getattr(task, "policy", None)
        if policy is None or policy.paused_at is None:
            return "no"
        return format_html("by {} on {}: “{}”", policy.paused_by or "someone", policy.paused_at, policy.pause_note)

    @admin.display(description="last slots")
    def timeline(self, task: PeriodicTask) -> str:  # issue 15: the strip of its last slots (admin/insights.py)
        return schedule_timeline(task, legend=not hasattr(task, "timeline_cells"))

    @admin.display(description="last runs")
    def last_runs(self, task: PeriodicTask) -> str:
        runs = selectors.recent_runs(task.name)
        if not runs:
            return "none yet"
        rows = format_html_join(
            "",
            "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (display.run_url(run), run.task_id[:8], display.state_badge(run.status), display.trigger_of(run),
                 run.date_created,
                 display.seconds(selectors.duration(
                     run.date_started,
                     run.date_done)))
                for run in runs
            ),
        )  # fmt: skip
        more = reverse("admin:scheduler_app_run_changelist") + "?" + display.query(schedule=task.name)
        return format_html(
            "<table class='bk-runs'><tr><th>run</th><th>state</th><th>trigger</th><th>created</th><th>took</th></tr>"
            "{}</table><a href='{}'>all runs of this schedule</a>",
            rows,
            more,
        )

    @admin.display(description="incidents")
    def incidents(self, task: PeriodicTask) -> str:
        found = alerts.recent_incidents(task)
        if not found:
            return "none: it has not been late or failing"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td></tr>",
            (
                (incident.at, display.incident_badge(incident.kind), alerts.subject(incident),
                 format_html(" <strong>{}</strong>", "auto-paused") if incident.auto_paused else "",
                 deliveries(incident))
                for incident in found
            ),
        )  # fmt: skip
        return format_html(
            "<table class='bk-runs'><tr><th>at</th><th>what</th><th>message</th><th>sent</th></tr>{}</table>", rows
        )

    @admin.display(description="versions")
    def versions(self, task: PeriodicTask) -> str:
        """Every version, newest first: who, when, through which door, what changed; each one
        opens to be compared with today's and restored."""
        found = versions.of(task)
        if not found:
            return "None yet: the next change through any door keeps one."
        row = "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td></tr>"
        rows = format_html_join("", row, (
            (reverse("admin:scheduler_app_schedule_version", args=[task.pk, v.number]), v.number,
             v.at.strftime("%Y-%m-%d %H:%M:%S %Z"), v.actor_name, v.via,
             v.action + (f" of version {v.restored_from}" if v.restored_from else ""), changed_fields(v))
            for v in found))  # fmt: skip
        return format_html(
            "<table class='bk-versions' id='bk-versions'><thead><tr><th>#</th><th>at</th><th>by (door)</th>"
            "<th>what</th><th>fields changed</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def version_view(self, request: HttpRequest, pk: int, number: int) -> HttpResponse:
        """A version whole, beside today's schedule; restoring it is one button (POST)."""
        task, version = self.version_of(pk, number)
        if not self.has_view_permission(request, task):
            raise PermissionDenied
        differences = [
            (d.field, versions.shown(d.then), versions.shown(d.now)) for d in versions.compare(version, task)
        ]
        context = {**self.admin_site.each_context(request), "title": f"Version {number} of {task.name}",
                   "opts": self.opts, "original": task, "version": version, "differences": differences,
                   "snapshot": json.dumps(version.snapshot, indent=2, sort_keys=True),
                   "can_restore": self.has_change_permission(request, task) and bool(differences)}  # fmt: skip
        return TemplateResponse(request, "beatkeeper/schedule_version.html", context)

    def version_of(self, pk: int, number: int) -> tuple[PeriodicTask, ScheduleVersion]:
        """The schedule and its version, or 404 (also for numbers past what a database column holds)."""
        task = get_object_or_404(PeriodicTask, pk=pk) if pk < 2**63 else None
        version = versions.get(task, number) if task is not None and number < 2**31 else None
        if task is None or version is None:
            raise Http404(f"The schedule has no version {number}.")
        return task, version

    def restore_view(self, request: HttpRequest, pk: int, number: int) -> HttpResponse:
        task, version = self.version_of(pk, number)
        if not self.has_change_permission(request, task):
            raise PermissionDenied
        try:
            versions.restore(task, version, by=request.user, via="admin")
        except versions.RestoreRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(reverse("admin:scheduler_app_schedule_version", args=[pk, number]))
        self.message_user(request, f"Restored version {number}; the restore is itself a new version.")
        return HttpResponseRedirect(reverse("admin:django_celery_beat_periodictask_change", args=[pk]))

    # --- who may do what ------------------------------------------------------------------
    def has_operate_permission(self, request: HttpRequest, obj: PeriodicTask | None = None) -> bool:
        """Run now, pause and resume: an Operator's, who may not change the schedule (`roles`)."""
        return bool(request.user.has_perm(OPERATE))

    def has_backfill_permission(self, request: HttpRequest, obj: PeriodicTask | None = None) -> bool:
        return _backfills.can_backfill(request)

    # --- writes --------------------------------------------------------------------------
    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        for warning in getattr(form, "warnings", []):  # saved, but worth a word (a queue no worker reads)
            self.message_user(request, warning, messages.WARNING)
        services.policy_of(form.instance)  # every schedule made here has its policy row
        if form.instance.enabled:
            services.clear_pause(form.instance)

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:  # fmt: skip
        extra = {"zones": [zone for zone, _ in zone_choices()], **(extra_context or {})}
        return super().changeform_view(request, object_id, form_url, extra)

    # --- the schedule named in words (not `30 2 * * * (m/h/dM/MY/d) Europe/Berlin`) ---------
    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        task = context.get("original")
        if task is not None:
            context["subtitle"] = context["bk_schedule_title"] = in_words(task)
        # The page's buttons show only to whoever may use them (a Viewer sees none).
        context["bk_can_operate"] = self.has_operate_permission(request, task)
        context["bk_can_duplicate"] = self.has_add_permission(request)
        return super().render_change_form(request, context, *args, **kwargs)

    def response_add(
        self, request: HttpRequest, obj: PeriodicTask, post_url_continue: str | None = None
    ) -> HttpResponse:
        request.bk_named = obj  # type: ignore[attr-defined]  # read by message_user, for this request only
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request: HttpRequest, obj: PeriodicTask) -> HttpResponse:
        request.bk_named = obj  # type: ignore[attr-defined]
        return super().response_change(request, obj)

    def message_user(self, request: HttpRequest, message: Any, *args: Any, **kwargs: Any) -> None:
        """The admin's "The periodic task “…” was added" names the schedule by its __str__;
        here it is named as the list names it."""
        task = getattr(request, "bk_named", None)
        if task is not None:
            shown = conditional_escape(str(task))
            message = mark_safe(str(conditional_escape(message)).replace(shown, conditional_escape(in_words(task))))  # noqa: S308  (both parts escaped)
        super().message_user(request, message, *args, **kwargs)

    def apply(self, request: HttpRequest, task: PeriodicTask, what: str) -> PeriodicTask:
        """One write on one schedule, logged in the admin's history and the audit trail (as the
        API records it); returns the schedule to show."""
        if what == "run":
            run_id = services.run_now(task, by=request.user)
            self.log_change(request, task, f"Ran now: run {run_id}")
            audit.record(request.user, "run", task, changes={"run": run_id}, via="admin")
        elif what == "pause":
            note = pause_note(request)
            services.pause(task, by=request.user, note=note)
            self.log_change(request, task, f"Paused: {note}" if note else "Paused")
            audit.record(request.user, "pause", task, changes={"note": note}, via="admin")
        elif what == "resume":
            services.resume(task, by=request.user)
            self.log_change(request, task, "Resumed")
            audit.record(request.user, "resume", task, via="admin")
        elif what == "duplicate":
            copy = services.duplicate(task, by=request.user)
            self.log_addition(request, copy, f"Duplicated from {task.name}")
            audit.record(request.user, "duplicate", copy, changes={"from": task.name, **audit.snapshot(copy)},
                         via="admin")  # fmt: skip
            return copy
        return task

    def warn_if_no_worker(self, request: HttpRequest) -> None:
        """Queued all the same; the operator is told it waits for a worker."""
        for warning in services.run_warnings():
            self.message_user(request, warning, messages.WARNING)

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[PeriodicTask], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        """The note is read from the POST as sent: a bad one is refused once, saying why
        (the action form would only answer "No action selected")."""
        try:
            if request.POST.get("action") == "pause":
                pause_note(request)
        except services.ServiceError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
        return super().response_action(request, queryset, *args, **kwargs)

    def apply_all(self, request: HttpRequest, queryset: QuerySet[PeriodicTask], what: str, done: str) -> None:
        count = 0
        for task in queryset:
            try:
                self.apply(request, task, what)
                count += 1
            except services.BrokerUnavailable as exc:  # one bounded wait, not one per selected row
                self.message_user(request, f"{task.name}: {exc} The rest were not sent.", messages.ERROR)
                break
            except services.ServiceError as exc:
                self.message_user(request, f"{task.name}: {exc}", messages.ERROR)
        if count:
            self.message_user(request, done.format(count=count), messages.SUCCESS)
            if what == "run":
                self.warn_if_no_worker(request)

    @admin.action(description="Run selected schedules now", permissions=["operate"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.apply_all(request, queryset, "run", "Queued {count} run(s); they appear under Runs.")

    @admin.action(description="Pause selected schedules (with the note)", permissions=["operate"])
    def pause(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.apply_all(request, queryset, "pause", "Paused {count} schedule(s).")

    @admin.action(description="Resume selected schedules", permissions=["operate"])
    def resume(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.apply_all(request, queryset, "resume", "Resumed {count} schedule(s).")

    @admin.action(description="Duplicate selected schedules (disabled copies)", permissions=["add"])
    def duplicate(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.apply_all(request, queryset, "duplicate", "Made {count} disabled copy(ies) to edit.")

    # --- buttons on the schedule's page and the preview ---------------------------------
    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        return [
            path("preview/", view(self.preview_view), name="scheduler_app_schedule_preview"),
            path("<int:pk>/do/<str:what>/", view(require_POST(self.button_view)), name="scheduler_app_schedule_do"),
            path("<int:pk>/versions/<int:number>/", view(self.version_view), name="scheduler_app_schedule_version"),
            path(
                "<int:pk>/versions/<int:number>/restore/",
                view(require_POST(self.restore_view)),
                name="scheduler_app_schedule_restore",
            ),  # fmt: skip
            *super().get_urls(),
        ]

    def preview_view(self, request: HttpRequest) -> JsonResponse:
        """The next runs of the form's schedule as it stands (nothing is saved)."""
        if not (self.has_add_permission(request) or self.has_change_permission(request)):
            raise PermissionDenied
        # get_form subclasses self.form, an AdminScheduleForm, for the page's own widgets (split date and time)
        form = cast(AdminScheduleForm, self.get_form(request)(request.GET))
        form.check_queue = False  # asked on every keystroke: the workers are asked when it is saved
        form.is_valid()
        errors = {field: list(errors) for field, errors in form.errors.items() if field in SCHEDULE_FIELDS}
        if errors or form.schedule_row is None:
            return JsonResponse({"ok": False, "errors": errors})
        editing = self.edited(request)
        given, problems = posted_rules(request)
        if given is None:  # no policy on the page: the schedule's saved rules
            given = shared.rules_of(getattr(editing, "policy", None) if editing is not None else None)
        name = str(form.cleaned_data.get("name") or "")
        problems |= {field: [text] for field, text in shared.policy_problems(form.schedule_row, name, given).items()}
        if problems:
            return JsonResponse({"ok": False, "errors": problems})
        try:
            preview = form.preview(editing=editing, given=given)
        except (slots.InvalidSchedule, OverflowError, ValueError) as exc:
            return JsonResponse({"ok": False, "errors": {"__all__": [str(exc)]}})
        runs = [shown_row(row) for row in preview["runs"]]
        return JsonResponse({"ok": True, "zone": preview["zone"], "hashed": preview["hashed"], "runs": runs})

    def edited(self, request: HttpRequest) -> PeriodicTask | None:
        """The schedule whose page asks for the preview (`?object=<pk>`), if the user may see it."""
        pk = request.GET.get("object", "")
        if not (pk.isascii() and pk.isdecimal()):
            return None
        task = PeriodicTask.objects.filter(pk=int(pk)).first()
        return task if task is not None and self.has_view_or_change_permission(request, task) else None

    def button_view(self, request: HttpRequest, pk: int, what: str) -> HttpResponse:
        task = get_object_or_404(PeriodicTask, pk=pk)
        may = self.has_add_permission(request) if what == "duplicate" else self.has_operate_permission(request, task)
        if what not in BUTTONS or not may:
            raise PermissionDenied
        try:
            shown = self.apply(request, task, what)
            self.message_user(request, BUTTONS[what], messages.SUCCESS)
            if what == "run":
                self.warn_if_no_worker(request)
        except services.ServiceError as exc:
            shown = task
            self.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(reverse("admin:django_celery_beat_periodictask_change", args=[shown.pk]))


def changed_fields(version: ScheduleVersion) -> str:
    fields = sorted(version.changes)
    if not fields:
        return "–" if version.number > 1 else "first version kept"
    return ", ".join(fields[:6]) + (f" and {len(fields) - 6} more" if len(fields) > 6 else "")


OPERATE = "scheduler_app.operate_schedule"
READ_ONLY_SCHEDULE = ["schedule", "zone", "start_time", "one_off", "calendar_rules"]
SCHEDULE_FIELDS = {
    "kind",
    "cron_expression",
    "minute",
    "hour",
    "day_of_month",
    "month_of_year",
    "day_of_week",
    "cron_timezone",
    "every",
    "period",
    "clocked_time",
    "solar_event",
    "latitude",
    "longitude",
    "start_time",
    "expires",
}
BUTTONS = {
    "run": "Queued a run; it appears below under Recent runs and under Runs.",
    "pause": "Paused: beat sends nothing until it is resumed.",
    "resume": "Resumed: it runs from its next slot.",
    "duplicate": "This is a disabled copy; edit it, then enable it.",
}


POLICY_PREFIX = "policy-0-"  # the policy inline's fields, as the page posts them


def posted_rules(request: HttpRequest) -> tuple[shared.Rules | None, dict[str, list[str]]]:
    """The jitter, calendars and rule as the page's policy inline has them now (None: the page
    has no inline; the schedule's saved rules apply), and what is wrong with them."""
    query = request.GET
    if f"{POLICY_PREFIX}calendar_rule" not in query and f"{POLICY_PREFIX}jitter" not in query:
        return None, {}
    raw = query.get(f"{POLICY_PREFIX}jitter", "").strip()
    jitter = int(raw) if raw.isascii() and raw.isdecimal() and len(raw) < 10 else None  # noqa: PLR2004
    problems = {} if jitter is not None or not raw else {"jitter": ["Give whole seconds, e.g. 60, or nothing."]}
    pks = [int(pk) for pk in query.getlist(f"{POLICY_PREFIX}calendars") if pk.isascii() and pk.isdecimal()
           and len(pk) < 10]  # fmt: skip  # noqa: PLR2004
    found = tuple(BusinessCalendar.objects.filter(pk__in=pks).prefetch_related("exclusions"))
    rule = query.get(f"{POLICY_PREFIX}calendar_rule", "")
    return shared.Rules(jitter, found, rule if rule in ("skip", "move") else ""), problems


def shown_row(row: dict[str, Any]) -> dict[str, Any]:
    """A preview row for the page's script: the send moment, the slot where it differs, the note."""
    slot = row["slot_local"]
    return {"local": row["local"].isoformat(), "utc": row["utc"].isoformat(), "dst_change": row["dst_change"],
            "shown_local": f"{row['local']:%Y-%m-%d %H:%M:%S %Z}", "shown_utc": f"{row['utc']:%Y-%m-%d %H:%M:%S} UTC",
            "skipped": row["skipped"], "note": row["note"],
            "shown_slot": f"{slot:%Y-%m-%d %H:%M:%S %Z}" if slot else ""}  # fmt: skip


def in_words(task: PeriodicTask) -> str:
    """`<name> (<schedule in words>)`, as the list says it."""
    return f"{task.name} ({schedules.shown_description(task)})"


def pause_note(request: HttpRequest) -> str:
    note = request.POST.get("note", "")
    try:
        return limits.check_text("note", note, limits.MAX_NOTE)
    except limits.LimitExceeded as exc:
        raise services.ServiceError(f"{exc} Nothing was paused.") from None


def deliveries(incident: Any) -> str:
    """Each channel's outcome: sent, retrying, failed (with the error), skipped."""
    return format_html_join(
        ", ",
        "{}: {}{}",
        ((channel, state.get("status", "?"), f" ({state['error']})" if state.get("error") else "")
         for channel, state in sorted((incident.deliveries or {}).items())),
    ) or "no channel configured"  # fmt: skip


# --- Backfill (issue 17): the "Backfill…" action leads to its form (admin/backfills.py) -------
from scheduler_app.admin import backfills as _backfills  # noqa: E402  (registers the Backfill admin)

ScheduleAdmin.actions = [*ScheduleAdmin.actions, _backfills.backfill_action]
