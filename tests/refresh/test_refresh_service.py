"""The refresh service through every path that uses it (gateway refresh and auto_refresh,
the broker's refresh endpoint, the admin action, the sweep task, `refresh_due`), and every
provider answer issue 3 lists: outages, 429, timeouts, invalid_grant, lost races, odd token
responses, a changed id_token. Gateway and broker talk over real HTTP (the `stack` live
server); the fake provider plays the provider; PostgreSQL and Redis are real."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import InterfaceError, InternalError, OperationalError, close_old_connections, transaction
from django.db import connection as db_connection
from django.utils import timezone
from fake_provider import hang, respond

from broker_app import crypto
from broker_app.audit import SYSTEM
from broker_app.models import AuditEvent, Connection
from broker_app.oauth.errors import PermanentOAuthError
from broker_app.services import refresh, refresh_policy
from broker_app.services.sweep import due_queryset, refresh_one, sweep_due
from tests.refresh.conftest import age, outcome_counts

pytestmark = pytest.mark.django_db(transaction=True)
TOKEN_FIELDS = (
    "access_token_enc",
    "refresh_token_enc",
    "id_token_enc",
    "expires_at",
    "token_version",
    "token_type",
    "status",
)


@contextlib.contextmanager
def _row_locked_elsewhere(connection_id: str):
    """Another database session holds the connection's row lock for the duration."""
    locked, release = threading.Event(), threading.Event()

    def hold():
        with transaction.atomic():
            Connection.objects.select_for_update().get(pk=connection_id)
            locked.set()
            release.wait(10)
        db_connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(5)
        yield
    finally:
        release.set()
        holder.join()


def _tokens_of(cid: str) -> dict:
    return Connection.objects.filter(pk=cid).values(*TOKEN_FIELDS).get()


def _stored_refresh_token(cid: str) -> str:
    row = Connection.objects.get(pk=cid)
    return crypto.decrypt(row.refresh_token_enc, aad=row.aad("refresh_token"))


class _Task:
    """Stands in for Celery's bound task in unit calls of the task body: records retries."""

    class Retry(Exception):
        pass

    def __init__(self):
        self.retries: list[float] = []

    def retry(self, countdown: float, **_options):
        self.retries.append(countdown)
        return self.Retry()


# -- every path goes through the one service ----------------------------------------------------


def _via_gateway_refresh(stack, key, cid):
    response = stack.call("POST", f"/v1/refresh/{cid}", key)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def _via_auto_refresh(stack, key, cid):
    response = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def _via_broker_endpoint(stack, key, cid):
    response = stack.broker("POST", f"/connections/{cid}/refresh")
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def _via_admin_action(stack, key, cid):
    from django.contrib.auth.models import User
    from django.test import Client

    admin = User.objects.create_superuser("ops", "ops@example.test", "pw-not-used")
    client = Client()
    client.force_login(admin)
    response = client.post(
        "/admin/broker_app/connection/", {"action": "refresh_now", "_selected_action": [cid]}, follow=True
    )
    assert response.status_code == 200
    assert f"{cid}: refreshed" in response.content.decode()
    return None


def _via_task(stack, key, cid):
    assert refresh_one(task=_Task(), connection_id=cid) == "success"
    return None


def _via_command(stack, key, cid):
    out = io.StringIO()
    call_command("refresh_due", stdout=out, stderr=io.StringIO())
    assert "due: 1; success: 1" in out.getvalue()
    return None


