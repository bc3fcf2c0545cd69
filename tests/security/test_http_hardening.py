"""Per-key throttling, request size limits and security headers, over real HTTP."""

from __future__ import annotations

import pytest
from django.test import Client

from broker_app.models import Connection

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"user_id": "u", "provider_name": "fake", "return_url": "https://app.example.com/r"}


def test_throttle_is_per_key_with_retry_after(stack, fake_provider_row, settings):
    settings.API_KEY_RATE_LIMIT = "3/min"
    noisy, quiet = stack.key("ws-a"), stack.key("ws-a")
    for _ in range(3):
        assert stack.call("GET", "/v1/providers", noisy).status_code == 200
    throttled = stack.call("GET", "/v1/providers", noisy)
    assert throttled.status_code == 429
    assert throttled.json()["error"] == "rate_limited"
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    # Another key of the same workspace has its own budget.
    assert stack.call("GET", "/v1/providers", quiet).status_code == 200


def test_oversized_body_is_413_json_at_the_gateway(stack, fake_provider_row, settings):
    key = stack.key()
    padding = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = stack.call("POST", "/v1/request-connection", key, json={**BODY, "user_id": padding})
    assert response.status_code == 413, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"] == "request_too_large"
    assert Connection.objects.count() == 0
    # Just under the limit is an ordinary (here: invalid, user_id too long) request.
    small = stack.call("POST", "/v1/request-connection", key, json={**BODY, "user_id": "x" * 1000})
    assert small.status_code == 400 and small.json()["error"] == "invalid_request"


def test_oversized_body_is_413_json_at_the_broker(stack, fake_provider_row, settings):
    padding = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = stack.broker(
        "POST", "/internal/v1/connections", json={**BODY, "user_id": padding}, headers={"X-Dromos-Workspace": "ws-a"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "request_too_large"
    assert Connection.objects.count() == 0


def test_oversized_body_without_content_length_is_refused(stack, fake_provider_row, settings):
    """A chunked body carries no Content-Length: it must not slip past the limit."""
    key = stack.key()
    chunk = b"x" * 8192

    def body():
        yield b'{"user_id": "'
        for _ in range(settings.DATA_UPLOAD_MAX_MEMORY_SIZE // len(chunk) + 2):
            yield chunk
        yield b'", "provider_name": "fake", "return_url": "https://app.example.com/r"}'

    response = stack.call(
        "POST", "/v1/request-connection", key, data=body(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 413), response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    assert Connection.objects.count() == 0


@pytest.mark.parametrize(
    "path, auth",
    [
        ("/v1/providers", "key"),
        ("/healthz", None),
        ("/auth/callback", None),
        ("/v1/token/c_nope", "key"),
    ],
)
def test_security_headers_on_every_kind_of_answer(stack, fake_provider_row, path, auth):
    response = stack.call("GET", path, stack.key() if auth else None)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "Strict-Transport-Security" not in response.headers  # plain http: HSTS would be ignored


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_gateway_settings_deny_framing():
    """The gateway process (its own MIDDLEWARE list) frames nothing, docs pages included."""
    import subprocess
    import sys

    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print('django.middleware.clickjacking.XFrameOptionsMiddleware' in settings.MIDDLEWARE, "
        "settings.X_FRAME_OPTIONS)"
    )
    env = {"DJANGO_SETTINGS_MODULE": "dromos.settings.gateway", "DEBUG": "true", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "DENY"], out.stderr


def test_hsts_behind_tls_proxy(settings, db):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    client = Client()
    secure = client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "Strict-Transport-Security" not in client.get("/healthz").headers


def test_forwarded_proto_is_ignored_unless_behind_a_proxy(settings, db):
    settings.SECURE_PROXY_SSL_HEADER = None
    response = Client().get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in response.headers


def test_answers_carrying_secrets_are_never_cached(stack, fake_provider, fake_provider_row):
    from tests.conftest import connect

    key = stack.key()
    started = stack.call("POST", "/v1/request-connection", key, json=BODY)  # carries the state
    assert started.status_code == 201 and started.headers["Cache-Control"] == "no-store"
    cid = connect(stack, fake_provider, key)
    for method, path in (
        ("GET", f"/v1/token/{cid}"),
        ("POST", f"/v1/refresh/{cid}"),
        ("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=86400"),
    ):
        response = stack.call(method, path, key)
        assert response.status_code == 200 and "access_token" in response.json()
        assert response.headers["Cache-Control"] == "no-store", path


def test_throttled_token_reads_never_reach_the_broker(stack, fake_provider, fake_provider_row, settings):
    from broker_app.models import AuditEvent
    from tests.conftest import connect

    cid = connect(stack, fake_provider, stack.key("ws-a"))
    reader = stack.key("ws-a")  # a key of its own: its budget starts empty
    settings.API_KEY_RATE_LIMIT = "2/min"
    codes = [stack.call("GET", f"/v1/token/{cid}", reader).status_code for _ in range(4)]
    assert codes == [200, 200, 429, 429]
    assert AuditEvent.objects.filter(connection_id=cid, action="token.read").count() == 2
