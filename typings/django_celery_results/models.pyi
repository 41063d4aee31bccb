from datetime import datetime
from typing import Any, ClassVar, Self

from django.db import models
from django_celery_results.managers import GroupResultManager, TaskResultManager

ALL_STATES: list[str]
TASK_STATE_CHOICES: list[tuple[str, str]]

class TaskResult(models.Model):
    task_id: models.CharField[str, str]
    periodic_task_name: models.CharField[str | None, str | None]
    task_name: models.CharField[str | None, str | None]
    task_args: models.TextField[str | None, str | None]
    task_kwargs: models.TextField[str | None, str | None]
    status: models.CharField[str, str]
    worker: models.CharField[str | None, str | None]
    content_type: models.CharField[str, str]
    content_encoding: models.CharField[str, str]
    result: models.TextField[str | None, str | None]
    date_created: models.DateTimeField[datetime, datetime]
    date_started: models.DateTimeField[datetime | None, datetime | None]
    date_done: models.DateTimeField[datetime, datetime]
    traceback: models.TextField[str | None, str | None]
    meta: models.TextField[str | None, str | None]
    objects: ClassVar[TaskResultManager[Self]]
    def as_dict(self) -> dict[str, Any]: ...

class GroupResult(models.Model):
    group_id: models.CharField[str, str]
    date_created: models.DateTimeField[datetime, datetime]
    date_done: models.DateTimeField[datetime, datetime]
    content_type: models.CharField[str, str]
    content_encoding: models.CharField[str, str]
    result: models.TextField[str | None, str | None]
    objects: ClassVar[GroupResultManager]
    def as_dict(self) -> dict[str, Any]: ...
