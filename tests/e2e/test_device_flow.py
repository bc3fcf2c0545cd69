"""RFC 8628 for real: gunicorn gateway and broker, a Celery worker and beat polling, and the
npm oidc-provider with its device flow on. The user code is typed and confirmed at the
provider's verification page like a person on a phone would, then login and consent.
`slow_down` (§3.5) comes from a second npm oidc-provider started with its
DEVICE_SLOW_DOWN_POLLS switch on."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

import psycopg
import pytest
import requests
from oidc_consent import confirm_device_code
from oidc_server import free_port, start_oidc_provider
from stack import CLIENT_ID

from tests.e2e.conftest import DEVICE_CODE_TTL

pytestmark = pytest.mark.e2e
SLOW_DOWN_WORKSPACE = "device-slow-down"  # its own workspace: the "demo" one's providers stay as they are
SLOW_DOWN_POLLS = 2
BASE_INTERVAL = 1  # the slow_down provider's `interval`, so that the test takes seconds, not a minute


def _gw(stack, method, path, *, key=None, **kwargs):
    headers = {"Authorization": f"Bearer {key or stack.api_key}"}
    return requests.request(method, stack.gateway_url + path, headers=headers, timeout=30, **kwargs)


def _start(stack, user_id: str, *, provider: str = "local", key: str | None = None) -> dict:
    started = _gw(
        stack,
        "POST",
        "/v1/request-connection",
        key=key,
        json={"user_id": user_id, "provider_name": provider, "scopes": ["openid", "email"], "flow": "device"},
    )
    assert started.status_code == 201, started.text
    return started.json()


def _wait_status(stack, cid: str, until: str, timeout: float, *, key: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = _gw(stack, "GET", f"/v1/check-connection/{cid}", key=key).json()
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


@pytest.fixture(scope="module")
def slow_down_provider(real_stack):
    """A second npm oidc-provider whose first SLOW_DOWN_POLLS polls of every device code answer
    slow_down, registered as "local" in a workspace of its own; yields that workspace's API key."""
    client = {
        "client_id": CLIENT_ID,
        "client_secret": real_stack.client_secret,
        "redirect_uris": [f"{real_stack.broker_url}/auth/callback"],
        "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
    }
    env = {
        "DEVICE_SLOW_DOWN_POLLS": str(SLOW_DOWN_POLLS),
        "DEVICE_POLL_INTERVAL": str(BASE_INTERVAL),
        "DEVICE_CODE_TTL": "120",
    }
    provider = start_oidc_provider(free_port(), [client], extra_env=env)
    try:
        real_stack.manage(
            "broker",
            "provider",
            "upsert",
            "--name",
            "local",
            "--workspace",
            SLOW_DOWN_WORKSPACE,
            "--template",
            "oidc",
            "--display-name",
            "Local OIDC provider (slow_down)",
            "--discovery-url",
            f"{provider.issuer}/.well-known/openid-configuration",
            "--client-id",
            CLIENT_ID,
            f"--client-secret={real_stack.client_secret}",
            "--default-scopes",
            "openid email",
        )
        created = real_stack.manage("gateway", "apikey", "create", "--workspace", SLOW_DOWN_WORKSPACE, "--name", "e2e")
        provider.api_key = created.stdout.strip().splitlines()[-1]
        yield provider
    finally:
        provider.stop()


def _provider_polls(log: str) -> list[tuple[int, datetime, str]]:
    """The slow_down provider's log of device code #1's polls: (number, arrival, answer)."""
    polls = re.findall(r"^device poll (\d+) of device code #1 at (\S+): (\S+)$", log, re.M)
    return [(int(n), datetime.fromisoformat(at), outcome) for n, at, outcome in polls]


def _ms(moment: datetime) -> datetime:
    """Down to the millisecond, the provider log's precision."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def test_device_flow_slow_down_from_the_real_provider(real_stack, slow_down_provider):
    """The provider answers slow_down to the first two polls: the broker's Celery poller adds
    5 s to the connection's interval each time (1 → 6 → 11 s), polls again no sooner than
    that, and the third poll gets the tokens of the code the user had confirmed."""
    key = slow_down_provider.api_key
    begun = time.monotonic()
    body = _start(real_stack, "device-slow", key=key)
    assert body["interval"] == BASE_INTERVAL
    assert body["verification_uri"] == f"{slow_down_provider.issuer}/device"
    cid = body["connection_id"]
    assert _gw(real_stack, "GET", f"/v1/check-connection/{cid}", key=key).json()["status"] == "pending"
    confirm_device_code(body["verification_uri"], body["user_code"], login="erin")

    # The broker's schedule as the database shows it, read until the connection leaves pending.
    # A poll's `_schedule` write sets updated_at to the poll's start and device_next_poll_at to
    # exactly device_interval later; a sweep's claim moves only device_next_poll_at.
    schedules: dict[int, tuple[datetime, datetime]] = {}  # interval -> (poll's start, next poll)
    intervals: list[int] = []
    deadline = time.monotonic() + 60
    with psycopg.connect(real_stack.database_url, autocommit=True) as db:
        while True:
            status, interval, next_poll, updated = db.execute(
                "SELECT status, device_interval, device_next_poll_at, updated_at"
                " FROM broker_app_connection WHERE id = %s",
                (cid,),
            ).fetchone()
            if not intervals or intervals[-1] != interval:
                intervals.append(interval)
            if next_poll is not None and next_poll - updated == timedelta(seconds=interval):
                schedules[interval] = (updated, next_poll)
            if status != "pending" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert status == "active", (status, slow_down_provider.log()[-2000:])
    # At least 1 + 6 + 11 s of intervals; printed for the record (-s or a failure shows it).
    print(f"device flow with {SLOW_DOWN_POLLS} slow_down: active after {time.monotonic() - begun:.1f} s")

    # Exactly 5 s more per slow_down, as the connection's row showed between the polls.
    assert intervals[-SLOW_DOWN_POLLS:] == [6, 11] and set(intervals) <= {1, 6, 11}, intervals
    assert sorted(schedules) == [6, 11], schedules
    polls = _provider_polls(slow_down_provider.log())
    assert [(n, outcome) for n, _at, outcome in polls] == [(1, "slow_down"), (2, "slow_down"), (3, "tokens")]
    arrivals = [at for _n, at, _outcome in polls]
    for (start, next_poll), sent, next_sent in zip(
        (schedules[6], schedules[11]), arrivals[:-1], arrivals[1:], strict=True
    ):
        # The schedule was written by the poll that got slow_down (started before it reached
        # the provider) and the next poll reached the provider no sooner than it said.
        assert _ms(start) <= sent < _ms(start) + timedelta(seconds=5)
        assert next_sent >= _ms(next_poll), (next_sent, next_poll)

    status = _gw(real_stack, "GET", f"/v1/check-connection/{cid}", key=key).json()
    assert status["status"] == "active" and status["account"]["sub"] == "erin"
    token = _gw(real_stack, "GET", f"/v1/token/{cid}", key=key).json()
    assert token["id_token"]
    info = requests.get(
        f"{slow_down_provider.issuer}/me", headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=10
    )
    assert info.status_code == 200 and info.json()["sub"] == "erin"
