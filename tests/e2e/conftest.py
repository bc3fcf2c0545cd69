"""Real processes: gunicorn gateway and broker (production settings), a Celery worker and
beat on Redis, and the npm oidc-provider, against a fresh PostgreSQL database."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "devtools"))

from stack import Stack, reset_postgres_database  # noqa: E402

DEVICE_CODE_TTL = 25


@pytest.fixture(scope="session")
def real_stack(tmp_path_factory):
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos")
    database_url = base.rsplit("/", 1)[0] + "/" + base.rsplit("/", 1)[1] + "_e2e"
    reset_postgres_database(database_url)
    redis_url = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/2")
    stack = Stack(
        workdir=tmp_path_factory.mktemp("stack"),
        database_url=database_url,
        redis_url=redis_url,
        # Device codes live DEVICE_CODE_TTL seconds: short enough that test_device_flow
        # watches one expire, long enough for a person to confirm one on a loaded machine.
        oidc_env={"DEVICE_CODE_TTL": str(DEVICE_CODE_TTL)},
    )
    stack.start()
    yield stack
    stack.stop()
