"""Queue Celery work by task name. `broker_app.tasks` imports the services it runs, so the
services look their tasks up here instead of importing `tasks` (no import cycle).

The lookup goes through Dromos's own Celery app, never `celery.current_app`: that one is
per thread, and in a web server's request threads it is Celery's fallback app (AMQP on
localhost), where a published task would silently never reach the workers."""

from __future__ import annotations

from dromos.celery import app


def task(name: str):
    """The registered task `broker_app.tasks.<name>` (registering it on first use)."""
    return app.tasks[f"broker_app.tasks.{name}"]
