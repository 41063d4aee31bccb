# Our stubs of django-celery-results 2.6 (the parts the project uses). celery-types' stubs of
# TaskResult lack periodic_task_name, worker, date_created and date_started; mypy reads
# these instead (pyproject.toml: mypy_path). Keep them in step with the pinned version.
