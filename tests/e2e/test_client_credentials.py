"""Client credentials (RFC 6749 §4.4) for real: gunicorn gateway and broker, Celery, and the
npm oidc-provider with `clientCredentials` on. The provider app's own client, a connection's
own client given once (never answered), a `resource` (RFC 8707) whose JWT access token is
checked against the provider's keys, a re-request near expiry, and a wrong secret."""

from __future__ import annotations

import time

import jwt
import pytest
import requests
from stack import M2M_CLIENT_ID

pytestmark = pytest.mark.e2e


def _gw(stack, method, path, **kwargs):
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    return requests.request(method, stack.gateway_url + path, headers=headers, timeout=30, **kwargs)


def _create(stack, **body):
    payload = {"user_id": "svc", "provider_name": "local", "flow": "client_credentials", **body}
    return _gw(stack, "POST", "/v1/request-connection", json=payload)


def test_client_credentials_with_the_provider_app(real_stack):
    created = _create(real_stack)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "active" and body["flow"] == "client_credentials" and body["expires_at"]
    token = _gw(real_stack, "GET", f"/v1/token/{body['connection_id']}").json()
    assert token["token_type"] == "Bearer" and token["access_token"]
    # A forced refresh is a new client_credentials request: a new token.
    refreshed = _gw(real_stack, "POST", f"/v1/refresh/{body['connection_id']}")
    assert refreshed.status_code == 200 and refreshed.json()["access_token"] != token["access_token"]
    # auto_refresh re-requests a token expiring within min_ttl (600 s tokens, min_ttl 700),
    # once the coalescing window (5 s) after the last one has passed.
    time.sleep(5.5)
    fresh = _gw(real_stack, "GET", f"/v1/token/{body['connection_id']}?auto_refresh=true&min_ttl=700").json()
    assert fresh["access_token"] != refreshed.json()["access_token"] and fresh["warnings"] == ["min_ttl_not_met"]


def test_client_credentials_with_the_connection_own_client_and_a_resource(real_stack):
    secret = real_stack.m2m_client_secret
    created = _create(
        real_stack,
        client_id=M2M_CLIENT_ID,
        client_secret=secret,
        scopes=["api:read"],
        resource="urn:dromos:api",
    )
    assert created.status_code == 201 and created.json()["status"] == "active", created.text
    cid = created.json()["connection_id"]
    checked = _gw(real_stack, "GET", f"/v1/check-connection/{cid}")
    for answer in (created, checked, _gw(real_stack, "GET", "/v1/connections")):
        assert secret not in answer.text
    token = _gw(real_stack, "GET", f"/v1/token/{cid}").json()
    # The provider issued it to the connection's client, for the resource: verify it as the API would.
    keys = jwt.PyJWKClient(f"{real_stack.oidc.issuer}/jwks")
    claims = jwt.decode(
        token["access_token"],
        keys.get_signing_key_from_jwt(token["access_token"]).key,
        algorithms=["RS256"],
        audience="urn:dromos:api",
        issuer=real_stack.oidc.issuer,
    )
    assert claims["client_id"] == M2M_CLIENT_ID and claims["scope"] == "api:read"
    assert claims["exp"] - claims["iat"] == 600
    assert token["scopes"] == ["api:read"]


def test_client_credentials_wrong_secret_fails_with_the_provider_error(real_stack):
    created = _create(real_stack, client_id=M2M_CLIENT_ID, client_secret="not-the-secret-at-all")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "failed" and body["error"] == "invalid_client"
    assert "not-the-secret-at-all" not in created.text
    token = _gw(real_stack, "GET", f"/v1/token/{body['connection_id']}")
    assert token.status_code == 409 and token.json()["reconnect_required"] is True
