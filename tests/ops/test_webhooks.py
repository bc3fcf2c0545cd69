"""Connection-event webhooks on the real processes: the broker records a delivery, the
Celery worker POSTs it, signed, to the workspace's URL (a receiver run here), retrying
with backoff while the receiver fails; `manage.py webhook deliveries` shows the history.
The signature scheme itself is checked in process at the end."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from broker_app.webhooks import sign, verify_signature
from tests.ops.conftest import metric_value, random_id, wait_for


def add_webhook(stack, workspace: str, url: str, *events: str) -> str:
    result = stack.manage(
        "broker",
        "webhook",
        "add",
        "--workspace",
        workspace,
        "--url",
        url,
        *[arg for event in events for arg in ("--event", event)],
    )
    return result.stdout.strip().splitlines()[-1]


def assert_signed(received, secret: str) -> None:
    """The receiver's side: Dromos-Signature is t=<unix>,v1=<HMAC-SHA256(secret, "t.body")>."""
    header = received.headers["Dromos-Signature"]
    parts = dict(item.split("=", 1) for item in header.split(","))
    assert set(parts) == {"t", "v1"}
    assert abs(time.time() - int(parts["t"])) < 60
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    assert verify_signature(secret, header, received.body)
    assert not verify_signature(secret, header, received.body.replace(b'"connection', b'"Connection', 1))
    assert not verify_signature("whsec_other", header, received.body)
    assert received.headers["Content-Type"] == "application/json"


def test_every_connection_event_reaches_the_workspace_webhook_signed(ops_stack, webhook_receiver, flaky_provider):
    workspace = random_id("ws-hooks")
    path = f"/hooks/{workspace}"
    secret = add_webhook(ops_stack, workspace, webhook_receiver.url + path)
    other_path = f"/hooks/{workspace}-narrow"
    narrow_secret = add_webhook(ops_stack, workspace, webhook_receiver.url + other_path, "connection.revoked")
    key = ops_stack.new_key(workspace)

    # activated
    cid = ops_stack.connect(key, user_id="hook-user", provider="flaky")
    activated = webhook_receiver.wait_for(path, "connection.activated", cid)
    assert_signed(activated, secret)
    event = activated.json()
    assert event["type"] == "connection.activated" and event["id"] == activated.headers["Dromos-Delivery"]
    assert event["data"]["status"] == "active" and event["data"]["workspace"] == workspace
    assert event["data"]["user_id"] == "hook-user" and event["data"]["provider_name"] == "flaky"
    token = ops_stack.gw("GET", f"/v1/token/{cid}", key).json()
    assert token["access_token"] not in activated.body.decode() and "access_token" not in event["data"]

    # failed (the user denies consent)
    denied = ops_stack.connect(key, user_id="hook-user", provider="flaky", deny=True)
    failed = webhook_receiver.wait_for(path, "connection.failed", denied)
    assert_signed(failed, secret)
    assert failed.json()["data"]["status"] == "failed" and failed.json()["data"]["error"] == "access_denied"

    # refreshed after failure: the provider's token endpoint is down for one refresh
    flaky_provider.failing = True
    try:
        outage = ops_stack.gw("POST", f"/v1/refresh/{cid}", key)
    finally:
        flaky_provider.failing = False
    assert outage.status_code == 503, outage.text
    assert ops_stack.gw("POST", f"/v1/refresh/{cid}", key).status_code == 200
    recovered = webhook_receiver.wait_for(path, "connection.refreshed_after_failure", cid)
    assert_signed(recovered, secret)
    assert recovered.json()["data"]["last_refreshed_at"]

    # revoked: both endpoints want it; each delivery is signed with its own endpoint's secret
    assert ops_stack.gw("DELETE", f"/v1/connections/{cid}", key).status_code == 200
    revoked = webhook_receiver.wait_for(path, "connection.revoked", cid)
    assert_signed(revoked, secret)
    assert revoked.json()["data"]["status"] == "revoked"
    narrow = webhook_receiver.wait_for(other_path, "connection.revoked", cid)
    assert_signed(narrow, narrow_secret)
    assert {r.headers["Dromos-Event"] for r in webhook_receiver.at(other_path)} == {"connection.revoked"}

    # Exactly one delivery per event, and nothing from another workspace's connections.
    other_key = ops_stack.new_key(random_id("ws-elsewhere"))
    elsewhere = ops_stack.connect(other_key, user_id="hook-user")
    ops_stack.gw("DELETE", f"/v1/connections/{elsewhere}", other_key)
    time.sleep(1)
    events = sorted((r.headers["Dromos-Event"], r.json()["data"]["connection_id"]) for r in webhook_receiver.at(path))
    assert events == sorted(
        [
            ("connection.activated", cid),
            ("connection.failed", denied),
            ("connection.refreshed_after_failure", cid),
            ("connection.revoked", cid),
        ]
    )

    wait_for(lambda: ops_stack.deliveries_settled(workspace), "every delivery's outcome stored")
    history = ops_stack.manage(
        "broker", "webhook", "deliveries", "--workspace", workspace, "--url", webhook_receiver.url + path
    ).stdout
    assert len(history.splitlines()) == 4 and history.count("\tdelivered\tattempts=1\tlast_status=200\t") == 4
    assert secret not in history and token["access_token"] not in history


