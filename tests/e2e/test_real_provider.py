"""The integration guide's Typical Flow and Frontend Integration, for real: separate
gateway and broker processes, a real OIDC provider (npm oidc-provider), consent walked
like a browser would, and the token checked at the provider's userinfo endpoint."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from oidc_consent import complete_consent

from broker_app.services.refresh_policy import COALESCE_SECONDS

pytestmark = pytest.mark.e2e
RETURN_URL = "http://127.0.0.1:1/oauth/return"  # nothing listens: the browser stops there


def _gw(stack, method, path, **kwargs):
    headers = {"Authorization": f"Bearer {stack.api_key}", **kwargs.pop("headers", {})}
    return requests.request(method, stack.gateway_url + path, headers=headers, timeout=30, **kwargs)


def _userinfo(stack, access_token: str) -> requests.Response:
    return requests.get(f"{stack.oidc.issuer}/me", headers={"Authorization": f"Bearer {access_token}"}, timeout=10)


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_typical_flow_against_a_real_oidc_provider(real_stack):
    providers = _gw(real_stack, "GET", "/v1/providers").json()["providers"]
    # The session's stack: the connect-page tests add their own "helpdesk" and "esign" providers.
    assert [p["name"] for p in providers if p["name"] not in ("helpdesk", "esign")] == ["local"]

    started = _gw(
        real_stack,
        "POST",
        "/v1/request-connection",
        json={
            "user_id": "workspace-123",
            "provider_name": "local",
            "scopes": ["openid", "email", "profile", "offline_access"],
            "return_url": RETURN_URL,
        },
    )
    assert started.status_code == 201, started.text
    body = started.json()
    assert body["authUrl"].startswith(real_stack.oidc.issuer + "/auth?")
    cid = body["connection_id"]
    assert _gw(real_stack, "GET", f"/v1/check-connection/{cid}").json()["status"] == "pending"
    assert _gw(real_stack, "GET", f"/v1/token/{cid}").status_code == 409

    final = complete_consent(body["authUrl"], login="alice", stop_at_prefix=RETURN_URL)
    assert final.startswith(RETURN_URL + "?")
    assert _query(final) == {"status": "success", "connection_id": cid}

    status = _gw(real_stack, "GET", f"/v1/check-connection/{cid}").json()
    assert status["status"] == "active" and status["account"]["sub"] == "alice"
    assert status["account"]["email"] == "alice@example.test"

    token = _gw(real_stack, "GET", f"/v1/token/{cid}")
    assert token.status_code == 200 and token.headers["Cache-Control"] == "no-store"
    first = token.json()
    assert first["id_token"] and first["expires_at"]
    info = _userinfo(real_stack, first["access_token"])
    assert info.status_code == 200 and info.json()["sub"] == "alice"

    refreshed = _gw(real_stack, "POST", f"/v1/refresh/{cid}")
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    assert second["access_token"] != first["access_token"]
    assert _userinfo(real_stack, second["access_token"]).status_code == 200
    # A forced refresh right after another returns that result (coalesced, no provider call).
    assert _gw(real_stack, "POST", f"/v1/refresh/{cid}").json()["access_token"] == second["access_token"]
    # The provider rotated the refresh token and revokes the grant on reuse: this refresh
    # (auto_refresh with a min_ttl beyond the token's life, once the coalescing window of the
    # refresh above has passed) only works if the rotated one was stored.
    time.sleep(COALESCE_SECONDS + 0.5)
    auto = _gw(real_stack, "GET", f"/v1/token/{cid}", params={"auto_refresh": "true", "min_ttl": "86400"})
    assert auto.status_code == 200, auto.text
    assert auto.json()["access_token"] != second["access_token"]
    assert _userinfo(real_stack, auto.json()["access_token"]).status_code == 200
    assert _gw(real_stack, "GET", f"/v1/token/{cid}", params={"min_ttl": "999999"}).status_code == 400
    assert _gw(real_stack, "GET", f"/v1/check-connection/{cid}").json()["status"] == "active"

    # The broker's refresh endpoint from the guide (temporary until the gateway proxy).
    broker_refresh = requests.post(
        f"{real_stack.broker_url}/connections/{cid}/refresh",
        headers={"X-API-Key": real_stack.env["BROKER_API_KEY"]},
        timeout=30,
    )
    assert broker_refresh.status_code == 200
    assert requests.post(f"{real_stack.broker_url}/connections/{cid}/refresh", timeout=30).status_code == 401

    deleted = _gw(real_stack, "DELETE", f"/v1/connections/{cid}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "revoked"
    assert _userinfo(real_stack, broker_refresh.json()["access_token"]).status_code == 401
    assert _gw(real_stack, "GET", f"/v1/token/{cid}").json()["status"] == "revoked"


def test_denied_consent_redirects_with_error_and_fails_the_connection(real_stack):
    started = _gw(
        real_stack,
        "POST",
        "/v1/request-connection",
        json={"user_id": "workspace-123", "provider_name": "local", "return_url": RETURN_URL},
    ).json()
    final = complete_consent(started["authUrl"], login="bob", deny=True, stop_at_prefix=RETURN_URL)
    query = _query(final)
    assert query["status"] == "error" and query["error"] == "access_denied"
    assert query["connection_id"] == started["connection_id"]
    status = _gw(real_stack, "GET", f"/v1/check-connection/{started['connection_id']}").json()
    assert status["status"] == "failed" and status["error"] == "access_denied"
    token = _gw(real_stack, "GET", f"/v1/token/{started['connection_id']}")
    assert token.status_code == 409 and token.json()["reconnect_required"] is True


def test_replayed_callback_shows_a_page_not_a_second_exchange(real_stack):
    started = _gw(
        real_stack,
        "POST",
        "/v1/request-connection",
        json={"user_id": "u-2", "provider_name": "local", "return_url": RETURN_URL},
    ).json()
    callback = complete_consent(
        started["authUrl"], login="carol", stop_at_prefix=f"{real_stack.broker_url}/auth/callback"
    )
    assert callback.startswith(f"{real_stack.broker_url}/auth/callback?")
    first = requests.get(callback, allow_redirects=False, timeout=30)
    assert first.status_code == 302 and "status=success" in first.headers["Location"]
    replay = requests.get(callback, allow_redirects=False, timeout=30)
    assert replay.status_code == 400 and "text/html" in replay.headers["Content-Type"]
    assert _gw(real_stack, "GET", f"/v1/check-connection/{started['connection_id']}").json()["status"] == "active"


def test_gateway_maps_a_dead_broker_to_503(real_stack):
    # It stops the broker, and starts it again for the session's later e2e tests.
    broker = real_stack.processes["broker"]
    broker.terminate()
    broker.wait(timeout=20)
    try:
        response = _gw(real_stack, "GET", "/v1/token/c_whatever")
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert response.json()["error"] == "broker_unavailable"
        ready = requests.get(f"{real_stack.gateway_url}/readyz", headers=real_stack.ops_headers(), timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] is False
    finally:
        real_stack._spawn("broker", broker.args, "broker")
        real_stack._wait_http(f"{real_stack.broker_url}/healthz", "broker")
