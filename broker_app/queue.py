"""Queue Celery work by task name. `broker_app.tasks` imports the services it runs, so the
services look their tasks up here instead of importing `tasks` (no import cycle)."""

from __future__ import annotations

from celery import current_app


def task(name: str):
    """The registered task `broker_app.tasks.<name>` (registering it on first use)."""
    return current_app.tasks[f"broker_app.tasks.{name}"]