@pytest.mark.parametrize(
    "path",
    [_via_gateway_refresh, _via_auto_refresh, _via_broker_endpoint, _via_admin_action, _via_task, _via_command],
    ids=lambda f: f.__name__[5:],
)
def test_every_path_refreshes_once_through_the_service(stack, fake_provider, active, path):
    key, cid = active
    age(cid)
    before = _tokens_of(cid)
    served = path(stack, key, cid)
    after = _tokens_of(cid)
    assert fake_provider.refresh_calls == 1
    assert outcome_counts() == {"success": 1}
    assert (
        after["token_version"] == before["token_version"] + 1
        and after["access_token_enc"] != before["access_token_enc"]
    )
    current = stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"]
    assert served in (None, current)
    # The rotated refresh token is the one stored: the provider still accepts it.
    assert fake_provider.is_live(_stored_refresh_token(cid))
    assert AuditEvent.objects.filter(connection_id=cid, action="token.refreshed").count() == 1


# -- single flight -----------------------------------------------------------------------------


def test_concurrent_callers_in_process_share_one_refresh(stack, fake_provider, active, settings):
    key, cid = active
    # All may wait, at the gateway and the broker (the bounded case: test_bulkheads.py).
    settings.REFRESH_MAX_WAITERS = 100
    settings.GATEWAY_SLOW_CALLS_PER_KEY = settings.GATEWAY_SLOW_CALLS_PER_WORKSPACE = 0
    age(cid)
    fake_provider.refresh_delay = 0.5

    def call(i):
        if i % 2:
            return stack.call("POST", f"/v1/refresh/{cid}", key)
        return stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(call, range(12)))
    assert [r.status_code for r in responses] == [200] * 12
    assert len({r.json()["access_token"] for r in responses}) == 1
    assert fake_provider.refresh_calls == 1
    counts = outcome_counts()
    assert counts["success"] == 1 and sum(counts.values()) == 12, counts
    assert Connection.objects.get(pk=cid).status == "active"


def test_forced_refresh_right_after_another_returns_its_result(stack, fake_provider, active):
    key, cid = active
    first = _via_gateway_refresh(stack, key, cid)
    assert _via_gateway_refresh(stack, key, cid) == first
    assert fake_provider.refresh_calls == 1 and outcome_counts() == {"success": 1, "coalesced": 1}
    Connection.objects.filter(pk=cid).update(
        last_refreshed_at=timezone.now() - timedelta(seconds=refresh_policy.COALESCE_SECONDS + 1)
    )
    assert _via_gateway_refresh(stack, key, cid) != first
    assert fake_provider.refresh_calls == 2


def test_a_waiter_that_times_out_on_the_lock_gets_503_and_no_provider_call(stack, fake_provider, active, settings):
    key, cid = active
    settings.REFRESH_LOCK_TIMEOUT_SECONDS = 1
    with _row_locked_elsewhere(cid):
        started = time.monotonic()
        response = stack.call("POST", f"/v1/refresh/{cid}", key)
        assert time.monotonic() - started < 5
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert response.json()["error"] == "provider_unavailable"
        assert "in progress" in response.json()["message"]
    assert fake_provider.refresh_calls == 0 and outcome_counts() == {"lock_timeout": 1}
    assert _via_gateway_refresh(stack, key, cid)


def test_a_hung_lock_holder_loses_its_session_and_the_lock(stack, fake_provider, active, settings):
    """A process stuck mid-refresh (SIGSTOP, partition) cannot hold the row forever."""
    key, cid = active
    settings.REFRESH_HOLD_SECONDS = 1
    outcome: dict[str, object] = {}
    locked = threading.Event()

    def hung():
        try:
            with transaction.atomic():
                refresh.lock_row(cid)
                locked.set()
                time.sleep(3)  # hangs while "calling the provider"
                Connection.objects.filter(pk=cid).update(error="should never commit")
        except (OperationalError, InterfaceError, InternalError) as exc:
            outcome["error"] = exc
        finally:
            close_old_connections()
            db_connection.close()

    thread = threading.Thread(target=hung)
    thread.start()
    assert locked.wait(5)
    started = time.monotonic()
    token = _via_gateway_refresh(stack, key, cid)  # waits ~1 s for PostgreSQL to end the hung session
    assert time.monotonic() - started < 5 and token
    thread.join()
    assert "error" in outcome
    assert Connection.objects.get(pk=cid).error == ""


