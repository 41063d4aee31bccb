"""The console's old addresses: django-celery-results' own admin (replaced by the runs list)
answered /admin/django_celery_results/taskresult/; bookmarks and links to it lead on to the
runs list and the run's page instead of a bare 404."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseRedirect, QueryDict
from django.urls import URLPattern, path, re_path, reverse

OLD_FILTERS = {"status": "state", "status__exact": "state", "task_name": "task", "task_name__exact": "task",
               "periodic_task_name": "schedule", "periodic_task_name__exact": "schedule", "q": "q"}  # fmt: skip


def runs_list(request: HttpRequest) -> HttpResponseRedirect:
    """The runs list, with the old list's filters that it has under their new names."""
    query = QueryDict(mutable=True)
    for old, new in OLD_FILTERS.items():
        if request.GET.get(old):
            query[new] = request.GET[old]
    url = reverse("admin:scheduler_app_run_changelist")
    return HttpResponseRedirect(f"{url}?{query.urlencode()}" if query else url)


def run_page(request: HttpRequest, pk: str, rest: str = "") -> HttpResponseRedirect:
    """The run's page (its row id is the same: Run is TaskResult's proxy), or its history."""
    name = "admin:scheduler_app_run_history" if rest == "history/" else "admin:scheduler_app_run_change"
    return HttpResponseRedirect(reverse(name, args=[pk]))


def urls() -> list[URLPattern]:
    return [
        path("", runs_list, name="beatkeeper-old-runs"),
        re_path(r"^(?P<pk>\d+)/(?P<rest>(?:change/|history/|delete/)?)$", run_page, name="beatkeeper-old-run"),
    ]
