"""Usage-aware refresh, simulated (issue 21): provider calls per connection per day under
the old proactive rule and the usage-aware one, over simulated days.

    .venv/bin/python bench/refresh_sim.py --connections 10000 --days 30     # the issue's size
    .venv/bin/python bench/refresh_sim.py --connections 300 --days 10       # what fits a busy box

What is real: PostgreSQL (database `<DATABASE_URL's name>_sim`, reset), the broker's
migrations, the sweep (`sweep_due`: keyset batches, claims), the refresh task's body
(`refresh_one`, run in this process for each id the sweep queues, as the Celery worker would
run it), the single-flight refresh service with its row locks, encryption and audit rows,
the token read (`token_read`, as the broker's token route calls it, without auto_refresh),
and the grant-expiry beat task's body (`grant_expiry_check`, hourly).

What is simulated: the clock (`django.utils.timezone.now` patched in this process only,
advanced in STEP-second steps; every rule and row timestamp reads it) and the provider
(`broker_app.oauth.client.refresh` replaced by a counter: 1-hour access tokens, no rotation,
and `invalid_grant` — counted as a grant lost to idleness — for a refresh token unused for
longer than the template's refresh_token_idle_days, 7 days here: Google's testing apps).

The mix: 10 % read hourly, 30 % daily, 60 % never; every grant has an absolute end drawn
from 1-60 days after the start (refresh_token_expires_at), so warnings and expiries happen.

Counted: provider calls / connection / day; reads served a token already expired (must be
0); grants lost to idleness (must be 0); connection.expiring sent, and how many of the ends
that fell in the run were warned first; connection.expired.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEP = 300  # seconds of simulated time per step (the real sweep runs every 60 s)
IDLE_DAYS = 7
TOKEN_SECONDS = 3600
TEMPLATE = f"""
[simprovider]
display_name = "Simulated provider"
authorize_url = "http://127.0.0.1:9/authorize"
token_url = "http://127.0.0.1:9/token"
pkce = "S256"
refresh = true
refresh_token_idle_days = {IDLE_DAYS}
"""


def _setup(database_url: str, suffix: str) -> None:
    base, _, name = database_url.rpartition("/")
    os.environ["DATABASE_URL"] = f"{base}/{name}_sim{suffix}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dromos.settings.test")
    extra = Path(tempfile.mkdtemp()) / "sim_catalog.toml"
    extra.write_text(TEMPLATE)
    os.environ["PROVIDER_CATALOG_EXTRA"] = str(extra)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", os.environ.get("REDIS_URL", ""))
    sys.path.insert(0, str(ROOT / "devtools"))
    from stack import reset_postgres_database

    reset_postgres_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class FakeProvider:
    """Counts refreshes; a refresh token unused for longer than IDLE_DAYS is refused."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.calls, self.lost = clock, 0, 0
        self.last_use: dict[str, datetime] = {}

    def refresh(self, spec, hooks, *, refresh_token: str):
        from broker_app.oauth.errors import PermanentOAuthError
        from broker_app.oauth.tokens import TokenSet

        self.calls += 1
        now = self.clock()
        if now - self.last_use[refresh_token] > timedelta(days=IDLE_DAYS):
            self.lost += 1
            raise PermanentOAuthError("invalid_grant", "refresh token unused for too long")
        self.last_use[refresh_token] = now
        return TokenSet(access_token=secrets.token_urlsafe(24), expires_in=TOKEN_SECONDS)


