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
    # Under xdist each worker that runs an e2e test starts its own stack: its own database
    # and Redis database, or one worker's reset would drop the other's.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") else 0
    database_url = base.rsplit("/", 1)[0] + "/" + base.rsplit("/", 1)[1] + "_e2e" + (f"_{index}" if index else "")
    reset_postgres_database(database_url)
    redis_url = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/2")
    if index:
        redis_base, redis_db = redis_url.rsplit("/", 1)
        redis_url = f"{redis_base}/{int(redis_db) + index}"
    stack = Stack(
        workdir=tmp_path_factory.mktemp("stack"),
        database_url=database_url,
        redis_url=redis_url,
        # Device codes live DEVICE_CODE_TTL seconds: short enough that test_device_flow
        # watches one expire, long enough for a person to confirm one on a loaded machine.
        oidc_env={"DEVICE_CODE_TTL": str(DEVICE_CODE_TTL)},
        # The proxy's 20-concurrent-401s test sends 20 slow calls with one key at once; the
        # gateway's bulkhead (tested in tests/refresh and tests/hardening) would answer 429.
        extra_env={"GATEWAY_SLOW_CALLS_PER_KEY": "0", "GATEWAY_SLOW_CALLS_PER_WORKSPACE": "0"},
    )
    stack.start()
    yield stack
    stack.stop()