# -- rotation safety -----------------------------------------------------------------------------


def test_rotated_refresh_token_is_stored_and_the_old_one_never_reused(stack, fake_provider, active):
    key, cid = active
    first_rt = _stored_refresh_token(cid)
    _via_gateway_refresh(stack, key, cid)
    second_rt = _stored_refresh_token(cid)
    assert second_rt != first_rt and fake_provider.is_live(second_rt) and not fake_provider.is_live(first_rt)
    Connection.objects.filter(pk=cid).update(last_refreshed_at=timezone.now() - timedelta(seconds=60))
    _via_gateway_refresh(stack, key, cid)
    assert fake_provider.refresh_calls == 2 and fake_provider.is_live(_stored_refresh_token(cid))
    assert not any(grant.revoked for grant in fake_provider.grants.values())


def test_invalid_grant_after_another_refresh_stored_new_tokens_is_a_lost_race(
    stack, fake_provider, active, monkeypatch
):
    """The row is re-read after invalid_grant: when its refresh token changed meanwhile, the
    stored tokens are served and the connection stays active. (Under the row lock this can
    only happen through a writer that did not take the lock; the check stays as a guard.)"""
    key, cid = active

    def refresh_meanwhile_then_invalid_grant(spec, hooks, *, refresh_token):
        row = Connection.objects.get(pk=cid)
        Connection.objects.filter(pk=cid).update(
            refresh_token_enc=crypto.encrypt("rt-stored-by-the-winner", aad=row.aad("refresh_token")),
            access_token_enc=crypto.encrypt("at-stored-by-the-winner", aad=row.aad("access_token")),
            token_version=row.token_version + 1,
        )
        raise PermanentOAuthError("invalid_grant", "refresh token already used")

    monkeypatch.setattr(refresh.client, "refresh", refresh_meanwhile_then_invalid_grant)
    view = refresh.token_refresh(connection_id=cid, workspace=None, actor=SYSTEM)
    assert view.access_token == "at-stored-by-the-winner"
    row = Connection.objects.get(pk=cid)
    assert row.status == "active" and row.error == ""
    assert outcome_counts() == {"lost_race": 1}


def test_invalid_grant_fails_the_connection_and_the_next_token_call_says_reconnect(stack, fake_provider, active):
    key, cid = active
    before = _tokens_of(cid)
    fake_provider.script(respond(400, {"error": "invalid_grant", "error_description": "Token has been revoked."}))
    response = stack.call("POST", f"/v1/refresh/{cid}", key)
    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "connection_not_active" and body["reconnect_required"] is True
    assert "reconnect" in body["message"] and "invalid_grant" in body["message"]
    status = stack.call("GET", f"/v1/check-connection/{cid}", key).json()
    assert status["status"] == "failed" and status["error"] == "invalid_grant"
    token = stack.call("GET", f"/v1/token/{cid}", key)
    assert token.status_code == 409 and token.json()["reconnect_required"] is True
    assert "the user must reconnect" in token.json()["message"]
    assert stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key).status_code == 409
    after = _tokens_of(cid)
    assert {k: after[k] for k in TOKEN_FIELDS if k != "status"} == {k: before[k] for k in TOKEN_FIELDS if k != "status"}
    assert outcome_counts() == {"invalid_grant": 1}
    assert not due_queryset(now=timezone.now(), window_seconds=10**6).filter(pk=cid).exists()
    assert fake_provider.refresh_calls == 1


def test_invalid_grant_in_the_sweep_task_fails_the_connection(stack, fake_provider, active):
    key, cid = active
    age(cid)
    fake_provider.script(respond(400, {"error": "invalid_grant"}))
    assert refresh_one(task=_Task(), connection_id=cid) == "invalid_grant"
    assert Connection.objects.get(pk=cid).status == "failed"
    assert stack.call("GET", f"/v1/token/{cid}", key).status_code == 409


