"""Reconnect in place for providers whose account id comes from their userinfo endpoint
(`account_id_field = "userinfo.…"`: GitHub, Zoom, Atlassian …), over real HTTP: agent →
gateway → broker → a GitHub-like fake provider (the catalog's `github` template, its
endpoints pointed at tests/support/fake_provider.py, whose /userinfo answers GitHub's /user
shape: `{"id": <number>, "login", …}` for the access token presented).

The first consent records the account id the userinfo endpoint names; a reconnect asks the
endpoint again with the new access token and replaces the grant only when the ids match."""

from __future__ import annotations

import pytest
from fake_provider import CLIENT_ID, CLIENT_SECRET, api_hang, api_raw, api_status

from broker_app.models import AuditEvent, ConnectAttempt, Connection
from tests.conftest import auth_params, make_provider, start_connection

from .test_connect_sessions import RETURN_URL, back_query

pytestmark = pytest.mark.django_db(transaction=True)
UNCHANGED = ("status", "access_token_enc", "refresh_token_enc", "token_version", "account", "scopes", "expires_at")


@pytest.fixture
def github_like(db, fake_provider):
    return make_provider(
        name="gh",
        template="github",
        discovery_url="",
        authorize_url=f"{fake_provider.url}/authorize",
        token_url=f"{fake_provider.url}/token",
        userinfo_url=f"{fake_provider.url}/userinfo",
        revocation_url=f"{fake_provider.url}/revoke",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        default_scopes=["read:user"],
    )


def _consent(stack, fake_provider, auth_url: str, sub: str):
    params = auth_params(auth_url)
    code = fake_provider.issue_code(code_challenge=params["code_challenge"], nonce=None, sub=sub)
    return stack.callback(code=code, state=params["state"])


def _connect(stack, fake_provider, key: str, sub: str = "octocat") -> str:
    started = start_connection(stack, key, provider="gh", scopes=["read:user"])
    back = back_query(_consent(stack, fake_provider, started["authUrl"], sub))
    assert back["status"] == "success", back
    return started["connection_id"]


def _token(stack, key: str, cid: str) -> str:
    answer = stack.call("GET", f"/v1/token/{cid}", key)
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def _reconnect(stack, fake_provider, key: str, cid: str, sub: str) -> dict[str, str]:
    started = stack.call("POST", f"/v1/connections/{cid}/reconnect", key, json={"return_url": RETURN_URL})
    assert started.status_code == 201, started.text
    return back_query(_consent(stack, fake_provider, started.json()["authUrl"], sub))


def test_first_consent_records_the_userinfo_account_id(stack, fake_provider, github_like):
    key = stack.key("ws-a")
    cid = _connect(stack, fake_provider, key)
    connection = Connection.objects.get(pk=cid)
    assert connection.account["userinfo"] == {"id": str(fake_provider.account_number("octocat"))}
    # Asked with the access token the grant gave, nothing else.
    assert fake_provider.userinfo_calls == [_token(stack, key, cid)]
    # The API shows the account as before (the record is the broker's own).
    assert "userinfo" not in stack.call("GET", f"/v1/check-connection/{cid}", key).json()["account"]


def test_reconnect_by_the_same_account_completes_in_place(stack, fake_provider, github_like):
    key = stack.key("ws-a")
    cid = _connect(stack, fake_provider, key)
    before = Connection.objects.get(pk=cid)
    old_token = _token(stack, key, cid)

    back = _reconnect(stack, fake_provider, key, cid, "octocat")
    assert back == {"status": "success", "connection_id": cid}
    after = Connection.objects.get(pk=cid)
    assert after.status == "active" and after.token_version > before.token_version
    new_token = _token(stack, key, cid)
    assert new_token != old_token
    assert fake_provider.userinfo_calls[-1] == new_token  # asked with the new grant's token
    assert after.account["userinfo"] == before.account["userinfo"]
    assert AuditEvent.objects.filter(connection_id=cid, action="connection.reconnected").exists()
    assert Connection.objects.count() == 1
    # …and again: the record kept from the reconnect proves the account the next time.
    assert _reconnect(stack, fake_provider, key, cid, "octocat") == {"status": "success", "connection_id": cid}


def test_reconnect_by_another_account_is_refused_and_changes_nothing(stack, fake_provider, github_like):
    key = stack.key("ws-a")
    cid = _connect(stack, fake_provider, key)
    before = Connection.objects.get(pk=cid)
    old_token = _token(stack, key, cid)

    back = _reconnect(stack, fake_provider, key, cid, "mallory")
    assert back == {"status": "error", "error": "account_mismatch", "connection_id": cid}
    after = Connection.objects.get(pk=cid)
    for name in UNCHANGED:
        assert getattr(after, name) == getattr(before, name), name
    assert _token(stack, key, cid) == old_token
    audit = AuditEvent.objects.get(connection_id=cid, action="connection.reconnect_failed")
    assert audit.detail == {"error": "account_mismatch"}
    assert ConnectAttempt.objects.get().status == "failed"


