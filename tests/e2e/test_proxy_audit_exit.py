"""A gateway stopped with SIGTERM (a deploy, a scale-down) writes the proxy audit rows it still
held (gateway_app.proxy_audit writes them off the request path): under granian, the image's
server, whose workers leave through multiprocessing's exit, and under gunicorn."""

from __future__ import annotations

import os
import signal

import psycopg
import pytest
import requests
from oidc_consent import complete_consent
from stack import Stack, reset_postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.live]
RETURN_URL = "http://127.0.0.1:1/oauth/return"


def _count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM gateway_app_proxycall").fetchone()[0]


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_a_gateway_stopped_with_sigterm_writes_its_pending_audit_rows(tmp_path, server):
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    database_url = base.rsplit("/", 1)[0] + "/" + base.rsplit("/", 1)[1] + "_proxyexit" + worker
    reset_postgres_database(database_url)
    stack = Stack(
        workdir=tmp_path,
        database_url=database_url,
        redis_url=os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/2"),
        celery=False,
        gateway_workers=1,
        broker_workers=1,
        http_server=server,
    )
    stack.start()
    try:
        api = {"Authorization": f"Bearer {stack.api_key}"}
        started = requests.post(
            f"{stack.gateway_url}/v1/request-connection",
            headers=api,
            json={"user_id": "u", "provider_name": "local", "scopes": ["openid"], "return_url": RETURN_URL},
            timeout=30,
        ).json()
        complete_consent(started["authUrl"], login="u", stop_at_prefix=RETURN_URL)
        session = requests.Session()
        for _ in range(20):
            answer = session.get(f"{stack.gateway_url}/v1/proxy/{started['connection_id']}/me", headers=api, timeout=30)
            assert answer.status_code == 200, answer.text
        os.kill(stack.processes["gateway"].pid, signal.SIGTERM)
        stack.processes["gateway"].wait(60)
        assert _count(database_url) == 20
    finally:
        stack.stop()
