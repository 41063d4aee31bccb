"""The admin's variants of the shared schedule form (scheduler_app/forms.py)."""

from __future__ import annotations

from django import forms
from django.contrib.admin.helpers import ActionForm
from django.contrib.admin.widgets import AdminSplitDateTime

from scheduler_app.forms import ScheduleForm, zone_choices

__all__ = ["AdminScheduleForm", "ScheduleActionForm", "zone_choices"]


class AdminScheduleForm(ScheduleForm):
    clocked_time = forms.SplitDateTimeField(
        required=False, label="Run at", widget=AdminSplitDateTime, help_text="In the server's zone."
    )


class ScheduleActionForm(ActionForm):
    note = forms.CharField(required=False, max_length=500, label="Note (pause)")
