"""Issue 14, finding 7: single-flight refresh on the embedded default (`make run`: one SQLite
file, no PostgreSQL, no Redis). `select_for_update` is a no-op on SQLite; the refresh
transaction serializes because the SQLite connections open their transactions with
`BEGIN IMMEDIATE` (dromos/settings/base.py: transaction_mode, busy timeout), so a second
refresh waits for the first to commit and then sees the token version moved.

Real processes as `make run` starts them (devtools/stack.py --embedded, minus Celery): gunicorn
gateway and broker, 2 workers x 8 threads each, on one SQLite file, against the fake provider,
which rotates refresh tokens and revokes the whole grant when an old one comes back."""

from __future__ import annotations

import random
import sqlite3
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.ops.conftest import ROOT

sys.path.insert(0, str(ROOT / "devtools"))
from stack import Stack  # noqa: E402

pytestmark = pytest.mark.e2e

RETURN_URL = "http://127.0.0.1:1/oauth/return"


@pytest.fixture(scope="module")
def sqlite_stack(tmp_path_factory, _fake_provider_server):
    stack = Stack(
        workdir=tmp_path_factory.mktemp("sqlite-stack"),
        database_url=None,
        redis_url=None,
        celery=False,
        # Every caller may wait for the refresh in progress (the bulkheads have their own tests).
        extra_env={"GATEWAY_SLOW_CALLS_PER_KEY": "0", "GATEWAY_SLOW_CALLS_PER_WORKSPACE": "0"},
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


def _gw(stack, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    return requests.request(method, stack.gateway_url + path, headers=headers, timeout=60, **kwargs)


def _connect(stack, fake) -> str:
    started = _gw(
        stack,
        "POST",
        "/v1/request-connection",
        json={"user_id": "sqlite-user", "provider_name": "fake", "scopes": ["openid"], "return_url": RETURN_URL},
    )
    assert started.status_code == 201, started.text
    params = {k: v[0] for k, v in parse_qs(urlsplit(started.json()["authUrl"]).query).items()}
    code = fake.issue_code(code_challenge=params["code_challenge"], nonce=params.get("nonce"))
    callback = requests.get(
        f"{stack.broker_url}/auth/callback",
        params={"code": code, "state": params["state"], "iss": fake.issuer},
        allow_redirects=False,
        timeout=30,
    )
    assert "status=success" in callback.headers["Location"], callback.text[:300]
    return started.json()["connection_id"]


def _sql(stack, query: str, params=()) -> list[tuple]:
    with sqlite3.connect(stack.workdir / "dromos.sqlite3", timeout=30) as db:
        return db.execute(query, params).fetchall()


def _age(stack, cid: str, *, remaining: int = 30, lifetime: int = 3600) -> None:
    """The stored token is `lifetime` s old with `remaining` s left and was read since (a
    connection in use: the usage-aware sweep refreshes it ahead), as Django stores datetimes."""
    now = datetime.now(UTC).replace(tzinfo=None)
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    _sql(
        stack,
        "UPDATE broker_app_connection SET expires_at = ?, last_refreshed_at = ?, last_read_at = ?, "
        "next_refresh_attempt_at = NULL WHERE id = ?",
        (
            (now + timedelta(seconds=remaining)).strftime(fmt),
            (now + timedelta(seconds=remaining - lifetime)).strftime(fmt),
            (now + timedelta(seconds=remaining - lifetime + 1)).strftime(fmt),
            cid,
        ),
    )


def test_concurrent_refreshes_on_sqlite_make_one_provider_call(sqlite_stack, fake_provider):
    assert sqlite_stack.env.get("DATABASE_URL") is None and (sqlite_stack.workdir / "dromos.sqlite3").exists()
    cid = _connect(sqlite_stack, fake_provider)
    # Read before ageing: a plain read of a token with under a minute left refreshes it.
    before = _gw(sqlite_stack, "GET", f"/v1/token/{cid}").json()["access_token"]
    _age(sqlite_stack, cid)
    ((version_before,),) = _sql(sqlite_stack, "SELECT token_version FROM broker_app_connection WHERE id = ?", (cid,))
    fake_provider.refresh_delay = 1.0  # the refresh is in flight while the callers arrive

    kinds = ["refresh"] * 20 + ["auto"] * 20
    random.shuffle(kinds)
    start = threading.Barrier(len(kinds))

    def call(kind: str) -> requests.Response:
        start.wait()
        if kind == "refresh":
            return _gw(sqlite_stack, "POST", f"/v1/refresh/{cid}")
        return _gw(sqlite_stack, "GET", f"/v1/token/{cid}", params={"auto_refresh": "true"})

    with ThreadPoolExecutor(len(kinds)) as pool:
        responses = list(pool.map(call, kinds))
    bad = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not bad, bad
    assert fake_provider.refresh_calls == 1
    served = {r.json()["access_token"] for r in responses}
    current = _gw(sqlite_stack, "GET", f"/v1/token/{cid}").json()["access_token"]
    assert served == {current} and current != before
    ((status, version_after),) = _sql(
        sqlite_stack, "SELECT status, token_version FROM broker_app_connection WHERE id = ?", (cid,)
    )
    assert status == "active" and version_after == version_before + 1
    assert not any(grant.revoked for grant in fake_provider.grants.values())

    # The rotated refresh token was kept: the next forced refresh works (the provider would
    # revoke the grant if the old one came back).
    _sql(
        sqlite_stack, "UPDATE broker_app_connection SET last_refreshed_at = '2000-01-01 00:00:00' WHERE id = ?", (cid,)
    )
    again = _gw(sqlite_stack, "POST", f"/v1/refresh/{cid}")
    assert again.status_code == 200, again.text
    assert fake_provider.refresh_calls == 2 and again.json()["access_token"] != current
