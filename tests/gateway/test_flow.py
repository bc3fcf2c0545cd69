"""The Typical Flow through the gateway and broker (two HTTP hops), and every bad input
issue 2 lists. The fake provider plays the provider here; tests/e2e uses a real one."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from broker_app.models import AuditEvent, Connection
from broker_app.services import refresh_policy
from tests.conftest import auth_params, connect, start_connection

pytestmark = pytest.mark.django_db(transaction=True)


def test_typical_flow(stack, fake_provider, fake_provider_row):
    key = stack.key()
    started = start_connection(stack, key)
    assert set(started) == {"authUrl", "state", "scopes", "provider_id", "connection_id"}
    assert started["provider_id"] == str(fake_provider_row.pk)
    params = auth_params(started["authUrl"])
    assert params["state"] == started["state"]
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["nonce"] and params["redirect_uri"] == f"{stack.url}/auth/callback"
    assert stack.call("GET", f"/v1/check-connection/{started['connection_id']}", key).json()["status"] == "pending"

    code = fake_provider.issue_code(code_challenge=params["code_challenge"], nonce=params["nonce"])
    callback = stack.callback(code=code, state=params["state"], iss=fake_provider.issuer)
    assert callback.status_code == 302
    assert callback.headers["Location"] == (
        f"https://app.example.com/oauth/return?status=success&connection_id={started['connection_id']}"
    )

    status = stack.call("GET", f"/v1/check-connection/{started['connection_id']}", key).json()
    assert status["status"] == "active" and status["account"]["sub"] == "user-1"
    token = stack.call("GET", f"/v1/token/{started['connection_id']}", key)
    assert token.status_code == 200 and token.headers["Cache-Control"] == "no-store"
    body = token.json()
    assert body["access_token"].startswith("at-") and body["token_type"] == "Bearer"
    assert body["id_token"] and body["expires_at"].endswith("Z")
    assert body["connection_id"] == started["connection_id"] and body["provider_name"] == "fake"

    refreshed = stack.call("POST", f"/v1/refresh/{started['connection_id']}", key)
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["access_token"] != body["access_token"]
    assert refreshed.headers["Cache-Control"] == "no-store"
    assert fake_provider.refresh_calls == 1

    row = Connection.objects.get(pk=started["connection_id"])
    assert body["access_token"] not in row.access_token_enc and row.access_token_enc.startswith("v1.")
    actions = list(AuditEvent.objects.filter(connection_id=row.id).values_list("action", flat=True))
    assert {"connection.requested", "connection.activated", "token.read", "token.refreshed"} <= set(actions)


def test_auto_refresh_refreshes_only_when_close_to_expiry(stack, fake_provider, fake_provider_row):
    key = stack.key()
    cid = connect(stack, fake_provider, key)
    first = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key).json()
    assert fake_provider.refresh_calls == 0
    Connection.objects.filter(pk=cid).update(expires_at=timezone.now() + timedelta(seconds=30))
    second = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key).json()
    assert fake_provider.refresh_calls == 1 and second["access_token"] != first["access_token"]
    # Within COALESCE_SECONDS of that refresh, min_ttl alone never refreshes again (issue 14):
    # the same token, flagged as shorter-lived than asked.
    coalesced = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=7200", key).json()
    assert fake_provider.refresh_calls == 1 and coalesced["access_token"] == second["access_token"]
    assert coalesced["warnings"] == ["min_ttl_not_met"]
    Connection.objects.filter(pk=cid).update(
        last_refreshed_at=timezone.now() - timedelta(seconds=refresh_policy.COALESCE_SECONDS + 1)
    )
    third = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=7200", key).json()
    assert fake_provider.refresh_calls == 2 and third["access_token"] != second["access_token"]


def test_broker_refresh_endpoint_needs_api_key(stack, fake_provider, fake_provider_row):
    key = stack.key()
    cid = connect(stack, fake_provider, key)
    assert stack.call("POST", f"/connections/{cid}/refresh").status_code == 401
    assert stack.call("POST", f"/connections/{cid}/refresh", headers={"X-API-Key": "wrong"}).status_code == 401
    response = stack.broker("POST", f"/connections/{cid}/refresh")
    assert response.status_code == 200 and response.json()["connection_id"] == cid
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "user_id"),
        ({"user_id": "", "provider_name": "fake", "return_url": "https://app.example.com/r"}, "user_id"),
        ({"user_id": "u", "return_url": "https://app.example.com/r"}, "provider_name"),
        ({"user_id": "u", "provider_name": "fake"}, "return_url"),
        (
            {
                "user_id": "u",
                "provider_name": "fake",
                "scopes": "openid email",
                "return_url": "https://app.example.com/r",
            },
            "scopes",
        ),
        (
            {
                "user_id": "u",
                "provider_name": "fake",
                "scopes": [1, {"a": 2}],
                "return_url": "https://app.example.com/r",
            },
            "scopes",
        ),
        ({"user_id": ["u"], "provider_name": "fake", "return_url": "https://app.example.com/r"}, "user_id"),
        *(
            (
                {
                    "user_id": "u",
                    "provider_name": "fake",
                    "scopes": ["openid", bad],
                    "return_url": "https://app.example.com/r",
                },
                "scopes",
            )
            for bad in ("openid email", 'say"hi', "a\\b", "caf\u00e9", "tab\there", "", "x" * 257)
        ),
    ],
)
def test_request_connection_rejects_malformed_fields(stack, fake_provider_row, body, field):
    response = stack.call("POST", "/v1/request-connection", stack.key(), json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request" and field in response.json()["details"]
    assert Connection.objects.count() == 0


def test_a_space_separated_scope_string_in_one_item_is_refused_with_a_hint(stack, fake_provider_row):
    """["openid email"] would reach the provider as two scopes while the connection records
    one: refused on the gateway and on the broker's own API, saying how to send it."""
    body = {
        "user_id": "u",
        "provider_name": "fake",
        "scopes": ["openid email"],
        "return_url": "https://app.example.com/r",
    }
    response = stack.call("POST", "/v1/request-connection", stack.key(), json=body)
    assert response.status_code == 400
    assert 'send ["openid", "email"]' in response.json()["message"]
    direct = stack.broker("POST", "/internal/v1/connections", json=body, headers={"X-Dromos-Workspace": "ws-a"})
    assert direct.status_code == 400 and "scopes" in direct.json()["details"]
    ok = stack.call(
        "POST",
        "/v1/request-connection",
        stack.key(),
        json={
            **body,
            "scopes": ["openid", "https://www.googleapis.com/auth/drive.readonly", "chat:write", "User.Read"],
        },
    )
    assert ok.status_code == 201, ok.text
    assert Connection.objects.count() == 1


