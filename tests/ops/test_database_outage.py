"""PostgreSQL goes away under a running gateway and broker (real gunicorn processes), then
comes back: every API answers 503 JSON with Retry-After while it is gone (the SDKs retry on
503), nothing leaks the driver's message, and both processes serve again once it is back,
without a restart.

The processes reach PostgreSQL through a TCP relay (tests/support/relay.py), so the outage is
real (connections cut mid-stream, new ones refused) without stopping the PostgreSQL that other
tests share."""

from __future__ import annotations

import os
import secrets
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from oidc_server import free_port  # noqa: I001  (devtools/, on sys.path via conftest)
from relay import Relay
from stack import Stack, reset_postgres_database  # noqa: I001  (devtools/, on sys.path via conftest)

from tests.ops.conftest import sibling_database


@pytest.fixture(scope="module")
def relayed_stack(tmp_path_factory):
    database_url = sibling_database("outage")
    reset_postgres_database(database_url)
    parts = urlsplit(database_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    relayed_url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{relay.port}"))
    redis_url = os.environ.get("OUTAGE_REDIS_URL", "redis://127.0.0.1:6379/5")
    stack = Stack(
        workdir=tmp_path_factory.mktemp("outage"),
        database_url=relayed_url,
        redis_url=redis_url,
        celery=False,
        beat=False,
        gateway_workers=1,
        broker_workers=1,
        oidc_port=free_port(),
        # Short enough for the test: a key used before the outage stays cached meanwhile.
        extra_env={"API_KEY_CACHE_SECONDS": "60", "DB_CONNECT_TIMEOUT": "2"},
    )
    stack.start()
    yield stack, relay
    stack.stop()
    relay.close()


def _gateway(stack: Stack, path: str, key: str) -> requests.Response:
    return requests.get(stack.gateway_url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _broker(stack: Stack, path: str) -> requests.Response:
    return requests.get(
        stack.broker_url + path,
        timeout=30,
        headers={"X-API-Key": stack.env["BROKER_API_KEY"], "X-Dromos-Workspace": "demo"},
    )


def _assert_unavailable(response: requests.Response, *, code: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert int(response.headers["Retry-After"]) >= 1
    # The driver's message names the host, port, user and database: none of it goes out.
    for secret in ("127.0.0.1", "postgres", "psycopg", "connection", "Traceback"):
        assert secret not in body["message"]


def test_database_outage_is_503_and_recovers_without_restart(relayed_stack):
    stack, relay = relayed_stack
    cached_key = stack.api_key
    fresh_key = (
        stack.manage("gateway", "apikey", "create", "--workspace", "demo", "--name", f"fresh-{secrets.token_hex(3)}")
        .stdout.strip()
        .splitlines()[-1]
    )
    unknown = "/v1/token/c_" + "x" * 32
    assert _gateway(stack, unknown, cached_key).status_code == 404  # the key is now cached in the gateway
    assert _broker(stack, "/internal/v1/connections/c_" + "x" * 32 + "/token").status_code == 404

    relay.cut()
    try:
        # The broker's own database is gone: 503 from the broker, passed on by the gateway.
        _assert_unavailable(
            _broker(stack, "/internal/v1/connections/c_" + "x" * 32 + "/token"), code="service_unavailable"
        )
        _assert_unavailable(_gateway(stack, unknown, cached_key), code="service_unavailable")
        _assert_unavailable(
            _gateway(stack, "/v1/check-connection/c_" + "y" * 32, cached_key), code="service_unavailable"
        )
        # A key the gateway has not seen yet must be looked up: the gateway's database is gone too.
        _assert_unavailable(_gateway(stack, unknown, fresh_key), code="service_unavailable")
        response = requests.post(
            stack.gateway_url + "/v1/request-connection",
            timeout=30,
            headers={"Authorization": f"Bearer {cached_key}"},
            json={
                "user_id": "u1",
                "provider_name": "local",
                "scopes": ["openid"],
                "return_url": "http://127.0.0.1:9/done",
            },
        )
        _assert_unavailable(response, code="service_unavailable")
        # Readiness says so too; liveness does not (a restart would not help).
        assert requests.get(stack.gateway_url + "/readyz", headers=stack.ops_headers(), timeout=30).status_code == 503
        assert requests.get(stack.gateway_url + "/healthz", timeout=30).status_code == 200
    finally:
        relay.restore()

    deadline = time.monotonic() + 30
    while True:  # the processes reconnect on their own: no restart
        statuses = (
            _gateway(stack, unknown, fresh_key).status_code,
            _broker(stack, "/internal/v1/connections/c_" + "x" * 32 + "/token").status_code,
        )
        if statuses == (404, 404):
            break
        assert time.monotonic() < deadline, f"still {statuses} 30 s after the database came back"
        time.sleep(0.5)
    # Nothing half-written: the connection requested during the outage does not exist.
    listed = _gateway(stack, "/v1/connections?user_id=u1", cached_key)
    assert listed.status_code == 200 and listed.json()["results"] == []

    logs = stack.log("gateway") + stack.log("broker")
    assert "database unavailable (OperationalError)" in logs
    assert "Traceback" not in logs
