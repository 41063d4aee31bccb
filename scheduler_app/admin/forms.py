"""The admin's variants of the shared schedule form (scheduler_app/forms.py)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.helpers import ActionForm
from django.contrib.admin.widgets import AdminSplitDateTime

from scheduler_app.forms import ScheduleForm, zone_choices

__all__ = ["AdminScheduleForm", "ScheduleActionForm", "zone_choices"]
CRON_PARTS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
NEW_CRONTAB_MINUTE = "0"  # with the other fields at "*": every hour on the hour


class AdminScheduleForm(ScheduleForm):
    clocked_time = forms.SplitDateTimeField(
        required=False, label="Run at", widget=AdminSplitDateTime, help_text="In the server's zone."
    )
    cron_expression = forms.CharField(
        required=False, max_length=600, label="Whole expression",
        widget=forms.TextInput(attrs={"id": "bk-cron-paste", "placeholder": "30 2 * * *", "autocomplete": "off"}),
        help_text="Paste five fields (minute hour day-of-month month day-of-week): they fill the fields below.",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.instance.pk:  # a new crontab: on the hour, not every minute
            self.fields["minute"].initial = NEW_CRONTAB_MINUTE

    def clean(self) -> dict[str, Any]:
        """A pasted expression fills the five fields (the page's script does it as it is
        typed; this, for a form sent without the script)."""
        pasted = (self.cleaned_data.get("cron_expression") or "").split()
        if pasted and self.cleaned_data.get("kind") == "crontab":
            if len(pasted) != len(CRON_PARTS):
                self.add_error("cron_expression", f"Give five fields, e.g. 30 2 * * *; this has {len(pasted)}.")
            else:
                self.cleaned_data.update(zip(CRON_PARTS, pasted, strict=True))
        return super().clean()


class ScheduleActionForm(ActionForm):
    note = forms.CharField(required=False, max_length=500, label="Note (pause)")
