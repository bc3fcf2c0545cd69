"""The broker is private: X-API-Key on every route but the provider callback and /healthz,
and the CIDR allowlist on every route but those two (the admin included)."""

from __future__ import annotations

import re

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.urls import URLPattern, URLResolver

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC = {"/auth/callback", "/healthz"}
# The hosted connect page (issue 16): public, its token is the credential (tests/connect).
PUBLIC_PAGES = {"/connect/c_sample"}


def _broker_paths() -> list[str]:
    """Every route of the broker's URLconf (admin aside), with sample path parameters."""
    from dromos.urls_broker import urlpatterns

    paths = []

    def walk(patterns, prefix):
        for entry in patterns:
            raw = str(entry.pattern)
            if isinstance(entry, URLResolver):
                if raw.startswith("admin/"):
                    continue
                walk(entry.url_patterns, prefix + raw)
            elif isinstance(entry, URLPattern):
                paths.append("/" + re.sub(r"<(?:\w+:)?(\w+)>", "c_sample", prefix + raw).lstrip("^").rstrip("$"))

    walk(urlpatterns, "")
    return sorted(set(paths))


BROKER_PATHS = _broker_paths()


def test_route_list_is_complete():
    assert {
        "/auth/callback",
        "/healthz",
        "/readyz",
        "/metrics",
        "/internal/v1/connections",
        "/internal/v1/connections/c_sample/token",
        "/connections/c_sample/refresh",
    } <= set(BROKER_PATHS)


@pytest.mark.parametrize("path", [p for p in BROKER_PATHS if p not in PUBLIC | PUBLIC_PAGES])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_every_private_route_needs_the_api_key(stack, path, method):
    for headers in (
        {},
        {"X-API-Key": ""},
        {"X-API-Key": "wrong"},
        {"X-API-Key": "x" * 64},
        {"Authorization": "Bearer test-broker-api-key"},
    ):
        response = stack.call(method, path, headers=headers)
        assert response.status_code == 401, (method, path, headers, response.status_code)
        assert response.json() == {"error": "unauthorized", "message": "missing or invalid X-API-Key"}
    answered = stack.broker(method, path, headers={"X-Dromos-Workspace": "ws-a"})
    assert answered.status_code != 401


@pytest.mark.parametrize("path", sorted(PUBLIC))
def test_callback_and_liveness_need_no_key(stack, path):
    assert stack.call("GET", path).status_code in (200, 400)


def test_connect_page_needs_no_key_but_a_valid_token(stack):
    response = stack.call("GET", "/connect/c_sample")
    assert response.status_code == 404 and 'data-error="unknown"' in response.text
    assert stack.call("GET", "/static/connect/connect.css").status_code == 200


def test_near_miss_paths_are_not_public(stack):
    for path in ("/healthz/x", "/auth/callback/../../internal/v1/providers", "/auth/callbackx", "/administrator"):
        assert stack.call("GET", path).status_code == 401, path


def test_key_comparison_is_constant_time(settings, monkeypatch):
    from broker_app import middleware

    seen = []
    real = middleware.hmac.compare_digest
    monkeypatch.setattr(middleware.hmac, "compare_digest", lambda a, b: seen.append((len(a), len(b))) or real(a, b))
    assert middleware.api_key_valid(settings.BROKER_API_KEY)
    assert not middleware.api_key_valid("short")
    assert not middleware.api_key_valid(settings.BROKER_API_KEY + "x")
    # Digests are compared, so the length of the real key never shows either.
    assert seen == [(32, 32)] * 3


CIDRS = ["10.0.0.0/8", "2001:db8::/32"]


@pytest.mark.parametrize(
    "address, allowed",
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("2001:db8::5", True),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("2001:db9::1", False),
        ("", False),
        ("not-an-ip", False),
    ],
)
def test_cidr_allowlist(settings, address, allowed):
    settings.BROKER_ALLOWED_CIDRS = CIDRS
    client = Client(REMOTE_ADDR=address, headers={"X-API-Key": settings.BROKER_API_KEY})
    response = client.get("/internal/v1/providers")
    assert (response.status_code == 200) is allowed
    if not allowed:
        assert response.status_code == 403 and response.json()["error"] == "forbidden"
        # A forwarded-for header written by the client changes nothing.
        spoofed = client.get("/internal/v1/providers", headers={"X-Forwarded-For": "10.1.2.3"})
        assert spoofed.status_code == 403


def test_admin_needs_login_not_the_key_but_stays_inside_the_cidrs(settings):
    settings.BROKER_ALLOWED_CIDRS = CIDRS
    inside, outside = Client(REMOTE_ADDR="10.9.9.9"), Client(REMOTE_ADDR="203.0.113.7")
    assert inside.get("/admin/login/").status_code == 200
    assert inside.get("/admin/").status_code == 302  # to the login page
    assert outside.get("/admin/login/").status_code == 403
    assert outside.post("/admin/login/", {"username": "a", "password": "b"}).status_code == 403
    assert outside.get("/static/admin/css/base.css").status_code == 403
    # The provider's redirect and the liveness probe come from anywhere.
    assert outside.get("/auth/callback").status_code == 400
    assert outside.get("/healthz").status_code == 200


def test_cidr_allowlist_over_real_http(stack, settings):
    settings.BROKER_ALLOWED_CIDRS = ["10.0.0.0/8"]
    assert stack.broker("GET", "/internal/v1/providers").status_code == 403
    assert stack.callback(state="x").status_code == 400
    settings.BROKER_ALLOWED_CIDRS = ["127.0.0.0/8"]
    assert stack.broker("GET", "/internal/v1/providers").status_code == 200


def test_malformed_cidr_stops_the_broker(settings):
    from broker_app import checks, middleware

    settings.BROKER_ALLOWED_CIDRS = ["10.0.0.0/8", "10.0.0.300/8"]
    assert [e.id for e in checks.check_allowed_cidrs(None)] == ["dromos.E003"]
    with pytest.raises(ImproperlyConfigured):
        middleware.BrokerAccessMiddleware(lambda request: None)
