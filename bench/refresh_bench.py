"""Proactive refresh throughput (issue 3): 10,000 connections due at once, refreshed by the
real Celery worker against a fast local provider, with 10^4 and then 10^6 stored connections.

    .venv/bin/python bench/refresh_bench.py                       # 10^4 due; 10^4 then 10^6 stored
    .venv/bin/python bench/refresh_bench.py --stored 10000 --due 2000   # quick look

What runs, all real processes: PostgreSQL and Redis; the broker's migrations; a Celery
worker (`celery -A dromos worker`, broker settings, production defaults, REFRESH_PROVIDER_CONCURRENCY
slots per provider); a fast local OAuth provider (a threaded HTTP/1.1 server in its own
process: discovery + a token endpoint that rotates refresh tokens, counts every call, and
answers invalid_grant — counting it — when a refresh token is presented twice). Gateway and
broker (gunicorn) run too, idle, as in bench/token_bench.py's BenchStack.

Per stored scale (the due set is the same 10^4 rows; the rest expire in 1-30 days):

1. sweep query alone: `sweep_due(dry_run=True)` (keyset batches over the partial index, no
   locks), median of 5, plus `EXPLAIN (ANALYZE, BUFFERS)` of its first batch and the cost of
   a sweep with nothing due;
2. the real sweep, timed: SKIP LOCKED batches, claim, one task per id into Redis (the
   worker starts consuming as the first batch commits);
3. refreshes until the provider has seen one call per due connection; refreshes per second
   = due / (end of the last provider call - start of the sweep).

Checks (exit 1 when one fails): provider calls == due exactly, every presented refresh
token distinct (no reuse), every due row active with its token_version bumped once, the
refresh outcome counters show `success` == due and nothing else. Writes the raw numbers to
var/bench/refresh_bench.json. Database `dromos_refresh_bench` (BENCH_DATABASE_URL), Redis
db 9 (BENCH_REDIS_URL) — both are reset.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "devtools"))

from stack import free_port, reset_postgres_database  # noqa: E402

from bench.seed import COLUMNS, TABLE, seed_connections  # noqa: E402
from bench.token_bench import BenchStack, machine  # noqa: E402

PROVIDER = "fastlocal"
WORKSPACE = "bench"


# -- the fast provider -----------------------------------------------------------------------------


def _serve_provider(port: int, ready) -> None:
    """Run in its own process. Every refresh token is accepted once: seeded ones (unknown to
    us, but each presented once) and rotated ones; a second presentation is a reuse."""
    lock = threading.Lock()
    used: set[str] = set()
    stats = {"calls": 0, "reuse": 0, "first_call": None, "last_call": None}
    issuer = f"http://127.0.0.1:{port}"
    discovery = json.dumps(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "jwks_uri": f"{issuer}/jwks",
            "id_token_signing_alg_values_supported": ["RS256"],
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real provider
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

        def log_message(self, *args):
            pass

        def _send(self, status: int, body: bytes, cache: str = "no-store") -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/.well-known/openid-configuration":
                self._send(200, discovery, "max-age=3600")
            elif self.path == "/jwks":
                self._send(200, b'{"keys": []}', "max-age=3600")
            elif self.path == "/stats":
                with lock:
                    self._send(200, json.dumps({**stats, "distinct": len(used)}).encode())
            else:
                self._send(404, b"{}")

        def do_POST(self):
            form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
            if self.path == "/reset":
                with lock:
                    stats.update(calls=0, reuse=0, first_call=None, last_call=None)
                    used.clear()
                self._send(200, b"{}")
                return
            presented = form.get("refresh_token", [""])[0]
            with lock:
                now = time.time()
                stats["calls"] += 1
                stats["first_call"] = stats["first_call"] or now
                stats["last_call"] = now
                reused = presented in used
                used.add(presented)
                stats["reuse"] += reused
            if reused or form.get("grant_type") != ["refresh_token"]:
                self._send(400, b'{"error": "invalid_grant"}')
                return
            self._send(
                200,
                json.dumps(
                    {
                        "access_token": "at-" + secrets.token_urlsafe(24),
                        "token_type": "Bearer",
                        "expires_in": 3600,
                        "refresh_token": "rt-rot-" + secrets.token_urlsafe(24),
                    }
                ).encode(),
            )

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 128
    ready.set()
    server.serve_forever()


class FastProvider:
    def __init__(self) -> None:
        self.port = free_port()
        ready = multiprocessing.Event()
        self.process = multiprocessing.Process(target=_serve_provider, args=(self.port, ready), daemon=True)
        self.process.start()
        if not ready.wait(10):
            raise RuntimeError("the fast provider did not start")
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict:
        return requests.get(f"{self.url}/stats", timeout=5).json()

    def reset(self) -> None:
        requests.post(f"{self.url}/reset", timeout=5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(5)


# -- the database ------------------------------------------------------------------------------------

# Built from constants only (the table and its column list).
FILLER_SQL = f"""
INSERT INTO {TABLE} ({", ".join(COLUMNS)}, last_refreshed_at)
SELECT 'c_fill_' || g, %(workspace)s, 'user-fill-' || g, %(provider_id)s, 'active', '["openid"]', '["openid"]',
       '{{}}', 'https://app.example.com/oauth/return', '', '', 'v1.fill.' || repeat('a', 260),
       'v1.fill.' || repeat('r', 90), '', 'Bearer',
       now() + interval '1 day' + (g %% 2592000) * interval '1 second', 1, 0, '{{}}', '{{}}', '', '',
       now(), now(), now(), false, now()
