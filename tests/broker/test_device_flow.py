"""RFC 8628 device flow against the fake provider: the API answer, every polling outcome
(pending, slow_down, outage, denial, expiry), the id_token check, device code reuse and
resuming after a restart (the schedule lives in the row)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from broker_app.models import AuditEvent, Connection
from broker_app.services.device import device_poll_one, device_poll_sweep

pytestmark = pytest.mark.django_db(transaction=True)


def _start(stack, key, **extra) -> dict:
    body = {"user_id": "user-1", "provider_name": "fake", "scopes": ["openid", "email"], "flow": "device", **extra}
    response = stack.call("POST", "/v1/request-connection", key, json=body)
    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()


def _make_due(cid: str) -> None:
    Connection.objects.filter(pk=cid).update(device_next_poll_at=timezone.now() - timedelta(seconds=1))


def _row(cid: str) -> Connection:
    return Connection.objects.get(pk=cid)


def test_device_start_answers_the_user_code_and_activates_after_approval(stack, fake_provider, fake_provider_row):
    key = stack.key()
    body = _start(stack, key)
    assert set(body) == {
        "connection_id",
        "provider_id",
        "scopes",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_at",
        "interval",
    }
    assert body["verification_uri"] == f"{fake_provider.url}/device" and body["interval"] == 5
    assert body["verification_uri_complete"].endswith(body["user_code"])
    assert fake_provider.last_token_auth and fake_provider.last_token_auth.startswith("Basic ")  # client auth
    cid = body["connection_id"]
    row = _row(cid)
    assert row.status == "pending" and row.flow == "device" and row.device_code_enc
    # The first poll waits one interval.
    assert 4 <= (row.device_next_poll_at - timezone.now()).total_seconds() <= 5
    assert stack.call("GET", f"/v1/check-connection/{cid}", key).json()["status"] == "pending"
    assert stack.call("GET", f"/v1/token/{cid}", key).status_code == 409

    # Not yet due: the sweep does not take it.
    assert device_poll_sweep(enqueue=False) == []
    _make_due(cid)
    assert device_poll_sweep(enqueue=False) == [cid]
    assert device_poll_sweep(enqueue=False) == []  # claimed
    assert device_poll_one(connection_id=cid) == "pending"
    assert 4 <= (_row(cid).device_next_poll_at - timezone.now()).total_seconds() <= 5

    fake_provider.device_set(body["user_code"], "approved", sub="dev-user")
    assert device_poll_one(connection_id=cid) == "active"
    row = _row(cid)
    assert row.status == "active" and row.account["sub"] == "dev-user"
    assert row.device_code_enc == "" and row.device_next_poll_at is None
    assert fake_provider.last_token_form["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"
    token = stack.call("GET", f"/v1/token/{cid}", key)
    assert token.status_code == 200 and token.json()["access_token"].startswith("at-")
    assert AuditEvent.objects.filter(connection_id=cid, action="connection.activated").exists()
    # A finished connection is never polled again.
    assert device_poll_one(connection_id=cid) == "skipped"


def test_slow_down_adds_five_seconds_each_time(stack, fake_provider, fake_provider_row):
    cid = _start(stack, stack.key())["connection_id"]
    fake_provider.device_slow_down_always = True
    for expected in (10, 15, 20):
        _make_due(cid)
        assert device_poll_one(connection_id=cid) == "slow_down"
        row = _row(cid)
        assert row.device_interval == expected
        wait = (row.device_next_poll_at - timezone.now()).total_seconds()
        assert expected - 1 <= wait <= expected
    assert len(fake_provider.device_polls()) == 3


def test_pending_for_the_whole_lifetime_fails_expired_token_without_a_late_request(
    stack, fake_provider, fake_provider_row
):
    cid = _start(stack, stack.key())["connection_id"]
    Connection.objects.filter(pk=cid).update(state_expires_at=timezone.now() + timedelta(seconds=3))
    row = _row(cid)
    _make_due(cid)
    assert device_poll_one(connection_id=cid) == "pending"
    # The next poll would fall after the expiry: it is due at the expiry instead.
    assert _row(cid).device_next_poll_at == row.state_expires_at
    Connection.objects.filter(pk=cid).update(state_expires_at=timezone.now() - timedelta(seconds=1))
    _make_due(cid)
    polls = len(fake_provider.device_polls())
    assert device_poll_one(connection_id=cid) == "expired"
    assert len(fake_provider.device_polls()) == polls  # no request after the expiry
    row = _row(cid)
    assert row.status == "failed" and row.error == "expired_token" and row.device_code_enc == ""
    checked = stack.call("GET", f"/v1/check-connection/{cid}", stack.key()).json()
    assert checked["status"] == "failed" and checked["error"] == "expired_token"


@pytest.mark.parametrize("state, error", [("denied", "access_denied"), ("expired", "expired_token")])
def test_denial_and_provider_expiry_fail_the_connection_with_the_reason(
    stack, fake_provider, fake_provider_row, state, error
):
    body = _start(stack, stack.key())
    fake_provider.device_set(body["user_code"], state)
    _make_due(body["connection_id"])
    assert device_poll_one(connection_id=body["connection_id"]) == "failed"
    row = _row(body["connection_id"])
    assert row.status == "failed" and row.error == error
    assert AuditEvent.objects.filter(connection_id=row.id, action="connection.failed").exists()


def test_provider_down_during_polling_keeps_the_connection_pending(stack, fake_provider, fake_provider_row):
    body = _start(stack, stack.key())
    fake_provider.device_down = True
    for _ in range(3):
        _make_due(body["connection_id"])
        assert device_poll_one(connection_id=body["connection_id"]) == "retry"
        assert _row(body["connection_id"]).status == "pending"
    fake_provider.device_down = False
    fake_provider.device_set(body["user_code"], "approved")
    _make_due(body["connection_id"])
    assert device_poll_one(connection_id=body["connection_id"]) == "active"


def test_an_id_token_that_fails_verification_fails_the_connection(stack, fake_provider, fake_provider_row):
    body = _start(stack, stack.key())
    fake_provider.device_set(body["user_code"], "approved")
    fake_provider.issuer_override = "https://evil.example"
    _make_due(body["connection_id"])
    assert device_poll_one(connection_id=body["connection_id"]) == "failed"
    assert _row(body["connection_id"]).error == "invalid_id_token"


def test_a_device_code_is_never_used_for_a_second_connection(stack, fake_provider, fake_provider_row):
    key = stack.key()
    fake_provider.device_code_override = "dc-the-same-code-twice-000000000"
    _start(stack, key)
    second = stack.call(
        "POST",
        "/v1/request-connection",
        key,
        json={"user_id": "user-2", "provider_name": "fake", "flow": "device"},
    )
    assert second.status_code == 502 and second.json()["error"] == "provider_error"
    assert "dc-the-same" not in second.text
    assert Connection.objects.count() == 1


def test_polling_resumes_after_a_restart(stack, fake_provider, fake_provider_row):
    """A claim whose task died with its worker lapses; the next sweep queues the row again."""
    body = _start(stack, stack.key())
    _make_due(body["connection_id"])
    assert device_poll_sweep(enqueue=False) == [body["connection_id"]]  # the task is then lost
    assert device_poll_sweep(enqueue=False) == []
    _make_due(body["connection_id"])  # the claim lapsed
    assert device_poll_sweep(enqueue=False) == [body["connection_id"]]
    fake_provider.device_set(body["user_code"], "approved")
    assert device_poll_one(connection_id=body["connection_id"]) == "active"


def test_device_flow_input_errors(stack, fake_provider, fake_provider_row, db):
    from broker_app.models import Provider

    key = stack.key()
    # The code flow still needs its return_url; the device flow does not take one.
    missing = stack.call("POST", "/v1/request-connection", key, json={"user_id": "u", "provider_name": "fake"})
    assert missing.status_code == 400 and "return_url" in missing.text
    bad_flow = stack.call(
        "POST", "/v1/request-connection", key, json={"user_id": "u", "provider_name": "fake", "flow": "implicit"}
    )
    assert bad_flow.status_code == 400 and "flow" in bad_flow.text
    Provider.objects.create(name="slack", template="slack", client_id="x")
    no_device = stack.call(
        "POST", "/v1/request-connection", key, json={"user_id": "u", "provider_name": "slack", "flow": "device"}
    )
    assert no_device.status_code == 400 and "device flow" in no_device.json()["message"]
    assert Connection.objects.count() == 0
