"""The maintenance tasks that ship with Beatkeeper: plain functions + thin Celery tasks."""
