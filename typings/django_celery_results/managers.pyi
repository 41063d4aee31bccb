from datetime import timedelta
from typing import TypeVar

from django.db import models
from django.db.models.query import QuerySet
from django_celery_results.models import GroupResult, TaskResult

_T = TypeVar("_T", bound=TaskResult)

class TaskResultManager(models.Manager[_T]):
    def get_task(self, task_id: str) -> _T: ...
    def get_all_expired(self, expires: timedelta) -> QuerySet[_T]: ...
    def delete_expired(self, expires: timedelta) -> None: ...

class GroupResultManager(models.Manager[GroupResult]): ...