FROM generate_series(%(start)s::bigint, %(stop)s::bigint) AS g
"""  # noqa: S608


def _sql(url: str, query: str, params=None, autocommit: bool = True) -> list[tuple]:
    with psycopg.connect(url, autocommit=autocommit) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def add_filler(url: str, provider_id: str, start: int, count: int) -> None:
    """`count` more stored connections, active, expiring 1-30 days out (never due here)."""
    step = 200_000
    for first in range(start, start + count, step):
        _sql(
            url,
            FILLER_SQL,
            {
                "workspace": WORKSPACE,
                "provider_id": uuid.UUID(provider_id),
                "start": first,
                "stop": min(first + step, start + count) - 1,
            },
        )
    _sql(url, f"VACUUM ANALYZE {TABLE}")
    _sql(url, "CHECKPOINT")


def make_due(url: str, ids: list[str]) -> None:
    """Their access tokens expire 1-2 minutes from now (inside the 10-minute sweep window),
    each at its own moment as tokens issued at different times do."""
    _sql(
        url,
        "UPDATE broker_app_connection SET expires_at = now() + interval '60 seconds' + random() * "
        "interval '60 seconds', last_refreshed_at = NULL, next_refresh_attempt_at = NULL WHERE id = ANY(%s)",
        [ids],
    )
    _sql(url, f"VACUUM ANALYZE {TABLE}")


# -- Django in this process (the sweep runs here, exactly as the beat task's body) ------------------


def django_setup(env: dict[str, str]) -> None:
    for name in (
        "DATABASE_URL",
        "REDIS_URL",
        "TOKEN_ENCRYPTION_KEYS",
        "DJANGO_SECRET_KEY",
        "BROKER_API_KEY",
        "ALLOWED_HOSTS",
        "ALLOW_HTTP_PROVIDER_HOSTS",
        "BASE_URL",
        "DROMOS_VAR_DIR",
    ):
        os.environ[name] = env[name]
    os.environ["DJANGO_SETTINGS_MODULE"] = "dromos.settings.broker"
    os.environ["LOG_LEVEL"] = "WARNING"
    import django

    django.setup()


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def explain_first_batch() -> str:
    from django.conf import settings
    from django.db import connection, transaction
    from django.utils import timezone

    from broker_app.services.sweep import batch_queryset

    # Exactly the sweep's batch query (FOR UPDATE SKIP LOCKED); rolled back, nothing claimed.
    with transaction.atomic():
        queryset = batch_queryset(now=timezone.now(), window_seconds=settings.REFRESH_SWEEP_WINDOW_SECONDS)
        sql, params = queryset[: settings.REFRESH_SWEEP_BATCH].query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        transaction.set_rollback(True)
    return plan


def outcome_counts(redis_url: str) -> dict[str, int]:
    import redis

    stored = redis.Redis.from_url(redis_url).hgetall("dromos:metrics:refresh_total")
    return {k.decode().split("|", 1)[1]: int(v) for k, v in stored.items() if k.decode().startswith(PROVIDER + "|")}


def run_scale(
    *,
    stored: int,
    due_ids: list[str],
    url: str,
    redis_url: str,
    provider: FastProvider,
    expect_version: int,
    resweep_every: float,
    timeout: float,
) -> dict:
    import redis
    from django.db import connection

    from broker_app.services import sweep
    from broker_app.services.sweep import sweep_due

    due = len(due_ids)
    provider.reset()
    redis.Redis.from_url(redis_url).delete("dromos:metrics:refresh_total")
    connection.close()
    dry = [timed(sweep_due, dry_run=True) for _ in range(5)]
    assert all(r.selected == due for _, r in dry), [r.selected for _, r in dry]
    dry_seconds = statistics.median(t for t, _ in dry)
    plan = explain_first_batch()
    fan_out, fan_out_seconds = sweep._fan_out, []

    def timed_fan_out(ids):
        fan_out_seconds.append(timed(fan_out, ids)[0])

    sweep._fan_out = timed_fan_out
    started_wall = time.time()
    try:
        sweep_seconds, result = timed(sweep_due)
    finally:
        sweep._fan_out = fan_out
    assert result.queued == due, (result.queued, due)
    resweeps, last_sweep = 0, time.monotonic()
    deadline = time.monotonic() + timeout
    while provider.stats()["calls"] < due:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {provider.stats()}")
        if time.monotonic() - last_sweep > resweep_every:  # what beat would do meanwhile
            resweeps += sweep_due().queued > 0
            last_sweep = time.monotonic()
        time.sleep(0.2)
    stats = provider.stats()
    elapsed = stats["last_call"] - started_wall
    # Anything still running or queued twice would reach the provider within a few seconds.
    time.sleep(5)
    stats = provider.stats()
    rows = dict(
        _sql(
            url,
            "SELECT status || ':' || token_version, count(*) FROM broker_app_connection WHERE id = ANY(%s) GROUP BY 1",
            [due_ids],
        )
    )
    idle_seconds = statistics.median(timed(sweep_due, dry_run=True)[0] for _ in range(5))
    outcomes = outcome_counts(redis_url)
    checks = {
        "provider calls == due": stats["calls"] == due,
        "no refresh token presented twice": stats["reuse"] == 0 and stats["distinct"] == due,
        "every due row refreshed once, active": rows == {f"active:{expect_version}": due},
        "outcomes: success only": outcomes == {"success": due},
    }
    return {
        "stored": stored,
        "due": due,
        "provider_calls": stats["calls"],
        "distinct_refresh_tokens": stats["distinct"],
        "reuse": stats["reuse"],
        "refresh_seconds": round(elapsed, 2),
        "refreshes_per_second": round(due / elapsed, 1),
        "sweep_select_ms": round(dry_seconds * 1000, 1),
        "sweep_claim_fanout_ms": round(sweep_seconds * 1000, 1),
        "sweep_fanout_ms": round(sum(fan_out_seconds) * 1000, 1),
        "sweep_batches": result.batches,
        "sweep_nothing_due_ms": round(idle_seconds * 1000, 2),
        "resweeps": resweeps,
        "rows": rows,
        "outcomes": outcomes,
        "checks": checks,
        "plan_first_batch": plan,
    }


def render(results: list[dict], concurrency: int) -> str:
    lines = [
        f"| stored connections | due | provider calls | refreshes/s (worker -c {concurrency}) | sweep: select "
        "only (dry run) | sweep: select + claim + fan-out (of which fan-out) | sweep, nothing due |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['stored']:,} | {r['due']:,} | {r['provider_calls']:,} | {r['refreshes_per_second']:,.0f} "
            f"| {r['sweep_select_ms']:,.0f} ms | {r['sweep_claim_fanout_ms'] / 1000:,.1f} s "
            f"({r['sweep_fanout_ms'] / 1000:,.1f} s) | {r['sweep_nothing_due_ms']:.1f} ms |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--stored", default="10000,1000000", help="comma-separated stored totals, ascending")
    parser.add_argument("--concurrency", type=int, default=8, help="Celery worker processes (prefork)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "refresh_bench.json"))
    args = parser.parse_args()
    scales = sorted(int(x) for x in args.stored.split(","))
    if scales[0] < args.due:
        parser.error("--stored values must be at least --due")
    url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos_refresh_bench")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
    host = machine()
    print(f"machine: {host['nproc']} CPUs ({host['cpu']}), {host['ram']} RAM, load {host['load_before']}")

    import redis

    redis.Redis.from_url(redis_url).flushdb()
    reset_postgres_database(url)
    workdir = Path(tempfile.mkdtemp(prefix="refresh-bench-"))
    provider = FastProvider()
    stack = BenchStack(
        workdir=workdir,
        database_url=url,
        redis_url=redis_url,
        celery=False,
        beat=False,
        gateway_workers=1,
        broker_workers=1,
        extra_env={"LOG_LEVEL": "WARNING"},
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: list[dict] = []
    try:
        stack.start()
        stack.manage(
            "broker",
            "provider",
            "upsert",
            "--name",
            PROVIDER,
            "--template",
            "oidc",
            "--discovery-url",
            f"{provider.url}/.well-known/openid-configuration",
            "--client-id",
            "bench",
            "--client-secret",
            secrets.token_urlsafe(16),
        )
        ((provider_id,),) = _sql(url, "SELECT id FROM broker_app_provider WHERE name = %s", [PROVIDER])
        ids_file = workdir / "ids.txt"
        started = time.monotonic()
        seed_connections(
            database_url=url,
            raw_keys=stack.env["TOKEN_ENCRYPTION_KEYS"],
            workspace=WORKSPACE,
            provider_id=str(provider_id),
            count=args.due,
            ids_file=ids_file,
        )
        due_ids = ids_file.read_text().split()
        print(f"seeded {args.due:,} connections with real ciphertexts in {time.monotonic() - started:.0f} s")
        django_setup(stack.env)
        stack._spawn(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "dromos",
                "worker",
                "-l",
                "WARNING",
                "-c",
                str(args.concurrency),
                "--without-gossip",
                "--without-mingle",
            ],
            "broker",
        )
        from dromos.celery import app

        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if time.monotonic() > deadline:
                raise SystemExit(f"worker did not start:\n{stack.log('worker')[-3000:]}")
        stored = args.due
        for number, scale in enumerate(scales, 1):
            if scale > stored:
                started = time.monotonic()
                add_filler(url, str(provider_id), stored, scale - stored)
                stored = scale
                print(f"stored: {stored:,} connections (filler added in {time.monotonic() - started:.0f} s)")
            make_due(url, due_ids)
            result = run_scale(
                stored=stored,
                due_ids=due_ids,
                url=url,
                redis_url=redis_url,
                provider=provider,
                expect_version=1 + number,
                resweep_every=60,
                timeout=args.timeout,
            )
            results.append(result)
            print(
                f"  {stored:,} stored: {result['refreshes_per_second']:,.0f} refreshes/s, "
                f"{result['provider_calls']:,} provider calls, sweep select {result['sweep_select_ms']:,.0f} ms, "
                f"select+claim+fan-out {result['sweep_claim_fanout_ms']:,.0f} ms "
                f"(fan-out {result['sweep_fanout_ms']:,.0f} ms), checks "
                f"{'ok' if all(result['checks'].values()) else result['checks']}",
                flush=True,
            )
    finally:
        stack.stop()
        provider.stop()
    host["load_after"] = os.getloadavg()
    print()
    print(render(results, args.concurrency))
    print("\nfirst sweep batch at the largest scale:\n" + results[-1]["plan_first_batch"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": host,
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "settings": vars(args),
                "results": results,
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nraw numbers: {out}; logs: {workdir}")
    failed = [name for r in results for name, ok in r["checks"].items() if not ok]
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
