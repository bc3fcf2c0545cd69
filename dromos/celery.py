"""Celery app. Runs with the broker settings: workers and beat need the token tables."""

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dromos.settings.broker")

app = Celery("dromos")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

from dromos import worker_metrics  # noqa: E402,F401  (connects the worker's /metrics server)

# Exactly one beat runs this schedule. Each entry expires before its next run so a
# backlog never piles up sweeps.
app.conf.beat_schedule = {
    "refresh-sweep": {
        "task": "broker_app.tasks.refresh_sweep",
        "schedule": crontab(minute="*"),
        "options": {"expires": 50},
    },
    "prune-pending": {
        "task": "broker_app.tasks.prune_pending",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 240},
    },
    "retry-revocations": {
        "task": "broker_app.tasks.retry_revocations",
        "schedule": crontab(minute="*/10"),
        "options": {"expires": 500},
    },
    "webhook-requeue-stale": {
        "task": "broker_app.tasks.webhook_requeue_stale",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 240},
    },
}
