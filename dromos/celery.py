"""Celery app. Runs with the broker settings: workers and beat need the token tables. The
schedule is the broker's (CELERY_BEAT_SCHEDULE in dromos/settings/broker.py)."""

from celery import Celery

from dromos.env import env_default

env_default("DJANGO_SETTINGS_MODULE", "dromos.settings.broker")

app = Celery("dromos")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

from dromos import worker_metrics  # noqa: E402,F401  (connects the worker's /metrics server)
