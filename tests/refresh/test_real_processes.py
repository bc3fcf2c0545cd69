"""Refresh safety across real processes: gunicorn gateway and broker, two Celery workers
(started through docker/entrypoint.sh), PostgreSQL, Redis, and providers that rotate refresh
tokens and revoke the whole grant when an old one is presented again (the fake provider, and
the npm oidc-provider configured with rotateRefreshToken). See `refresh_stack` in conftest."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests
from fake_provider import hang

from tests.ops.conftest import wait_for

pytestmark = pytest.mark.e2e

# Outcomes that mean the provider's token endpoint was called.
PROVIDER_CALL_OUTCOMES = ("success", "lost_race", "invalid_grant", "transient", "rejected", "invalid_id_token")
QUIET_OUTCOMES = {"success", "coalesced", "skipped"}


def _fifty_mixed_callers(stack, cid: str) -> tuple[list[str], list[str]]:
    """20 gateway POST /v1/refresh, 20 GET /v1/token?auto_refresh=true and 10 Celery refresh
    tasks, shuffled and released at once. Returns (access tokens served over HTTP, task ids)."""
    kinds = ["refresh"] * 20 + ["auto"] * 20 + ["task"] * 10
    random.shuffle(kinds)
    start = threading.Barrier(len(kinds))

    def call(kind: str):
        start.wait()
        if kind == "task":
            return kind, stack.send("refresh_connection", cid)
        if kind == "refresh":
            return kind, stack.gw("POST", f"/v1/refresh/{cid}")
        return kind, stack.gw("GET", f"/v1/token/{cid}", params={"auto_refresh": "true"})

    with ThreadPoolExecutor(len(kinds)) as pool:
        results = list(pool.map(call, kinds))
    responses = [r for kind, r in results if kind != "task"]
    bad = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not bad, bad
    return [r.json()["access_token"] for r in responses], [r for kind, r in results if kind == "task"]


def _assert_one_shared_refresh(
    stack, cid: str, provider: str, before: dict, served: list[str], task_ids: list[str]
) -> str:
    outcomes = stack.wait_tasks(task_ids)
    assert set(outcomes.values()) <= QUIET_OUTCOMES, outcomes
    counts = stack.outcomes(provider)
    assert sum(counts.get(o, 0) for o in PROVIDER_CALL_OUTCOMES) == 1 and counts["success"] == 1, counts
    assert set(counts) <= QUIET_OUTCOMES, counts  # no lock_timeout, lost_race, invalid_grant …
    current = stack.gw("GET", f"/v1/token/{cid}").json()["access_token"]
    assert set(served) == {current}, f"{len(set(served))} different tokens served"
    after = stack.row(cid)
    assert current != stack.decrypt_value(before, cid, "access_token")
    assert after["status"] == "active" and after["token_version"] == before["token_version"] + 1
    assert stack.gw("GET", f"/v1/check-connection/{cid}").json()["status"] == "active"
    return current


def test_50_concurrent_callers_one_refresh_at_a_provider_that_revokes_on_reuse(real, fake_provider):
    cid = real.connect_fake(fake_provider)
    real.age(cid)
    before = real.row(cid)
    fake_provider.refresh_delay = 1.0  # the refresh is in flight while the callers arrive
    served, task_ids = _fifty_mixed_callers(real, cid)
    _assert_one_shared_refresh(real, cid, "fake", before, served, task_ids)
    assert fake_provider.refresh_calls == 1
    assert not any(grant.revoked for grant in fake_provider.grants.values())
    assert fake_provider.is_live(real.decrypt(cid, "refresh_token"))


def test_50_concurrent_callers_one_refresh_at_the_real_oidc_provider(real):
    cid = real.connect(real.api_key, user_id="user-concurrent", login="dana")
    real.age(cid)
    before = real.row(cid)
    served, task_ids = _fifty_mixed_callers(real, cid)
    token = _assert_one_shared_refresh(real, cid, "local", before, served, task_ids)
    userinfo = requests.get(f"{real.oidc.issuer}/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert userinfo.status_code == 200 and userinfo.json()["sub"] == "dana"
    # oidc-provider revokes the grant if a rotated refresh token is ever presented again:
    # a later refresh works only if the one rotated by the single refresh above was stored.
    real.sql("UPDATE broker_app_connection SET last_refreshed_at = now() - interval '1 minute' WHERE id = %s", [cid])
    again = real.gw("POST", f"/v1/refresh/{cid}")
    assert again.status_code == 200, again.text
    assert again.json()["access_token"] != token
    assert real.outcomes("local")["success"] == 2


def test_two_workers_sweeping_at_once_refresh_every_connection_once(real, fake_provider, monkeypatch):
    count = 400
    grants = real.seed_due(fake_provider, count)
    owner = {id(grant): cid for cid, grant in grants.items()}
    calls: Counter[str] = Counter()
    token_endpoint = fake_provider.token_endpoint

    def counting(form):
        if form.get("grant_type") == "refresh_token":
            grant = fake_provider.grants.get(form.get("refresh_token", ""))
            with fake_provider.lock:
                calls[owner.get(id(grant), "unknown")] += 1
        return token_endpoint(form)

    monkeypatch.setattr(fake_provider, "token_endpoint", counting)
    sweeps = [real.send("refresh_sweep", queue=name) for name in ("worker", "worker2")]
    ids = list(grants)
    wait_for(
        lambda: (
            real.sql("SELECT count(*) FROM broker_app_connection WHERE id = ANY(%s) AND token_version = 2", [ids])[0][0]
            == count
        ),
        f"{count} refreshes",
        timeout=90,
        interval=0.5,
    )
    queued = real.wait_tasks(sweeps)
    per_sweep = [int(queued[task_id]) for task_id in sweeps]
    # Both workers swept (the batches interleaved) and between them queued each connection once.
    assert all(n > 0 for n in per_sweep) and sum(per_sweep) == count, per_sweep
    time.sleep(1)  # a duplicate task, had one been queued, would have run by now
    assert set(calls) == set(ids) and set(calls.values()) == {1}, Counter(calls.values())
    assert not any(grant.revoked for grant in grants.values())
    statuses = real.sql("SELECT status, count(*) FROM broker_app_connection WHERE id = ANY(%s) GROUP BY status", [ids])
    assert statuses == [("active", count)]
    counts = real.outcomes("fake")
    assert counts.get("success") == count and not set(counts) - QUIET_OUTCOMES, counts


def _row_locked(stack, cid: str) -> bool:
    try:
        with psycopg.connect(stack.database_url) as conn:
            conn.execute("SET lock_timeout = '100ms'")
            conn.execute("SELECT 1 FROM broker_app_connection WHERE id = %s FOR UPDATE", [cid])
        return False
    except psycopg.errors.LockNotAvailable:
        return True


def test_a_worker_killed_mid_refresh_leaves_no_lock_and_the_next_attempt_succeeds(real, fake_provider):
    cid = real.connect_fake(fake_provider)
    real.age(cid)
    before = real.row(cid)
    fake_provider.script(hang(15))  # the provider takes the call and never answers in time
    real.send("refresh_connection", cid, queue="worker")
    wait_for(lambda: fake_provider.refresh_calls == 1, "the refresh to reach the provider", timeout=20)
    assert _row_locked(real, cid), "the worker should hold the row lock during the provider call"
    real.kill_worker("worker")
    started = time.monotonic()
    wait_for(lambda: not _row_locked(real, cid), "PostgreSQL to drop the dead worker's lock", timeout=10)
    assert time.monotonic() - started < 5
    assert real.row(cid)["token_version"] == before["token_version"]  # nothing half-written

    # The next attempt, on the surviving worker, refreshes with the stored refresh token.
    retried = real.send("refresh_connection", cid, queue="worker2")
    assert real.wait_tasks([retried]) == {retried: "success"}
    assert fake_provider.refresh_calls == 2
    after = real.row(cid)
    assert after["status"] == "active" and after["token_version"] == before["token_version"] + 1
    assert fake_provider.is_live(real.decrypt(cid, "refresh_token"))
    served = real.gw("GET", f"/v1/token/{cid}", params={"auto_refresh": "true"}).json()["access_token"]
    assert served == real.decrypt(cid, "access_token") != real.decrypt_value(before, cid, "access_token")
