"""Issue 14, finding 6, against the real gunicorn gateway and broker: the broker admin's login
locks after repeated failures (django-axes), failed API-key authentications are throttled per
source address before any database lookup, and the gateway's /readyz and /metrics need the
operator token."""

from __future__ import annotations

import re

import pytest
import requests
from requests.adapters import HTTPAdapter

from tests.hardening.conftest import ADMIN_LOGIN_FAILURE_LIMIT
from tests.ops.conftest import free_port, http_status, metric_value, start_role, stop_process, wait_for

pytestmark = pytest.mark.e2e

# -- admin login ---------------------------------------------------------------------------------

ADMIN, PASSWORD = "ops-admin", "correct horse battery staple 14"


@pytest.fixture(scope="module")
def admin_user(hard_stack):
    hard_stack.env["DJANGO_SUPERUSER_PASSWORD"] = PASSWORD
    try:
        hard_stack.manage("broker", "createsuperuser", "--noinput", "--username", ADMIN, "--email", "ops@example.com")
    finally:
        hard_stack.env.pop("DJANGO_SUPERUSER_PASSWORD")
    return ADMIN


def _login(stack, username: str, password: str) -> requests.Response:
    session = requests.Session()
    page = session.get(stack.broker_url + "/admin/login/", timeout=10)
    assert page.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return session.post(
        stack.broker_url + "/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/"},
        allow_redirects=False,
        timeout=10,
    )


def _logged_in(response: requests.Response) -> bool:
    return response.status_code == 302 and response.headers["Location"] == "/admin/"


def test_admin_login_locks_after_repeated_failures_until_an_operator_unlocks(hard_stack, admin_user):
    assert _logged_in(_login(hard_stack, admin_user, PASSWORD))  # the account works
    statuses = [_login(hard_stack, admin_user, f"wrong-{n}").status_code for n in range(ADMIN_LOGIN_FAILURE_LIMIT)]
    # Each failure before the limit shows the form again; the one reaching it is refused.
    assert statuses[:-1] == [200] * (ADMIN_LOGIN_FAILURE_LIMIT - 1) and statuses[-1] == 429, statuses
    locked = _login(hard_stack, admin_user, PASSWORD)
    assert locked.status_code == 429 and not _logged_in(locked)
    assert "Login locked" in locked.text and PASSWORD not in locked.text
    assert "sessionid" not in locked.cookies

    # The operator's unlock (docs/operations.md).
    hard_stack.manage("broker", "axes_reset_username", admin_user)
    assert _logged_in(_login(hard_stack, admin_user, PASSWORD))


# -- failed API-key authentications --------------------------------------------------------------


class _FromAddress(HTTPAdapter):
    """Connect from another loopback address (a second client, as far as the gateway sees)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def _client(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", _FromAddress(address))
    return session


WRONG = "dk_zzzzzzzz_" + "A" * 43  # well-formed, unknown prefix: a database lookup each time


def test_failed_api_key_authentications_are_throttled_per_source_address(hard_stack):
    limit = 8  # API_KEY_AUTH_FAILURE_LIMIT of hard_stack
    attacker, agent = _client("127.0.0.2"), _client("127.0.0.1")
    fresh_key = hard_stack.new_key("ws-throttle")  # never used: not cached in any gateway process
    url = hard_stack.gateway_url + "/v1/providers"
    before = metric_value(
        requests.get(hard_stack.gateway_url + "/metrics", headers=hard_stack.ops_headers(), timeout=10).text,
        "dromos_gateway_auth_throttled_total",
    )

    guesses = [attacker.get(url, headers={"Authorization": f"Bearer {WRONG}"}, timeout=10) for _ in range(limit)]
    assert [r.status_code for r in guesses] == [401] * limit
    refused = attacker.get(url, headers={"Authorization": f"Bearer {WRONG}"}, timeout=10)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # A valid key needing a lookup is refused from that address too, before the lookup ...
    assert attacker.get(url, headers={"Authorization": f"Bearer {fresh_key}"}, timeout=10).status_code == 429
    # ... while another address is untouched.
    assert agent.get(url, headers={"Authorization": f"Bearer {fresh_key}"}, timeout=10).status_code == 200
    assert agent.get(url, headers={"Authorization": f"Bearer {WRONG}"}, timeout=10).status_code == 401

    after = metric_value(
        requests.get(hard_stack.gateway_url + "/metrics", headers=hard_stack.ops_headers(), timeout=10).text,
        "dromos_gateway_auth_throttled_total",
    )
    assert after - before == 2


@pytest.mark.django_db
def test_the_failure_throttle_fails_open_when_redis_is_unreachable(settings):
    from django.core.cache import caches

    from gateway_app import auth_throttle

    settings.API_KEY_AUTH_FAILURE_LIMIT = "1/min"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens
            "OPTIONS": {"socket_timeout": 0.2, "socket_connect_timeout": 0.2},
        }
    }
    try:
        for _ in range(3):
            auth_throttle.record_failure("198.51.100.7")
            auth_throttle.refuse_if_blocked("198.51.100.7")  # does not raise
    finally:
        caches["default"].close()
        del caches["default"]


# -- the gateway's operator endpoints ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
def test_gateway_ops_endpoints_need_the_ops_token(hard_stack, path):
    url = hard_stack.gateway_url + path
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {hard_stack.api_key}"}):
        response = requests.get(url, headers=headers, timeout=10)
        assert response.status_code == 401, (headers, response.status_code)
        assert response.json()["error"] == "unauthorized"
        assert "dromos_" not in response.text and "checks" not in response.text
    assert requests.get(url, headers=hard_stack.ops_headers(), timeout=10).status_code == 200
    assert requests.get(hard_stack.gateway_url + "/healthz", timeout=10).status_code == 200  # liveness stays open


def test_without_an_ops_token_the_gateway_keeps_its_ops_endpoints_closed(hard_stack, tmp_path):
    """The safe default: GATEWAY_OPS_TOKEN unset (DEBUG off) closes /readyz and /metrics to
    everyone; the gateway still starts and serves the API."""
    env = {k: v for k, v in hard_stack.env.items() if k != "GATEWAY_OPS_TOKEN"}
    port = free_port()
    gateway = start_role("gateway", env, tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_status(url + "/healthz") == 200, "gateway without an ops token", 60)
        for path in ("/readyz", "/metrics"):
            for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": f"Bearer {hard_stack.api_key}"}):
                assert requests.get(url + path, headers=headers, timeout=10).status_code == 401, (path, headers)
        api = requests.get(url + "/v1/providers", headers={"Authorization": f"Bearer {hard_stack.api_key}"}, timeout=10)
        assert api.status_code == 200, api.text
    finally:
        stop_process(gateway)