def test_unknown_endpoints_answer_json_404_and_the_admin_keeps_its_page(stack):
    key = stack.key()
    for path in ("/v1/nothing", "/v1/token/c_x/extra", "/v1/"):
        response = stack.call("GET", path, key)
        assert response.status_code == 404, path
        assert response.json() == {"error": "not_found", "message": "No such endpoint."}
    page = stack.call("GET", "/admin/no-such-page/")
    assert page.status_code in (302, 404) and "json" not in page.headers["Content-Type"]


def test_request_connection_rejects_non_json(stack, fake_provider_row):
    key = stack.key()
    response = stack.call(
        "POST", "/v1/request-connection", key, data="{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert stack.call("POST", "/v1/request-connection", key, data="x=1").status_code == 415
    assert Connection.objects.count() == 0


def test_unknown_provider_lists_known_ones(stack, fake_provider_row):
    response = stack.call(
        "POST",
        "/v1/request-connection",
        stack.key(),
        json={"user_id": "u", "provider_name": "nope", "return_url": "https://app.example.com/r"},
    )
    assert response.status_code == 400
    assert response.json()["known_providers"] == ["fake"] and "fake" in response.json()["message"]
    assert Connection.objects.count() == 0


@pytest.mark.parametrize(
    "return_url",
    [
        "https://evil.test/r",
        "ftp://app.example.com/r",
        "javascript:alert(1)",
        "//evil.test/r",
        "app.example.com/r",
        "https://app.example.com.evil.test/r",
        "https://app.example.com:8443/r",
    ],
)
def test_return_url_off_allowlist_or_not_http(stack, fake_provider_row, return_url):
    response = stack.call(
        "POST",
        "/v1/request-connection",
        stack.key(),
        json={"user_id": "u", "provider_name": "fake", "return_url": return_url},
    )
    assert response.status_code == 400 and "return_url" in response.json()["details"]
    assert Connection.objects.count() == 0


def test_unknown_and_foreign_connection_ids_answer_404(stack, fake_provider, fake_provider_row):
    key_a, key_b = stack.key("ws-a"), stack.key("ws-b")
    cid = connect(stack, fake_provider, key_a)
    for method, path in (
        ("GET", "/v1/check-connection/{}"),
        ("GET", "/v1/token/{}"),
        ("POST", "/v1/refresh/{}"),
        ("DELETE", "/v1/connections/{}"),
    ):
        for target in (cid, "c_doesnotexist"):
            response = stack.call(method, path.format(target), key_b)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json() == {"error": "not_found", "message": "connection not found"}
    assert stack.call("GET", f"/v1/token/{cid}", key_a).status_code == 200
    assert stack.call("GET", "/v1/connections", key_b).json()["count"] == 0


def test_token_for_pending_and_failed_connections_is_409(stack, fake_provider, fake_provider_row):
    key = stack.key()
    started = start_connection(stack, key)
    response = stack.call("GET", f"/v1/token/{started['connection_id']}", key)
    assert response.status_code == 409
    assert response.json()["status"] == "pending" and response.json()["error"] == "connection_not_active"
    params = auth_params(started["authUrl"])
    stack.callback(error="access_denied", state=params["state"])
    response = stack.call("GET", f"/v1/token/{started['connection_id']}", key)
    assert response.status_code == 409 and response.json()["status"] == "failed"
    assert response.json()["reconnect_required"] is True
    assert stack.call("POST", f"/v1/refresh/{started['connection_id']}", key).status_code == 409


def test_missing_or_bad_api_key(stack, fake_provider_row):
    assert stack.call("GET", "/v1/providers").status_code == 401
    assert stack.call("GET", "/v1/providers", "dk_wrongkey_" + "x" * 43).status_code == 401
    response = stack.call("GET", "/v1/providers", headers={"Authorization": "Basic abc"})
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# -- callback failures: a page for a person, or a redirect with status=error ---------------


def test_callback_missing_and_unknown_state_render_a_page(stack, fake_provider_row):
    for params in ({}, {"state": "nope", "code": "x"}):
        response = stack.callback(**params)
        assert response.status_code == 400 and "text/html" in response.headers["Content-Type"]
        assert "could not complete" in response.text


def test_callback_takes_only_get_and_a_post_leaves_the_connection_pending(stack, fake_provider_row):
    started = start_connection(stack, stack.key())
    state = auth_params(started["authUrl"])["state"]
    for method in ("POST", "PUT", "DELETE"):
        response = requests.request(
            method,
            f"{stack.url}/auth/callback",
            params={"state": state, "code": "x"},
            data={"state": state, "code": "x"},
            timeout=30,
            allow_redirects=False,
        )
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "GET"
    assert Connection.objects.get(pk=started["connection_id"]).status == "pending"


def test_callback_state_is_single_use(stack, fake_provider, fake_provider_row):
    key = stack.key()
    started = start_connection(stack, key)
    params = auth_params(started["authUrl"])
    code = fake_provider.issue_code(code_challenge=params["code_challenge"], nonce=params["nonce"])
    assert stack.callback(code=code, state=params["state"]).status_code == 302
    replay = stack.callback(code=code, state=params["state"])
    assert replay.status_code == 400 and "text/html" in replay.headers["Content-Type"]
    assert Connection.objects.get(pk=started["connection_id"]).status == "active"


def test_callback_expired_state_fails_the_connection(stack, fake_provider, fake_provider_row):
    key = stack.key()
    started = start_connection(stack, key)
    Connection.objects.filter(pk=started["connection_id"]).update(
        state_expires_at=timezone.now() - timedelta(seconds=1)
    )
    params = auth_params(started["authUrl"])
    code = fake_provider.issue_code(code_challenge=params["code_challenge"], nonce=params["nonce"])
    response = stack.callback(code=code, state=params["state"])
    assert response.status_code == 302 and "status=error&error=state_expired" in response.headers["Location"]
    status = stack.call("GET", f"/v1/check-connection/{started['connection_id']}", key).json()
    assert status["status"] == "failed" and status["error"] == "state_expired"
    assert fake_provider.token_calls == 0


@pytest.mark.parametrize(
    "case, error",
    [
        ("denied", "access_denied"),
        ("wrong_iss", "invalid_issuer"),
        ("rejected_code", "code_exchange_failed"),
        ("bad_signature", "invalid_id_token"),
        ("wrong_audience", "invalid_id_token"),
        ("wrong_nonce", "invalid_id_token"),
        ("no_code", "missing_code"),
    ],
)
def test_callback_failures_redirect_with_error_and_fail_the_connection(
    stack, fake_provider, fake_provider_row, case, error
):
    from fake_provider import _rsa_jwk

    key = stack.key()
    started = start_connection(stack, key, return_url="https://app.example.com/cb?keep=1")
    params = auth_params(started["authUrl"])
    nonce, query = params["nonce"], {"state": params["state"], "iss": fake_provider.issuer}
    id_token = None
    if case == "bad_signature":
        id_token = fake_provider.id_token(nonce=nonce, key=_rsa_jwk("key-1")[0])
    elif case == "wrong_audience":
        id_token = fake_provider.id_token(nonce=nonce, aud="someone-else")
    elif case == "wrong_nonce":
        id_token = fake_provider.id_token(nonce="not-the-nonce")
    code = fake_provider.issue_code(code_challenge=params["code_challenge"], nonce=nonce, id_token=id_token)
    if case == "denied":
        query.update(error="access_denied", error_description="The user said no")
    elif case == "wrong_iss":
        query.update(code=code, iss="https://evil.test")
    elif case == "rejected_code":
        query.update(code="a-code-the-provider-never-issued")
    elif case != "no_code":
        query.update(code=code)
    response = stack.callback(**query)
    assert response.status_code == 302
    assert response.headers["Location"] == (
        f"https://app.example.com/cb?keep=1&status=error&error={error}&connection_id={started['connection_id']}"
    )
    row = Connection.objects.get(pk=started["connection_id"])
    assert row.status == "failed" and row.error == error
    assert row.access_token_enc == row.refresh_token_enc == row.id_token_enc == row.pkce_verifier_enc == ""
    assert stack.call("GET", f"/v1/token/{row.id}", key).status_code == 409
    if case == "wrong_iss":
        assert fake_provider.token_calls == 0


def test_list_providers_and_connections(stack, fake_provider, fake_provider_row):
    key = stack.key()
    providers = stack.call("GET", "/v1/providers", key).json()["providers"]
    assert [p["name"] for p in providers] == ["fake"] and providers[0]["supports_refresh"] is True
    ids = [connect(stack, fake_provider, key) for _ in range(3)]
    page = stack.call("GET", "/v1/connections?page_size=2", key).json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"].endswith("page=2")
    assert page["previous"] is None
    assert {c["connection_id"] for c in page["results"]} <= set(ids)
    assert stack.call("GET", "/v1/connections?status=bogus", key).status_code == 400
    assert stack.call("GET", "/v1/connections?status=active&user_id=user-1", key).json()["count"] == 3


def test_delete_revokes_at_provider_and_wipes_tokens(stack, fake_provider, fake_provider_row):
    key = stack.key()
    cid = connect(stack, fake_provider, key)
    response = stack.call("DELETE", f"/v1/connections/{cid}", key)
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    assert fake_provider.revocations[0]["token_type_hint"] == "refresh_token"
    row = Connection.objects.get(pk=cid)
    assert row.access_token_enc == row.refresh_token_enc == row.id_token_enc == ""
    assert stack.call("GET", f"/v1/token/{cid}", key).json()["status"] == "revoked"
    assert stack.call("DELETE", f"/v1/connections/{cid}", key).status_code == 200


def test_broker_unreachable_is_503_with_retry_after(stack, fake_provider_row, settings):
    from gateway_app import broker_client

    key = stack.key()
    settings.BROKER_INTERNAL_URL = "http://127.0.0.1:9"  # discard port: nothing listens
    broker_client.reset()
    response = stack.call("GET", "/v1/token/c_abc", key)
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert response.json()["error"] == "broker_unavailable"