@pytest.mark.parametrize(
    "answer, error",
    [
        (api_status(500, {"message": "Server Error"}), "userinfo_unavailable"),
        (api_status(503), "userinfo_unavailable"),
        (api_hang(4), "userinfo_unavailable"),  # over PROVIDER_HTTP_TIMEOUT (3 s in tests)
        (api_status(401, {"message": "Bad credentials"}), "userinfo_unavailable"),
        (api_raw(200, b"<html>not json</html>", {"Content-Type": "text/html"}), "userinfo_unavailable"),
        (api_raw(200, b'[{"id": 1}]', {"Content-Type": "application/json"}), "userinfo_unavailable"),
        (api_raw(200, b"{truncated", {"Content-Type": "application/json"}), "userinfo_unavailable"),
        (api_status(302, {}, {"Location": "http://169.254.169.254/latest"}), "userinfo_unavailable"),
        # A JSON object without the id the template names: no proof of the account.
        (api_status(200, {"login": "octocat"}), "account_unverifiable"),
        (api_status(200, {"id": None, "login": "octocat"}), "account_unverifiable"),
    ],
    ids=["500", "503", "timeout", "401", "html", "array", "truncated", "redirect", "no-id", "null-id"],
)
def test_userinfo_trouble_during_reconnect_keeps_the_old_grant(stack, fake_provider, github_like, answer, error):
    key = stack.key("ws-a")
    cid = _connect(stack, fake_provider, key)
    before = Connection.objects.get(pk=cid)
    old_token = _token(stack, key, cid)

    fake_provider.userinfo_answer(answer)
    back = _reconnect(stack, fake_provider, key, cid, "octocat")
    assert back == {"status": "error", "error": error, "connection_id": cid}
    after = Connection.objects.get(pk=cid)
    for name in UNCHANGED:
        assert getattr(after, name) == getattr(before, name), name
    assert _token(stack, key, cid) == old_token
    assert AuditEvent.objects.get(connection_id=cid, action="connection.reconnect_failed").detail == {"error": error}
    assert ConnectAttempt.objects.get().status == "failed"
    # The endpoint back: the same connection reconnects (a refused attempt left nothing behind).
    assert _reconnect(stack, fake_provider, key, cid, "octocat") == {"status": "success", "connection_id": cid}


def test_userinfo_down_at_first_consent_still_connects_but_reconnect_cannot_prove_the_account(
    stack, fake_provider, github_like
):
    key = stack.key("ws-a")
    fake_provider.userinfo_answer(api_status(502))
    cid = _connect(stack, fake_provider, key)
    connection = Connection.objects.get(pk=cid)
    assert connection.status == "active" and "userinfo" not in connection.account
    old_token = _token(stack, key, cid)
    back = _reconnect(stack, fake_provider, key, cid, "octocat")
    assert back == {"status": "error", "error": "account_unverifiable", "connection_id": cid}
    assert _token(stack, key, cid) == old_token


def test_a_device_flow_approval_records_the_userinfo_account_id(stack, fake_provider, github_like, monkeypatch):
    """GitHub connects by the device flow too: its approval records the id like a consent does,
    and a browser reconnect of that connection then proves the account."""
    from datetime import timedelta

    from django.utils import timezone

    from broker_app.providers.spec import builtin_catalog
    from broker_app.services.device import device_poll_one

    monkeypatch.setitem(
        builtin_catalog()["github"], "device_authorization_url", f"{fake_provider.url}/device_authorization"
    )
    key = stack.key("ws-a")
    body = {"user_id": "user-1", "provider_name": "gh", "scopes": ["read:user"], "flow": "device"}
    started = stack.call("POST", "/v1/request-connection", key, json=body)
    assert started.status_code == 201, started.text
    cid = started.json()["connection_id"]
    fake_provider.device_set(started.json()["user_code"], "approved", sub="octocat")
    Connection.objects.filter(pk=cid).update(device_next_poll_at=timezone.now() - timedelta(seconds=1))
    assert device_poll_one(connection_id=cid) == "active"
    assert Connection.objects.get(pk=cid).account["userinfo"] == {"id": str(fake_provider.account_number("octocat"))}
    assert _reconnect(stack, fake_provider, key, cid, "octocat") == {"status": "success", "connection_id": cid}
    assert _reconnect(stack, fake_provider, key, cid, "mallory")["error"] == "account_mismatch"
