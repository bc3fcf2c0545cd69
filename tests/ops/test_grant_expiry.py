"""Grant ends on the real processes (issue 21): the grant-expiry task, run by the real Celery
worker against the stack's database, sends connection.expiring once when a refresh token's
absolute end is within EXPIRY_WARNING_DAYS (check-connection warns too, /metrics counts it),
and connection.expired when the end has passed (the connection fails with grant_expired)."""

from __future__ import annotations

import time

import requests

from tests.ops.conftest import metric_value, random_id, wait_for
from tests.ops.test_webhooks import add_webhook, assert_signed


def _run_grant_expiry(stack) -> None:
    """Queue the beat's task, as beat would: the stack's worker runs it."""
    stack.manage("broker", "shell", "-c", "from broker_app.tasks import grant_expiry; grant_expiry.delay()")


def _set_end(stack, cid: str, sql_interval: str) -> None:
    with stack.db() as db:
        db.execute(
            "UPDATE broker_app_connection SET refresh_expires_at = now() + %s::interval WHERE id = %s",
            [sql_interval, cid],
        )


def _grant_gauge(stack, within_days: str) -> float:
    headers = {"X-API-Key": stack.env["BROKER_API_KEY"]}
    text = requests.get(stack.broker_url + "/metrics", headers=headers, timeout=10).text
    return metric_value(text, "dromos_connections_grant_ending", provider="local", within_days=within_days)


def test_expiring_then_expired_reach_the_webhook(ops_stack, webhook_receiver):
    workspace = random_id("ws-grant")
    path = f"/hooks/{workspace}"
    secret = add_webhook(ops_stack, workspace, webhook_receiver.url + path)
    key = ops_stack.new_key(workspace)
    cid = ops_stack.connect(key, user_id="grant-user")
    webhook_receiver.wait_for(path, "connection.activated", cid)
    within_7 = _grant_gauge(ops_stack, "7")

    # Far from its end: nothing said.
    _set_end(ops_stack, cid, "60 days")
    _run_grant_expiry(ops_stack)
    check = ops_stack.gw("GET", f"/v1/check-connection/{cid}", key).json()
    assert "refresh_token_expires_soon" not in check["warnings"]

    # Within EXPIRY_WARNING_DAYS (14): connection.expiring, once.
    _set_end(ops_stack, cid, "3 days")
    _run_grant_expiry(ops_stack)
    expiring = webhook_receiver.wait_for(path, "connection.expiring", cid)
    assert_signed(expiring, secret)
    data = expiring.json()["data"]
    assert data["status"] == "active" and data["refresh_token_expires_at"]
    assert "refresh_token_expires_soon" in data["warnings"]
    check = ops_stack.gw("GET", f"/v1/check-connection/{cid}", key).json()
    assert "refresh_token_expires_soon" in check["warnings"] and check["refresh_token_expires_at"]
    assert _grant_gauge(ops_stack, "7") == within_7 + 1
    _run_grant_expiry(ops_stack)
    time.sleep(2)
    assert [r.headers["Dromos-Event"] for r in webhook_receiver.at(path)].count("connection.expiring") == 1

    # Ended: connection.expired, the connection fails and its token is no longer served.
    _set_end(ops_stack, cid, "-1 minute")
    _run_grant_expiry(ops_stack)
    expired = webhook_receiver.wait_for(path, "connection.expired", cid)
    assert_signed(expired, secret)
    assert expired.json()["data"]["status"] == "failed" and expired.json()["data"]["error"] == "grant_expired"
    token = ops_stack.gw("GET", f"/v1/token/{cid}", key)
    assert token.status_code == 409 and token.json()["reconnect_required"] is True
    wait_for(lambda: ops_stack.deliveries_settled(workspace), "every delivery's outcome stored")
