"""Fixtures of the refresh suite.

In-process tests (`stack`, `active`): the root conftest empties the whole Redis database
before every test; here only the Django cache's keys and this suite's own keys (metrics,
provider slots) are removed, which is all these tests need.

Real-process tests (`refresh_stack`, `real`): see the section at the end."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import requests
from django.utils import timezone

from broker_app.models import Connection
from tests.conftest import connect
from tests.ops.conftest import (
    ENTRYPOINT,
    ROOT,
    EntrypointStack,
    entrypoint_env,
    reset_postgres_database,
    sibling_database,
    wait_for,
)


@pytest.fixture(autouse=True)
def _clear_process_caches(settings):
    from gateway_app import keys

    keys.cache_clear()
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    for pattern in (":*", "dromos:*"):
        keys = list(client.scan_iter(pattern, count=1000))
        if keys:
            client.delete(*keys)
    yield


def age(connection_id: str, *, remaining: int = 30, lifetime: int = 3600, read: bool = True) -> None:
    """Make the stored token look `lifetime` seconds old with `remaining` seconds left
    (as if time had passed): auto_refresh and the sweep then see it as due. `read`: the
    token was read meanwhile (a connection in use, which the usage-aware sweep refreshes
    ahead of expiry); read=False: nobody read it (an idle connection)."""
    now = timezone.now()
    issued = now + timedelta(seconds=remaining - lifetime)
    Connection.objects.filter(pk=connection_id).update(
        expires_at=now + timedelta(seconds=remaining),
        last_refreshed_at=issued,
        last_read_at=issued + timedelta(seconds=1) if read else None,
        next_refresh_attempt_at=None,
    )


def outcome_counts(provider: str = "fake") -> dict[str, int]:
    from broker_app.metrics import REFRESH_OUTCOMES

    return {
        outcome: int(value)
        for (name, outcome), value in REFRESH_OUTCOMES.values().items()
        if name == provider and value
    }


@pytest.fixture
def active(stack, fake_provider, fake_provider_row):
    """(key, connection id) of an active connection to the fake provider."""
    key = stack.key()
    return key, connect(stack, fake_provider, key)


# -- real processes ------------------------------------------------------------------------------
#
# `refresh_stack`: gateway and broker (granian) and TWO Celery workers, each started through
# docker/entrypoint.sh exactly as the image starts them (tests/ops' EntrypointStack), plus the
# npm oidc-provider (provider `local`, rotating refresh tokens, grant revoked on reuse) and the
# hand-written fake provider registered as provider `fake`. Its own PostgreSQL database and
# its own Redis database (Celery queues included), so no other suite's worker takes its tasks.

WORKERS = ("worker", "worker2")
RETURN_URL = "http://127.0.0.1:1/oauth/return"  # nothing listens: the browser would stop there


def _stack_redis_url() -> str:
    """A Redis database of its own (Celery queues included): the one of this xdist worker's tests
    minus 8 (15 → 7, 14 → 6), or REFRESH_STACK_REDIS_URL."""
    from django.conf import settings

    explicit = os.environ.get("REFRESH_STACK_REDIS_URL")
    if explicit:
        return explicit
    head, number = settings.REDIS_URL.rsplit("/", 1)
    return f"{head}/{(int(number) - 8) % 16}"


class RefreshStack(EntrypointStack):
    """EntrypointStack with two named Celery workers, each also consuming its own queue
    (named after it) so a test can hand a task to one worker in particular."""

    def _spawn(self, name: str, args: list[str], role: str) -> None:
        if name == "worker":
            for worker in WORKERS:
                self.start_worker(worker)
            return
        super()._spawn(name, args, role)

    def start_worker(self, name: str) -> None:
        env = entrypoint_env(self.env, self.workdir, name)
        env.update(CELERY_CONCURRENCY="2")
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.processes[name] = subprocess.Popen(
            [str(ENTRYPOINT), "worker", "--hostname", f"{name}@%h", "--queues", f"celery,{name}"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's main process and its pool children at once."""
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    # -- Celery from the test process --------------------------------------------------------
    @property
    def celery_app(self):
        if getattr(self, "_celery", None) is None:
            from celery import Celery

            self._celery = Celery("refresh-tests", broker=self.redis_url, set_as_current=False)
        return self._celery

    def wait_workers(self, names=WORKERS, timeout: float = 60) -> None:
        def ready():
            replies = self.celery_app.control.ping(timeout=0.5) or []
            alive = {name.split("@")[0] for reply in replies for name in reply}
            return alive >= set(names)

        wait_for(ready, f"Celery workers {names}", timeout, interval=0.5)

    def send(self, task: str, *args, queue: str = "celery") -> str:
        return self.celery_app.send_task(f"broker_app.tasks.{task}", args=args, queue=queue).id

    def task_results(self, task_ids) -> dict[str, str]:
        """Return values of the given tasks that finished, read from the workers' JSON logs."""
        wanted, found = set(task_ids), {}
        for name in WORKERS:
            for line in self.log(name).splitlines():
                if '"celery.app.trace"' not in line or "succeeded" not in line:
                    continue
                msg = json.loads(line)["msg"]  # Task name[id] succeeded in 0.01s: 'outcome'
                task_id = msg.split("[", 1)[1].split("]", 1)[0]
                if task_id in wanted:
                    found[task_id] = msg.rsplit(": ", 1)[1].strip("'")
        return found

    def wait_tasks(self, task_ids, timeout: float = 30) -> dict[str, str]:
        def finished():
            results = self.task_results(task_ids)
            return results if len(results) == len(set(task_ids)) else None

        return wait_for(finished, f"{len(task_ids)} tasks", timeout)

    # -- the stack's database ----------------------------------------------------------------
    def sql(self, query: str, params=None) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def age(self, connection_id: str, *, remaining: int = 30, lifetime: int = 3600) -> None:
        """As tests/refresh/conftest.py's age() (read since: in use), in the stack's database."""
        self.sql(
            "UPDATE broker_app_connection SET expires_at = now() + make_interval(secs => %s), "
            "last_refreshed_at = now() + make_interval(secs => %s), "
            "last_read_at = now() + make_interval(secs => %s), next_refresh_attempt_at = NULL "
            "WHERE id = %s",
            [remaining, remaining - lifetime, remaining - lifetime + 1, connection_id],
        )

    def row(self, connection_id: str) -> dict:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute("SELECT * FROM broker_app_connection WHERE id = %s", [connection_id])
            names = [column.name for column in cursor.description]
            return dict(zip(names, cursor.fetchone(), strict=True))

    def decrypt_value(self, row: dict, connection_id: str, field: str) -> str:
        from broker_app.crypto import KeyRing, parse_keys

        ring = KeyRing(parse_keys(self.env["TOKEN_ENCRYPTION_KEYS"]))
        return ring.decrypt(row[f"{field}_enc"], aad=f"{connection_id}:{field}")

    def decrypt(self, connection_id: str, field: str) -> str:
        """A token as stored now (decrypted with the stack's key)."""
        return self.decrypt_value(self.row(connection_id), connection_id, field)

    def outcomes(self, provider: str) -> dict[str, int]:
        """Refresh outcome counters summed over every process (the shared Redis hash)."""
        import redis

        stored = redis.Redis.from_url(self.redis_url).hgetall("dromos:metrics:refresh_total")
        counts = {}
        for labels, value in stored.items():
            name, outcome = labels.decode().split("|")
            if name == provider and int(value):
                counts[outcome] = int(value)
        return counts

    def reset_counters(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        for key in client.scan_iter("dromos:*", count=1000):
            client.delete(key)

    # -- connections -------------------------------------------------------------------------
    def connect_fake(self, fake, *, user_id: str = "user-1") -> str:
        """The consent flow against the fake provider, through the real gateway and broker."""
        started = self.gw(
            "POST",
            "/v1/request-connection",
            json={"user_id": user_id, "provider_name": "fake", "scopes": ["openid", "email"], "return_url": RETURN_URL},
        )
        assert started.status_code == 201, started.text
        params = {k: v[0] for k, v in parse_qs(urlsplit(started.json()["authUrl"]).query).items()}
        code = fake.issue_code(code_challenge=params["code_challenge"], nonce=params.get("nonce"))
        callback = requests.get(
            f"{self.broker_url}/auth/callback",
            allow_redirects=False,
            timeout=30,
            params={"code": code, "state": params["state"], "iss": fake.issuer},
        )
        assert callback.status_code == 302 and "status=success" in callback.headers["Location"], callback.text
        return started.json()["connection_id"]

    def seed_due(self, fake, count: int) -> dict[str, object]:
        """`count` active connections to the fake provider whose tokens expire in 60 s, written
        straight into the database (encrypted exactly as the broker stores them) with a live
        grant each at the fake provider. Returns {connection id: grant}."""
        from fake_provider import Grant

        from broker_app.crypto import KeyRing, parse_keys

        ring = KeyRing(parse_keys(self.env["TOKEN_ENCRYPTION_KEYS"]))
        ((provider_id,),) = self.sql("SELECT id FROM broker_app_provider WHERE name = 'fake'")
        rows, grants = [], {}
        for n in range(count):
            cid = "c_" + secrets.token_urlsafe(18)
            refresh_token = "rt-" + secrets.token_urlsafe(24)
            grant = Grant(refresh_token=refresh_token, sub=f"seeded-{n}")
            with fake.lock:
                fake.grants[refresh_token] = grant
            grants[cid] = grant
            rows.append(
                (
                    cid,
                    "demo",
                    f"user-{n}",
                    provider_id,
                    "active",
                    json.dumps(["openid"]),
                    json.dumps(["openid"]),
                    "{}",
                    RETURN_URL,
                    "",
                    "",
                    ring.encrypt("at-" + secrets.token_urlsafe(24), aad=f"{cid}:access_token"),
                    ring.encrypt(refresh_token, aad=f"{cid}:refresh_token"),
                    "",
                    "Bearer",
                    1,
                    0,
                    "{}",
                    "{}",
                    "",
                    "",
                    False,
                )
            )
        with psycopg.connect(self.database_url) as conn:
            conn.cursor().executemany(
                "INSERT INTO broker_app_connection (id, workspace, user_id, provider_id, status, scopes, "
                "granted_scopes, params, return_url, nonce_digest, pkce_verifier_enc, access_token_enc, "
                "refresh_token_enc, id_token_enc, token_type, token_version, refresh_failures, account, metadata, "
                "error, error_description, revoke_pending, expires_at, last_refreshed_at, last_read_at, created_at, "
                "updated_at, activated_at, tags, flow, device_code_enc) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + interval '60 seconds', "
                "now() - interval '3540 seconds', now() - interval '3500 seconds', now(), now(), now(), '{}', 'code', '')",
                rows,
            )
        return grants


@pytest.fixture(scope="session")
def refresh_stack(tmp_path_factory, _redis_database_per_worker, _fake_provider_server):
    import redis

    database_url = sibling_database("refresh_stack")  # one per xdist worker
    reset_postgres_database(database_url)
    redis_url = _stack_redis_url()
    client = redis.Redis.from_url(redis_url)
    for pattern in ("celery*", "_kombu*", "unacked*", "dromos:*", ":*"):
        for key in client.scan_iter(pattern, count=1000):
            client.delete(key)
    stack = RefreshStack(
        workdir=tmp_path_factory.mktemp("refresh-stack"),
        database_url=database_url,
        redis_url=redis_url,
        celery=True,
        beat=False,
        # Small sweep batches, so two sweepers running at once interleave. Every concurrent
        # caller may wait for the refresh in progress: these tests are about single flight;
        # the bulkhead that bounds the waiters has its own (test_bulkheads.py).
        extra_env={
            "REFRESH_SWEEP_BATCH": "20",
            "METRICS_CONNECTIONS_CACHE_SECONDS": "0",
            "REFRESH_MAX_WAITERS": "100",
            "GATEWAY_SLOW_CALLS_PER_KEY": "0",
            "GATEWAY_SLOW_CALLS_PER_WORKSPACE": "0",
        },
    )
    stack.start()
    try:
        stack.manage(
            "broker",
            "provider",
            "upsert",
            "--name",
            "fake",
            "--template",
            "oidc",
            "--discovery-url",
            _fake_provider_server.discovery_url,
            "--client-id",
            "fake-client",
            "--client-secret",
            "fake-client-secret-value",
            "--default-scopes",
            "openid email",
        )
        stack.wait_workers()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def real(refresh_stack, fake_provider):
    """The stack with clean counters, both workers up, and a freshly reset fake provider."""
    for name in WORKERS:
        if refresh_stack.processes[name].poll() is not None:
            refresh_stack.start_worker(name)
    refresh_stack.wait_workers()
    refresh_stack.reset_counters()
    yield refresh_stack
