"""RFC 8628 for real: gunicorn gateway and broker, a Celery worker and beat polling, and the
npm oidc-provider with its device flow on. The user code is typed and confirmed at the
provider's verification page like a person on a phone would, then login and consent."""

from __future__ import annotations

import time

import pytest
import requests
from oidc_consent import confirm_device_code

from tests.e2e.conftest import DEVICE_CODE_TTL

pytestmark = pytest.mark.e2e


def _gw(stack, method, path, **kwargs):
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    return requests.request(method, stack.gateway_url + path, headers=headers, timeout=30, **kwargs)


def _start(stack, user_id: str) -> dict:
    started = _gw(
        stack,
        "POST",
        "/v1/request-connection",
        json={"user_id": user_id, "provider_name": "local", "scopes": ["openid", "email"], "flow": "device"},
    )
    assert started.status_code == 201, started.text
    return started.json()


def _wait_status(stack, cid: str, until: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = _gw(stack, "GET", f"/v1/check-connection/{cid}").json()
        if body["status"] != "pending" or time.monotonic() > deadline:
            assert body["status"] == until, body
            return body
        time.sleep(0.5)


def test_device_flow_confirmed_at_the_provider_page(real_stack):
    body = _start(real_stack, "device-user")
    assert body["verification_uri"] == f"{real_stack.oidc.issuer}/device"
    assert body["verification_uri_complete"].startswith(body["verification_uri"] + "?user_code=")
    assert body["interval"] == 5 and body["expires_at"]
    cid = body["connection_id"]
    assert _gw(real_stack, "GET", f"/v1/check-connection/{cid}").json()["status"] == "pending"

    final = confirm_device_code(body["verification_uri"], body["user_code"], login="bob")
    assert final.startswith(real_stack.oidc.issuer)

    status = _wait_status(real_stack, cid, "active", timeout=DEVICE_CODE_TTL)
    assert status["account"]["sub"] == "bob"
    token = _gw(real_stack, "GET", f"/v1/token/{cid}").json()
    assert token["id_token"]
    info = requests.get(
        f"{real_stack.oidc.issuer}/me", headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=10
    )
    assert info.status_code == 200 and info.json()["sub"] == "bob"


def test_device_flow_denied_and_expired(real_stack):
    denied = _start(real_stack, "device-deny")
    expired = _start(real_stack, "device-idle")
    confirm_device_code(denied["verification_uri"], denied["user_code"], deny=True)
    status = _wait_status(real_stack, denied["connection_id"], "failed", timeout=DEVICE_CODE_TTL)
    assert status["error"] == "access_denied"
    # Nobody confirms the other code: it fails when the device code expires.
    status = _wait_status(real_stack, expired["connection_id"], "failed", timeout=DEVICE_CODE_TTL + 15)
    assert status["error"] == "expired_token"