def _seed(indices: range, start: datetime, provider_obj, fake: FakeProvider, rng: random.Random) -> dict[str, dict]:
    from broker_app import crypto
    from broker_app.models import Connection

    plan, rows = {}, []
    for i in indices:
        kind = "hourly" if i % 10 == 0 else ("daily" if i % 10 <= 3 else "idle")
        c = Connection(
            workspace="sim",
            user_id=f"u{i}",
            provider=provider_obj,
            status=Connection.Status.ACTIVE,
            return_url="https://app.example.com/done",
        )
        issued = start - timedelta(seconds=rng.uniform(0, TOKEN_SECONDS))
        refresh_token = secrets.token_urlsafe(24)
        fake.last_use[refresh_token] = issued
        c.access_token_enc = crypto.encrypt(secrets.token_urlsafe(24), aad=c.aad("access_token"))
        c.refresh_token_enc = crypto.encrypt(refresh_token, aad=c.aad("refresh_token"))
        c.token_type = "Bearer"
        c.expires_at = issued + timedelta(seconds=TOKEN_SECONDS)
        c.refresh_expires_at = start + timedelta(days=rng.uniform(1, 60))
        c.token_version = 1
        c.activated_at = c.last_refreshed_at = issued
        rows.append(c)
        phase = rng.uniform(0, 3600 if kind == "hourly" else 86400)
        plan[c.id] = {"kind": kind, "phase": phase, "end": c.refresh_expires_at}
    Connection.objects.bulk_create(rows, batch_size=1000)
    return plan


