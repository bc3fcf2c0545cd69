"""Celery app. Runs with the broker settings: workers and beat need the token tables. The
schedule is the broker's (CELERY_BEAT_SCHEDULE in dromos/settings/broker.py)."""

from celery import Celery
from celery.signals import worker_init, worker_process_init

from dromos.env import env_default

env_default("DJANGO_SETTINGS_MODULE", "dromos.settings.broker")

app = Celery("dromos")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

from dromos import worker_metrics  # noqa: E402,F401  (connects the worker's /metrics server)


@worker_init.connect
@worker_process_init.connect
def start_tracing(**kwargs) -> None:
    """OpenTelemetry in the worker (dromos/tracing.py), when on: set up in the main process
    (the SDK's span processor restarts its thread in each forked pool process)."""
    from dromos import tracing

    tracing.setup("worker")