def test_failing_endpoint_is_retried_with_backoff_then_given_up(ops_stack, webhook_receiver):
    """WEBHOOK_RETRY_BASE_SECONDS=1, WEBHOOK_MAX_ATTEMPTS=3 in this stack: waits of about 1 s,
    then 2 s (each with up to 20% jitter below), then the delivery is marked failed."""
    workspace = random_id("ws-retry")
    ok_path, down_path = f"/hooks/{workspace}/recovers", f"/hooks/{workspace}/down"
    secret = add_webhook(ops_stack, workspace, webhook_receiver.url + ok_path)
    add_webhook(ops_stack, workspace, webhook_receiver.url + down_path)
    webhook_receiver.scripts[ok_path] = [500, 502]
    webhook_receiver.scripts[down_path] = [500, 500, 500, 500]
    worker_metrics = f"http://127.0.0.1:{ops_stack.worker_metrics_port}/metrics"
    import requests

    before = metric_value(
        requests.get(worker_metrics, timeout=10).text,
        "dromos_webhook_deliveries_total",
        event="connection.activated",
        outcome="retry",
    )
    cid = ops_stack.connect(ops_stack.new_key(workspace))

    attempts = wait_for(
        lambda: len(webhook_receiver.at(ok_path)) >= 3 and webhook_receiver.at(ok_path),
        "three attempts at the recovering endpoint",
        30,
    )
    assert len({a.headers["Dromos-Delivery"] for a in attempts}) == 1  # one delivery, attempted three times
    for attempt in attempts:
        assert_signed(attempt, secret)  # re-signed with a fresh timestamp each time
        assert attempt.json()["data"]["connection_id"] == cid
    first_wait, second_wait = attempts[1].at - attempts[0].at, attempts[2].at - attempts[1].at
    assert 0.7 <= first_wait < 2.5, first_wait
    assert 1.5 <= second_wait < 4.5, second_wait
    assert second_wait > first_wait

    down = wait_for(
        lambda: len(webhook_receiver.at(down_path)) >= 3 and webhook_receiver.at(down_path),
        "three attempts at the failing endpoint",
        30,
    )
    time.sleep(3)  # past when a fourth attempt would come
    assert len(webhook_receiver.at(down_path)) == 3 == len(down)

    def history(path):
        return ops_stack.manage(
            "broker", "webhook", "deliveries", "--workspace", workspace, "--url", webhook_receiver.url + path
        ).stdout

    assert "\tdelivered\tattempts=3\tlast_status=200\t" in wait_for(
        lambda: "\tdelivered\t" in history(ok_path) and history(ok_path), "delivered history"
    )
    failed = wait_for(lambda: "\tfailed\t" in history(down_path) and history(down_path), "failed history")
    assert "\tfailed\tattempts=3\tlast_status=500\t" in failed and "HTTP 500" in failed
    listing = ops_stack.manage("broker", "webhook", "list", "--workspace", workspace).stdout
    assert "delivered=1\tpending=0\tfailed=0" in listing and "delivered=0\tpending=0\tfailed=1" in listing

    # The worker counts attempts by outcome on its own /metrics.
    text = requests.get(worker_metrics, timeout=10).text
    assert (
        metric_value(text, "dromos_webhook_deliveries_total", event="connection.activated", outcome="retry")
        >= before + 4
    )
    assert metric_value(text, "dromos_webhook_deliveries_total", event="connection.activated", outcome="failed") >= 1
    assert metric_value(text, "dromos_webhook_deliveries_total", event="connection.activated", outcome="delivered") >= 1


# -- the signature scheme (in process) ---------------------------------------------------------------

BODY = json.dumps({"type": "connection.activated", "data": {"connection_id": "c_x"}}).encode()


def test_signature_is_hmac_sha256_over_timestamp_and_body():
    header = sign("whsec_s", BODY, timestamp=1_700_000_000)
    mac = hmac.new(b"whsec_s", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"
    assert verify_signature("whsec_s", header, BODY, now=1_700_000_100)


@pytest.mark.parametrize("case", ["stale", "future", "tampered", "wrong_secret", "no_timestamp", "garbage"])
def test_signature_verification_rejects(case):
    now = 1_700_000_000
    header = sign("whsec_s", BODY, timestamp=now)
    body, secret, at = BODY, "whsec_s", now
    if case == "stale":
        at = now + 301
    elif case == "future":
        at = now - 301
    elif case == "tampered":
        body = BODY.replace(b"c_x", b"c_y")
    elif case == "wrong_secret":
        secret = "whsec_t"
    elif case == "no_timestamp":
        header = header.split(",", 1)[1]
    elif case == "garbage":
        header = "nonsense"
    assert not verify_signature(secret, header, body, now=at)


def test_signature_verification_accepts_any_of_several_v1_values():
    """During a secret change a sender may include several signatures."""
    good = sign("whsec_s", BODY, timestamp=1_700_000_000)
    header = "t=1700000000,v1=" + "0" * 64 + "," + good.split(",", 1)[1]
    assert verify_signature("whsec_s", header, BODY, now=1_700_000_000)


def test_backoff_doubles_per_attempt_with_jitter_below_and_a_cap(settings):
    from broker_app.webhooks import _backoff

    settings.WEBHOOK_RETRY_BASE_SECONDS, settings.WEBHOOK_RETRY_MAX_SECONDS = 30, 3600
    for attempts, base in ((1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (30, 3600)):
        waits = [_backoff(attempts) for _ in range(50)]
        assert all(0.8 * base <= wait <= base for wait in waits), (attempts, min(waits), max(waits))
        assert len(set(waits)) > 1  # jittered
    settings.WEBHOOK_RETRY_BASE_SECONDS = 1
    assert [_backoff(1) for _ in range(10)] == [1.0] * 10  # never below one second
    assert all(1.6 <= _backoff(2) <= 2 for _ in range(20))