def _read_schedule(plan: dict, days: float) -> dict[int, list[str]]:
    """Every read of the run, bucketed by step once (ids in plan order within a step): each
    step then touches only its own reads instead of scanning every connection."""
    horizon = days * 86400
    buckets: dict[int, list[str]] = {}
    for cid, p in plan.items():
        period = 3600 if p["kind"] == "hourly" else 86400 if p["kind"] == "daily" else None
        if period is None:
            continue
        at = p["phase"]
        while at < horizon:
            buckets.setdefault(int(at // STEP), []).append(cid)
            at += period
    return buckets


class _Task:
    def retry(self, **kwargs):
        return RuntimeError("retry")


def run(policy: str, n: int, days: float, seed: int, shard: int = 0, shards: int = 1, checkpoint=None) -> dict:
    """One simulation of connections [shard·n/shards, (shard+1)·n/shards) on this process's
    database and clock (shards run on databases of their own: each has its own clock).
    `checkpoint(result)` gets the numbers so far at the end of every simulated day, so a run
    stopped early still leaves exact numbers for the days it completed."""
    from django.conf import settings
    from django.db import connection as db
    from django.test.utils import override_settings

    from broker_app.audit import Actor
    from broker_app.models import AuditEvent, Connection, Provider
    from broker_app.providers import registry
    from broker_app.services.expiry import grant_expiry_check
    from broker_app.services.reads import token_read
    from broker_app.services.sweep import refresh_one, sweep_due
    from dromos.errors import ApiError

    with db.cursor() as cursor:
        cursor.execute("TRUNCATE broker_app_connection, broker_app_auditevent, broker_app_provider CASCADE")
    registry.cache_clear()
    rng = random.Random(seed if shards == 1 else f"{seed}-{shard}")
    start = datetime(2026, 1, 5, tzinfo=UTC)
    clock = Clock(start)
    fake = FakeProvider(clock)
    # A provider name of its own per policy and shard: the per-provider concurrency slots
    # (Redis) are then never shared with another simulation running at the same time.
    provider_obj = Provider.objects.create(name=f"sim-{policy}-{shard}", template="simprovider", client_id="sim-client")
    seeding = time.monotonic()
    indices = range(shard * n // shards, (shard + 1) * n // shards)
    plan = _seed(indices, start, provider_obj, fake, rng)
    schedule = _read_schedule(plan, days)
    seed_seconds = time.monotonic() - seeding
    served_expired = refused = reads = tasks = task_retries = sweeps = 0
    spent = {"reads": 0.0, "refresh_tasks": 0.0, "sweeps": 0.0, "expiry_checks": 0.0}
    actor = Actor("apikey:sim", workspace="sim")
    began, cpu_began = time.monotonic(), time.process_time()

    def result(days_done: float, complete: bool) -> dict:
        end = start + timedelta(days=days_done)
        ended = [cid for cid, p in plan.items() if p["end"] <= end]
        warned = set(AuditEvent.objects.filter(action="connection.expiring").values_list("connection_id", flat=True))
        return {
            "policy": policy,
            "connections": len(indices),
            "days": days_done,
            "complete": complete,
            "provider_calls": fake.calls,
            "calls_per_connection_day": round(fake.calls / len(indices) / days_done, 3),
            "reads": reads,
            "served_expired": served_expired,
            "reads_refused_grant_ended": refused,
            "grants_lost_to_idleness": fake.lost,
            "connections_failed_invalid_grant": Connection.objects.filter(
                status="failed", error="invalid_grant"
            ).count(),
            "expiring_sent": len(warned),
            "ends_in_run": len(ended),
            "ends_warned_first": len(warned & set(ended)),
            "expired_sent": AuditEvent.objects.filter(action="connection.expired").count(),
            "refresh_tasks": tasks,
            "task_retries": task_retries,
            "sweeps": sweeps,
            "seconds": {k: round(v, 1) for k, v in spent.items()},
            "seed_seconds": round(seed_seconds, 1),
            "wall_seconds": round(time.monotonic() - began, 1),
            "cpu_seconds": round(time.process_time() - cpu_began, 1),
            "warning_days": settings.EXPIRY_WARNING_DAYS,
            "shards": 1,
        }

    patches = [
        mock.patch("django.utils.timezone.now", clock),
        mock.patch("broker_app.oauth.client.refresh", fake.refresh),
        # The crash marker is committed on a PostgreSQL session of its own per refresh: a new
        # database connection each time, which would dominate a run of this many refreshes.
        mock.patch("broker_app.services.refresh._mark_in_flight", lambda connection: None),
        override_settings(REFRESH_USAGE_AWARE=policy == "usage-aware"),
    ]
    for p in patches:
        p.enable() if hasattr(p, "enable") else p.start()
    try:
        steps = int(days * 86400 // STEP)
        for step in range(steps):
            t0 = step * STEP
            clock.now = start + timedelta(seconds=t0)
            mark = time.monotonic()
            for cid in schedule.pop(step, ()):
                clock.now = start + timedelta(seconds=t0 + rng.uniform(0, STEP - 1))
                reads += 1
                try:
                    view = token_read(connection_id=cid, workspace="sim", actor=actor)
                except ApiError:
                    refused += 1  # the grant ended (connection.expired) or was lost
                    continue
                if view.expires_at is not None and view.expires_at <= clock.now:
                    served_expired += 1
            clock.now = start + timedelta(seconds=t0 + STEP - 1)
            spent["reads"] += time.monotonic() - mark
            mark = time.monotonic()
            due = sweep_due(enqueue=False).connection_ids
            sweeps += 1
            spent["sweeps"] += time.monotonic() - mark
            mark = time.monotonic()
            for cid in due:
                tasks += 1
                try:
                    refresh_one(task=_Task(), connection_id=cid)
                except RuntimeError:
                    task_retries += 1  # a Celery retry: the claim lapses and a later sweep re-queues it
            spent["refresh_tasks"] += time.monotonic() - mark
            if step % (3600 // STEP) == 0:
                mark = time.monotonic()
                grant_expiry_check()
                spent["expiry_checks"] += time.monotonic() - mark
            if checkpoint is not None and (step + 1) % (86400 // STEP) == 0:
                checkpoint(result((step + 1) * STEP / 86400, complete=False))
            if (step + 1) % (21600 // STEP) == 0:  # every 6 simulated hours
                print(
                    f"[{policy} shard {shard}] day {(step + 1) * STEP / 86400:g}: {fake.calls} calls, "
                    f"{reads} reads, {time.monotonic() - began:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for p in reversed(patches):
            p.disable() if hasattr(p, "disable") else p.stop()
    return result(steps * STEP / 86400, complete=True)


SUMMED = (
    "connections",
    "provider_calls",
    "reads",
    "served_expired",
    "reads_refused_grant_ended",
    "grants_lost_to_idleness",
    "connections_failed_invalid_grant",
    "expiring_sent",
    "ends_in_run",
    "ends_warned_first",
    "expired_sent",
    "refresh_tasks",
    "task_retries",
    "sweeps",
)


def combine(parts: list[dict]) -> dict:
    """The shards' results as one run: counts summed, wall time the slowest shard's."""
    total = dict(parts[0])
    for key in SUMMED:
        total[key] = sum(p[key] for p in parts)
    total["calls_per_connection_day"] = round(total["provider_calls"] / total["connections"] / total["days"], 3)
    total["seconds"] = {k: round(sum(p["seconds"][k] for p in parts), 1) for k in parts[0]["seconds"]}
    total["wall_seconds"] = max(p["wall_seconds"] for p in parts)
    total["shard_wall_seconds"] = [p["wall_seconds"] for p in parts]
    total["shards"] = len(parts)
    total["complete"] = all(p.get("complete", True) for p in parts)
    if len({p["days"] for p in parts}) != 1:
        raise ValueError("shards at different days")
    return total


def _sharded(args, policy: str, days: float) -> dict:
    """Run the policy as args.shards processes, each on its own database, and combine them."""
    procs, outs = [], []
    for shard in range(args.shards):
        out = ROOT / "var" / "bench" / f"refresh_sim{args.db_suffix}_{policy}_{shard}.json"
        outs.append(out)
        command = [sys.executable, str(Path(__file__).resolve()), "--policy", policy, "--connections"]
        command += [str(args.connections), "--days", str(days), "--seed", str(args.seed)]
        command += ["--shards", str(args.shards), "--shard", str(shard), "--db-suffix", f"{args.db_suffix}_{shard}"]
        procs.append(subprocess.Popen([*command, "--out", str(out)]))
    if any(proc.wait() not in (0, 1) for proc in procs):
        raise SystemExit(f"a {policy} shard failed")
    return combine([json.loads(out.read_text())[0] for out in outs])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument(
        "--today-days", type=float, help="days for today's policy (default --days): its rate does not depend on it"
    )
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--db-suffix", default="", help="run several at once, each on its own database")
    parser.add_argument("--policy", choices=("both", "today", "usage-aware"), default="both")
    parser.add_argument("--shards", type=int, default=1, help="processes, each with its own database and clock")
    parser.add_argument("--shard", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help="where the raw numbers go (default var/bench/refresh_sim<suffix>.json)")
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="DAYS_JSONL",
        help="combine shards' daily checkpoints (<out>.days.jsonl) at the last day all of them completed",
    )
    args = parser.parse_args()
    if args.combine:
        shards = [[json.loads(line) for line in Path(f).read_text().splitlines()] for f in args.combine]
        day = min(max(c["days"] for c in days) for days in shards)
        print(json.dumps(combine([next(c for c in days if c["days"] == day) for days in shards])))
        return 0
    # The new policy first: it is the one the issue needs at full size.
    policies = ("usage-aware", "today") if args.policy == "both" else (args.policy,)
    out = Path(args.out) if args.out else ROOT / "var" / "bench" / f"refresh_sim{args.db_suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    if args.shards > 1 and args.shard is None:
        run_one = lambda policy, days: _sharded(args, policy, days)  # noqa: E731
    else:
        _setup(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos"), args.db_suffix)
        shard, shards = (0, 1) if args.shard is None else (args.shard, args.shards)

        def run_one(policy: str, days: float) -> dict:
            out.with_suffix(".days.jsonl").unlink(missing_ok=True)

            def checkpoint(partial: dict) -> None:
                out.write_text(json.dumps([*results, partial], indent=2))
                with out.with_suffix(".days.jsonl").open("a") as days_file:
                    days_file.write(json.dumps(partial) + "\n")

            return run(policy, args.connections, days, args.seed, shard, shards, checkpoint)

    for policy in policies:
        days = args.today_days if policy == "today" and args.today_days else args.days
        results.append(run_one(policy, days))
        print(json.dumps(results[-1]), flush=True)
        out.write_text(json.dumps(results, indent=2))  # each policy's numbers as soon as they exist
    bad = [r for r in results if r["policy"] == "usage-aware" and (r["served_expired"] or r["grants_lost_to_idleness"])]
    if len(results) == 2:
        rate = {r["policy"]: r["calls_per_connection_day"] for r in results}
        ratio = rate["today"] / max(rate["usage-aware"], 1e-9)
        print(f"reduction: {ratio:.1f}x (provider calls per connection per day)")
        if ratio < 10:
            bad.append("target")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