# -- transient failures --------------------------------------------------------------------------

TRANSIENT = {
    "500": (lambda: respond(500, {"error": "server_error"}), 5),
    "503-html": (lambda: respond(503, {}, {"Content-Type": "text/html"}), 5),
    "429-retry-after": (lambda: respond(429, {"error": "slow_down"}, {"Retry-After": "17"}), 17),
    "timeout": (lambda: hang(4), 5),  # PROVIDER_HTTP_TIMEOUT is 3 s in the test settings
    "hang-up": (lambda: lambda form: (-1, {}, {}), 5),
}


@pytest.mark.parametrize("kind", TRANSIENT)
def test_transient_failure_keeps_tokens_and_is_retried_later(stack, fake_provider, active, kind):
    key, cid = active
    age(cid)
    answer, retry_after = TRANSIENT[kind]
    before = _tokens_of(cid)
    fake_provider.script(answer())
    response = stack.call("POST", f"/v1/refresh/{cid}", key)
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "provider_unavailable" and "unchanged" in response.json()["message"]
    assert int(response.headers["Retry-After"]) == retry_after
    assert _tokens_of(cid) == before
    row = Connection.objects.get(pk=cid)
    assert row.status == "active" and row.refresh_failures == 1
    assert row.next_refresh_attempt_at >= timezone.now() + timedelta(seconds=min(retry_after, 15) - 1)
    assert outcome_counts() == {"transient": 1}
    # The sweep leaves it alone during the backoff, then queues it again.
    assert not due_queryset(now=timezone.now(), window_seconds=600).filter(pk=cid).exists()
    Connection.objects.filter(pk=cid).update(next_refresh_attempt_at=timezone.now() - timedelta(seconds=1))
    assert sweep_due(enqueue=False).connection_ids == [cid]
    assert refresh_one(task=_Task(), connection_id=cid) == "success"
    row = Connection.objects.get(pk=cid)
    assert row.refresh_failures == 0 and row.token_version == before["token_version"] + 1
    assert fake_provider.is_live(_stored_refresh_token(cid))


def test_backoff_grows_exponentially_with_jitter():
    for failures, low, high in ((1, 15, 30), (2, 30, 60), (3, 60, 120), (8, 1800, 3600), (30, 1800, 3600)):
        delays = [refresh_policy.backoff_delay(failures).total_seconds() for _ in range(50)]
        assert all(low <= d <= high for d in delays), (failures, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered
    assert refresh_policy.backoff_delay(1, retry_after=120).total_seconds() >= 120


def test_transient_failures_never_fail_the_connection(stack, fake_provider, active):
    key, cid = active
    age(cid)
    for _ in range(6):
        fake_provider.script(respond(502, {}))
        assert refresh_one(task=_Task(), connection_id=cid) == "transient"
        Connection.objects.filter(pk=cid).update(next_refresh_attempt_at=None)
    row = Connection.objects.get(pk=cid)
    assert row.status == "active" and row.refresh_failures == 6


def test_auto_refresh_serves_a_still_valid_token_when_the_provider_is_down(stack, fake_provider, active):
    key, cid = active
    current = stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"]
    age(cid, remaining=30)
    fake_provider.script(respond(500, {}))
    response = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key)
    assert response.status_code == 200 and response.json()["access_token"] == current
    age(cid, remaining=-5)
    fake_provider.script(respond(500, {}))
    expired = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key)
    assert expired.status_code == 503 and expired.headers["Retry-After"]
    assert Connection.objects.get(pk=cid).status == "active"


