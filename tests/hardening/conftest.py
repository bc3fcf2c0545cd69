"""Real processes for issue 14's hostile-input and hardening findings: the gateway and the
broker under the image's server (granian) through docker/entrypoint.sh (tests/ops' EntrypointStack), the npm
oidc-provider as provider `local`, the fake provider as provider `fake`, a fresh PostgreSQL
database and this xdist worker's Redis database. No Celery worker: nothing here needs one."""

from __future__ import annotations

import pytest

from tests.ops.conftest import EntrypointStack, reset_postgres_database, sibling_database

ADMIN_LOGIN_FAILURE_LIMIT = 4


@pytest.fixture(scope="session")
def hard_stack(tmp_path_factory, _redis_database_per_worker, _fake_provider_server):
    from django.conf import settings

    database_url = sibling_database("hardening")
    reset_postgres_database(database_url)
    stack = EntrypointStack(
        workdir=tmp_path_factory.mktemp("hardening-stack"),
        database_url=database_url,
        redis_url=settings.REDIS_URL,
        celery=False,
        extra_env={"ADMIN_LOGIN_FAILURE_LIMIT": str(ADMIN_LOGIN_FAILURE_LIMIT), "API_KEY_AUTH_FAILURE_LIMIT": "8/min"},
    )
    stack.start()
    try:
        stack.manage(
            "broker",
            "provider",
            "upsert",
            "--name",
            "fake",
            "--template",
            "oidc",
            "--discovery-url",
            _fake_provider_server.discovery_url,
            "--client-id",
            "fake-client",
            "--client-secret",
            "fake-client-secret-value",
            "--default-scopes",
            "openid email",
        )
        yield stack
    finally:
        stack.stop()
