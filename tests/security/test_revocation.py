"""`DELETE /v1/connections/{id}`: revoke at the provider (RFC 7009), wipe the stored tokens
whatever the provider answers, mark the connection revoked; a revocation the provider could
not take now is retried later by the `retry_revocations` Celery task (beat, every 10 min).
While it is pending, the one token the provider needs to revoke the grant is kept,
encrypted, and never served."""

from __future__ import annotations

import base64

import pytest
from fake_provider import CLIENT_ID, CLIENT_SECRET

from broker_app import crypto
from broker_app.models import AuditEvent, Connection
from broker_app.tasks import retry_revocations
from tests.conftest import connect

pytestmark = pytest.mark.django_db(transaction=True)
WIPED = ("access_token_enc", "refresh_token_enc", "id_token_enc", "pkce_verifier_enc")


def stored(cid: str, name: str) -> str | None:
    row = Connection.objects.get(pk=cid)
    return crypto.decrypt(getattr(row, f"{name}_enc"), aad=row.aad(name))


@pytest.fixture
def active(stack, fake_provider, fake_provider_row):
    key = stack.key()
    cid = connect(stack, fake_provider, key)
    return key, cid, stored(cid, "refresh_token"), stored(cid, "access_token")


def assert_never_served(stack, key, cid, fake_provider) -> None:
    refresh_calls = fake_provider.refresh_calls
    for method, path in (
        ("GET", f"/v1/token/{cid}"),
        ("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=86400"),
        ("POST", f"/v1/refresh/{cid}"),
    ):
        response = stack.call(method, path, key)
        assert response.status_code == 409, (path, response.text)
        assert response.json()["status"] == "revoked" and "access_token" not in response.json()
    assert stack.call("GET", f"/v1/check-connection/{cid}", key).json()["status"] == "revoked"
    assert fake_provider.refresh_calls == refresh_calls  # the kept token never reached the token endpoint


def test_delete_revokes_at_the_provider_per_rfc7009(stack, fake_provider, active):
    key, cid, refresh_token, _ = active
    response = stack.call("DELETE", f"/v1/connections/{cid}", key)
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    assert len(fake_provider.revocations) == 1
    sent = fake_provider.revocations[0]
    # RFC 7009 §2.1: the token, its type hint; client authentication as at the token endpoint.
    assert sent == {"token": refresh_token, "token_type_hint": "refresh_token"}
    assert (
        fake_provider.last_revocation_auth
        == "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    )
    assert not fake_provider.is_live(refresh_token)  # the grant is gone at the provider
    row = Connection.objects.get(pk=cid)
    assert row.status == "revoked" and not row.revoke_pending
    assert all(getattr(row, name) == "" for name in WIPED)
    assert_never_served(stack, key, cid, fake_provider)
    event = AuditEvent.objects.get(connection_id=cid, action="connection.revoked")
    assert event.detail == {"provider_revoked": True}


def test_token_the_provider_already_forgot_is_a_successful_revocation(stack, fake_provider, active):
    """RFC 7009 §2.2: an invalid token is answered 200, and that is success, not a retry."""
    key, cid, refresh_token, _ = active
    fake_provider.grants.clear()
    assert stack.call("DELETE", f"/v1/connections/{cid}", key).json()["status"] == "revoked"
    assert fake_provider.revocations[0]["token"] == refresh_token
    row = Connection.objects.get(pk=cid)
    assert not row.revoke_pending and all(getattr(row, name) == "" for name in WIPED)


@pytest.mark.parametrize("status", [503, 500, 429])
def test_failed_revocation_still_wipes_and_is_retried_later(stack, fake_provider, active, status):
    key, cid, refresh_token, access_token = active
    fake_provider.revocation_status = status
    response = stack.call("DELETE", f"/v1/connections/{cid}", key)
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    row = Connection.objects.get(pk=cid)
    assert row.status == "revoked" and row.revoke_pending
    # Wiped: the access token, the id_token, the PKCE verifier. Kept (encrypted, bound to this
    # row): only the refresh token the provider needs to revoke the grant.
    assert row.access_token_enc == row.id_token_enc == row.pkce_verifier_enc == ""
    assert stored(cid, "refresh_token") == refresh_token
    assert AuditEvent.objects.get(connection_id=cid, action="connection.revoked").detail == {"provider_revoked": False}
    assert_never_served(stack, key, cid, fake_provider)
    assert fake_provider.is_live(refresh_token)

    # Still down at the next beat: nothing changes, nothing is lost.
    retry_revocations.apply()
    assert Connection.objects.get(pk=cid).revoke_pending and stored(cid, "refresh_token") == refresh_token

    # The provider is back: the Celery task revokes the grant and wipes the last token.
    fake_provider.revocation_status = 200
    result = retry_revocations.apply()
    assert result.successful() and result.result == 1
    assert [form["token"] for form in fake_provider.revocations][-1] == refresh_token
    assert not fake_provider.is_live(refresh_token)
    row = Connection.objects.get(pk=cid)
    assert not row.revoke_pending and all(getattr(row, name) == "" for name in WIPED)
    assert row.status == "revoked"
    # Done is done: later runs do not call the provider again.
    calls = len(fake_provider.revocations)
    retry_revocations.apply()
    assert len(fake_provider.revocations) == calls
    assert access_token not in str(Connection.objects.filter(pk=cid).values().get())


def test_unreachable_revocation_endpoint_still_wipes(stack, fake_provider, active, monkeypatch):
    key, cid, refresh_token, _ = active
    from broker_app.oauth import client

    real = client._session.request

    def refuse(method, url, *args, **kwargs):
        if url.endswith("/revoke"):
            raise client.requests.ConnectionError("connection refused")
        return real(method, url, *args, **kwargs)

    monkeypatch.setattr(client._session, "request", refuse)
    assert stack.call("DELETE", f"/v1/connections/{cid}", key).json()["status"] == "revoked"
    row = Connection.objects.get(pk=cid)
    assert row.revoke_pending and row.access_token_enc == row.id_token_enc == ""
    assert_never_served(stack, key, cid, fake_provider)


def test_provider_refusing_the_revocation_for_good_is_not_retried_forever(stack, fake_provider, active):
    """A 400 (say `invalid_client`) will not change by retrying: the tokens are wiped and
    the connection revoked here; the audit trail records that the provider did not confirm."""
    key, cid, _, _ = active
    fake_provider.revocation_status = 400
    assert stack.call("DELETE", f"/v1/connections/{cid}", key).json()["status"] == "revoked"
    row = Connection.objects.get(pk=cid)
    assert not row.revoke_pending and all(getattr(row, name) == "" for name in WIPED)


def test_revocation_retry_is_on_the_beat_schedule():
    from dromos.celery import app

    entries = {entry["task"]: entry for entry in app.conf.beat_schedule.values()}
    assert "broker_app.tasks.retry_revocations" in entries
    assert entries["broker_app.tasks.retry_revocations"]["options"]["expires"] > 0


def test_delete_is_idempotent_and_a_revoked_connection_stays_revoked(stack, fake_provider, active):
    key, cid, _, _ = active
    assert stack.call("DELETE", f"/v1/connections/{cid}", key).status_code == 200
    assert stack.call("DELETE", f"/v1/connections/{cid}", key).json()["status"] == "revoked"
    assert len(fake_provider.revocations) == 1
    assert AuditEvent.objects.filter(connection_id=cid, action="connection.revoked").count() == 1