# -- odd but valid token responses ---------------------------------------------------------------


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer", "bEaReR", None])
def test_response_without_refresh_token_or_expiry_keeps_the_refresh_token(stack, fake_provider, active, token_type):
    key, cid = active
    old_rt = _stored_refresh_token(cid)
    body = {"access_token": "at-" + "n" * 30}
    if token_type:
        body["token_type"] = token_type
    fake_provider.script(respond(200, body))
    response = stack.call("POST", f"/v1/refresh/{cid}", key)
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer" and response.json()["expires_at"] is None
    assert response.json()["access_token"] == body["access_token"]
    assert _stored_refresh_token(cid) == old_rt
    row = Connection.objects.get(pk=cid)
    assert row.expires_at is None and row.next_refresh_attempt_at is None
    # No expiry: never due for the sweep, never refreshed by auto_refresh (no refresh loop).
    assert not due_queryset(now=timezone.now(), window_seconds=10**7).filter(pk=cid).exists()
    again = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=86400", key)
    assert again.json()["access_token"] == body["access_token"] and fake_provider.refresh_calls == 1
    # The kept refresh token still works.
    Connection.objects.filter(pk=cid).update(last_refreshed_at=timezone.now() - timedelta(minutes=1))
    assert _via_gateway_refresh(stack, key, cid) != body["access_token"]


@pytest.mark.parametrize(
    "rotated, expires_in",
    [(False, 1800), (True, None)],
    ids=["expiry-without-refresh-token", "refresh-token-without-expiry"],
)
def test_response_missing_one_field_keeps_or_rotates_what_it_says(stack, fake_provider, active, rotated, expires_in):
    key, cid = active
    old_rt = _stored_refresh_token(cid)
    body = {"access_token": "at-" + "m" * 30, "token_type": "BeArEr"}
    if rotated:
        body["refresh_token"] = "rt-" + "q" * 30
    if expires_in:
        body["expires_in"] = expires_in
    fake_provider.script(respond(200, body))
    response = stack.call("POST", f"/v1/refresh/{cid}", key)
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer" and response.json()["access_token"] == body["access_token"]
    assert _stored_refresh_token(cid) == (body["refresh_token"] if rotated else old_rt)
    row = Connection.objects.get(pk=cid)
    assert row.status == "active" and row.refresh_failures == 0
    if expires_in:
        remaining = (row.expires_at - timezone.now()).total_seconds()
        assert expires_in - 30 < remaining <= expires_in
        # Once the new token is read (in use), the sweep picks it up again one window
        # (600 s) before it expires.
        assert stack.call("GET", f"/v1/token/{cid}", key).status_code == 200
        row.refresh_from_db()
        assert row.next_refresh_attempt_at == row.expires_at - timedelta(seconds=600)
    else:
        assert row.expires_at is None and row.next_refresh_attempt_at is None
        assert response.json()["expires_at"] is None


def test_refreshed_id_token_with_the_same_identity_is_stored(stack, fake_provider, active):
    key, cid = active
    id_token = fake_provider.id_token(sub="user-1", email="new@example.test")
    fake_provider.script(
        respond(
            200,
            {
                "access_token": "at-" + "i" * 30,
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": "rt-" + "r" * 30,
                "id_token": id_token,
            },
        )
    )
    response = stack.call("POST", f"/v1/refresh/{cid}", key)
    assert response.status_code == 200 and response.json()["id_token"] == id_token


@pytest.mark.parametrize(
    "claims",
    [{"sub": "someone-else"}, {"iss": "https://evil.example"}, {"aud": "another-client"}],
    ids=["sub", "iss", "aud"],
)
def test_refreshed_id_token_for_another_identity_fails_the_connection(stack, fake_provider, active, claims):
    key, cid = active
    before = _tokens_of(cid)
    fake_provider.script(
        respond(
            200,
            {
                "access_token": "at-" + "x" * 30,
                "token_type": "Bearer",
                "expires_in": 3600,
                "id_token": fake_provider.id_token(**claims),
            },
        )
    )
    response = stack.call("POST", f"/v1/refresh/{cid}", key)
    assert response.status_code == 409 and response.json()["reconnect_required"] is True
    row = Connection.objects.get(pk=cid)
    assert row.status == "failed" and row.error == "invalid_id_token"
    assert row.access_token_enc == before["access_token_enc"]  # the other identity's token is never stored
    assert outcome_counts() == {"invalid_id_token": 1}


# -- the sweep's selection -----------------------------------------------------------------------


def _rows_expiring(provider, expiries, **fields) -> list[str]:
    fields = {"access_token_enc": "v1.k.a", "refresh_token_enc": "v1.k.r", **fields}
    rows = [
        Connection(
            workspace="ws-a",
            user_id=f"user-{n}",
            provider=provider,
            status="active",
            return_url="https://app.example.com/r",
            expires_at=expires_at,
            **fields,
        )
        for n, expires_at in enumerate(expiries)
    ]
    Connection.objects.bulk_create(rows)
    return [row.id for row in rows]


def test_sweep_batches_take_every_due_row_once_in_expiry_order(fake_provider_row):
    now = timezone.now()
    tied = now + timedelta(seconds=100)  # 15 rows expire at the same instant, across batch boundaries
    due = _rows_expiring(fake_provider_row, [now + timedelta(seconds=s) for s in range(10, 200, 10)] + [tied] * 15)
    _rows_expiring(fake_provider_row, [now + timedelta(hours=2)] * 3)  # outside the window
    _rows_expiring(fake_provider_row, [tied] * 2, next_refresh_attempt_at=now + timedelta(minutes=5))  # backing off
    _rows_expiring(fake_provider_row, [tied], refresh_token_enc="")  # cannot be refreshed
    _rows_expiring(fake_provider_row, [None])  # no expiry: never swept

    dry = sweep_due(dry_run=True, batch_size=4)
    assert sorted(dry.connection_ids) == sorted(due) and dry.batches == 9
    expiries = dict(Connection.objects.filter(pk__in=due).values_list("id", "expires_at"))
    assert [expiries[cid] for cid in dry.connection_ids] == sorted(expiries.values())
    claimed = sweep_due(enqueue=False, batch_size=4)
    assert sorted(claimed.connection_ids) == sorted(due) and claimed.queued == 0
    assert sweep_due(enqueue=False, batch_size=4).selected == 0  # claimed: no second sweep takes them
    assert sweep_due(dry_run=True, limit=5).selected == 0


def test_sweep_skips_a_row_locked_elsewhere_and_takes_it_next_time(fake_provider_row):
    now = timezone.now()
    ids = _rows_expiring(fake_provider_row, [now + timedelta(seconds=s) for s in (30, 60, 90)])
    with _row_locked_elsewhere(ids[1]):  # e.g. a refresh in progress
        assert sweep_due(enqueue=False, batch_size=2).connection_ids == [ids[0], ids[2]]
    assert sweep_due(enqueue=False).connection_ids == [ids[1]]


# -- metrics -------------------------------------------------------------------------------------


def test_metrics_endpoint_counts_outcomes_per_provider(stack, fake_provider, active):
    key, cid = active
    _via_gateway_refresh(stack, key, cid)
    _via_gateway_refresh(stack, key, cid)  # coalesced
    Connection.objects.filter(pk=cid).update(last_refreshed_at=timezone.now() - timedelta(minutes=1))
    fake_provider.script(respond(503, {}))
    assert stack.call("POST", f"/v1/refresh/{cid}", key).status_code == 503
    fake_provider.script(respond(400, {"error": "invalid_grant"}))
    assert stack.call("POST", f"/v1/refresh/{cid}", key).status_code == 409
    text = stack.broker("GET", "/metrics").text
    for outcome in ("success", "coalesced", "transient", "invalid_grant"):
        assert f'dromos_refresh_total{{outcome="{outcome}",provider="fake"}} 1.0' in text, text[-3000:]
    assert text.count("# TYPE dromos_refresh_total counter") == 1
