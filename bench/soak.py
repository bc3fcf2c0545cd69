"""Soak (issue 14): mixed traffic over many connections against the real npm OIDC provider
(devtools/oidc-provider: rotating refresh tokens, the grant revoked when a rotated-out one is
presented again, short access tokens), while the Celery worker, the broker and the gateway are
SIGKILLed (whole process group) and restarted at random. Not run in CI.

    .venv/bin/python bench/soak.py                               # 10 min, 1,000 connections
    .venv/bin/python bench/soak.py --minutes 4 --connections 200 # a shorter look
    .venv/bin/python bench/soak.py --no-kills                    # the control run

What runs, all real processes (devtools/stack.py's Stack, production settings): gunicorn
gateway and broker, one Celery worker and beat (the proactive sweep every minute), PostgreSQL
(database `dromos_soak`, SOAK_DATABASE_URL, reset) and Redis (SOAK_REDIS_URL, default
BENCH_REDIS_URL; flushed). The provider `local` is registered as a generic `oidc` provider with
`--setting refresh_token_rotation=true` (no reuse grace: oidc-provider has none).

Traffic: --threads clients, --rate requests per second in all, one API key (its rate limit
raised for the soak), each picking a random connection and doing one of: plain token
read (60 %), auto_refresh read (25 %), forced refresh (10 %), check-connection (5 %).
Answers 429/503 (bulkheads, a role being restarted) and transport errors are counted, not
failures. Chaos (unless --no-kills): every 10-40 s one of worker/broker/gateway is SIGKILLed
and restarted 1-3 s later.

At the end: chaos stops, every role is up, each connection is asked for a token with
auto_refresh (a refresh when due) and that access token is presented to the provider's
userinfo endpoint. Every connection that is not active with an accepted token is named with
its status and error. A connection failed with `refresh_interrupted` is the documented price
of a kill that landed while its refresh was at the provider (README "Refresh").
Exit 0 when nothing is lost, or only refresh_interrupted ones with kills; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "devtools"))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from oidc_consent import complete_consent  # noqa: E402
from stack import CLIENT_ID, PROVIDER_NAME, Stack, reset_postgres_database  # noqa: E402

RETURN_URL = "http://127.0.0.1:1/oauth/return"
ROLES = ("worker", "broker", "gateway")


class SoakStack(Stack):
    """Stack that remembers how it started each role, so a killed one can be started again."""

    def _spawn(self, name: str, args: list[str], role: str) -> None:
        self.__dict__.setdefault("commands", {})[name] = (args, role)
        super()._spawn(name, args, role)

    def kill(self, name: str) -> None:
        process = self.processes[name]
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)

    def restart(self, name: str) -> None:
        args, role = self.commands[name]
        super()._spawn(name, args, role)
        if name in ("broker", "gateway"):
            url = self.broker_url if name == "broker" else self.gateway_url
            self._wait_http(f"{url}/healthz", name)

    def gw(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return requests.request(method, self.gateway_url + path, headers=headers, timeout=40, **kwargs)


def connect(stack: SoakStack, n: int) -> str:
    for attempt in range(5):
        try:
            started = stack.gw(
                "POST",
                "/v1/request-connection",
                json={
                    "user_id": f"soak-{n}",
                    "provider_name": PROVIDER_NAME,
                    "scopes": ["openid", "email", "offline_access"],
                    "return_url": RETURN_URL,
                },
            )
            started.raise_for_status()
            complete_consent(started.json()["authUrl"], login=f"soak{n}", stop_at_prefix=RETURN_URL)
            return started.json()["connection_id"]
        except Exception:
            if attempt == 4:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def traffic(
    stack: SoakStack, ids: list[str], stop: threading.Event, counts: Counter, lock: threading.Lock, pause: float
) -> None:
    rng = random.Random()
    while not stop.wait(rng.uniform(0, 2 * pause)):
        cid = rng.choice(ids)
        roll = rng.random()
        try:
            if roll < 0.60:
                kind, answer = "read", stack.gw("GET", f"/v1/token/{cid}")
            elif roll < 0.85:
                kind, answer = "auto", stack.gw("GET", f"/v1/token/{cid}", params={"auto_refresh": "true"})
            elif roll < 0.95:
                kind, answer = "refresh", stack.gw("POST", f"/v1/refresh/{cid}")
            else:
                kind, answer = "check", stack.gw("GET", f"/v1/check-connection/{cid}")
            code = answer.status_code
            error = answer.json().get("error", "") if code != 200 and answer.content[:1] == b"{" else ""
            label = f"{kind} {code} {error}".strip()
        except requests.RequestException as exc:
            label = f"transport {type(exc).__name__}"
        with lock:
            counts[label] += 1


def chaos(stack: SoakStack, stop: threading.Event, log: list) -> None:
    rng = random.Random()
    while not stop.wait(rng.uniform(10, 40)):
        role = rng.choice(ROLES)
        # Refreshes at the provider just before the kill (any process's): a gateway kill loses
        # none of them; a broker or worker kill may have hit one of its own.
        in_flight = [cid for (cid,) in stack_sql(stack, "SELECT connection_id FROM broker_app_refreshinflight")]
        stack.kill(role)
        log.append({"at": round(time.monotonic() - START, 1), "killed": role, "in_flight": in_flight})
        print(f"  [{time.monotonic() - START:6.1f}s] SIGKILL {role} ({len(in_flight)} refreshes in flight)", flush=True)
        time.sleep(rng.uniform(1, 3))
        stack.restart(role)


def stack_sql(stack: SoakStack, query: str, params=None) -> list[tuple]:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def verify(stack: SoakStack, cid: str) -> dict | None:
    """None when the connection is active and the provider accepts its token; else why not."""
    answer = None
    for _ in range(5):  # a bulkhead or a restart may answer 429/503 for a moment
        answer = stack.gw("GET", f"/v1/token/{cid}", params={"auto_refresh": "true"})
        if answer.status_code not in (429, 503):
            break
        time.sleep(float(answer.headers.get("Retry-After") or 1))
    if answer.status_code != 200:
        (status, error, description) = stack_sql(
            stack, "SELECT status, error, error_description FROM broker_app_connection WHERE id = %s", [cid]
        )[0]
        return {"connection_id": cid, "http": answer.status_code, "status": status, "error": error, "why": description}
    token = answer.json()["access_token"]
    userinfo = requests.get(f"{stack.oidc.issuer}/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    if userinfo.status_code != 200:
        return {"connection_id": cid, "http": 200, "status": "active", "error": f"userinfo {userinfo.status_code}"}
    return None


START = time.monotonic()


def main() -> int:
    global START
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rate", type=float, default=40, help="requests per second, all threads together")
    parser.add_argument("--token-ttl", type=int, default=120, help="access token lifetime at the provider (s)")
    parser.add_argument("--no-kills", action="store_true")
    parser.add_argument("--seed-threads", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "soak.json"))
    args = parser.parse_args()

    database_url = os.environ.get("SOAK_DATABASE_URL") or (
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos").rsplit("/", 1)[0] + "/dromos_soak"
    )
    redis_url = os.environ.get("SOAK_REDIS_URL") or os.environ.get("BENCH_REDIS_URL") or "redis://127.0.0.1:6379/9"
    reset_postgres_database(database_url)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    workdir = ROOT / "var" / "soak"
    # oidc-provider's in-memory store otherwise forgets all but its last ~1000 entries
    # (sessions, grants, tokens): refresh tokens of older grants would answer invalid_grant.
    os.environ["OIDC_STORE_SIZE"] = "1000000"
    workdir.mkdir(parents=True, exist_ok=True)
    stack = SoakStack(
        workdir=workdir,
        database_url=database_url,
        redis_url=redis_url,
        celery=True,
        beat=True,
        access_token_ttl=args.token_ttl,
        # One key drives all the traffic: its per-key rate limit would otherwise answer most
        # calls 429. Every reliability setting keeps its default.
        extra_env={"API_KEY_RATE_LIMIT": "1000000/min"},
    )
    stack.start()
    report: dict = {}
    try:
        stack.manage(
            "broker",
            "provider",
            "upsert",
            "--name",
            PROVIDER_NAME,
            "--template",
            "oidc",
            "--discovery-url",
            f"{stack.oidc.issuer}/.well-known/openid-configuration",
            "--client-id",
            CLIENT_ID,
            f"--client-secret={stack.client_secret}",
            "--default-scopes",
            "openid email profile offline_access",
            "--authorize-param",
            "prompt=consent",
            "--setting",
            "refresh_token_rotation=true",
        )
        started = time.monotonic()
        with ThreadPoolExecutor(args.seed_threads) as pool:
            ids = list(pool.map(lambda n: connect(stack, n), range(args.connections)))
        setup_seconds = time.monotonic() - started
        print(f"{len(ids)} connections in {setup_seconds:.0f}s; soaking {args.minutes} min", flush=True)

        START = time.monotonic()
        stop, lock, counts, kills = threading.Event(), threading.Lock(), Counter(), []
        threads = [
            threading.Thread(
                target=traffic, args=(stack, ids, stop, counts, lock, args.threads / args.rate), daemon=True
            )
            for _ in range(args.threads)
        ]
        if not args.no_kills:
            threads.append(threading.Thread(target=chaos, args=(stack, stop, kills), daemon=True))
        for thread in threads:
            thread.start()
        time.sleep(args.minutes * 60)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        for role in ROLES:  # every role up for the final check
            if stack.processes[role].poll() is not None:
                stack.restart(role)

        with ThreadPoolExecutor(8) as pool:
            lost = [problem for problem in pool.map(lambda cid: verify(stack, cid), ids) if problem]
        outcomes = {
            key.decode(): int(value)
            for key, value in redis.Redis.from_url(redis_url).hgetall("dromos:metrics:refresh_total").items()
        }
        for problem in lost:  # which kill explains it, if any
            problem["in_flight_at_kill"] = [
                f"{kill['killed']} at {kill['at']}s" for kill in kills if problem["connection_id"] in kill["in_flight"]
            ]
        by_error = Counter(problem["error"] for problem in lost)
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "connections": len(ids),
            "setup_seconds": round(setup_seconds),
            "minutes": args.minutes,
            "token_ttl": args.token_ttl,
            "requests": sum(counts.values()),
            "answers": dict(counts.most_common()),
            "kills": kills,
            "refresh_outcomes": outcomes,
            "lost": len(lost),
            "lost_by_error": dict(by_error),
            "lost_connections": lost,
            "cpus": os.cpu_count(),
        }
    finally:
        stack.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "lost_connections"}, indent=2))
    for problem in report.get("lost_connections", []):
        print(
            f"LOST {problem['connection_id']}: status={problem['status']} error={problem['error']} "
            f"refresh in flight when killed: {', '.join(problem['in_flight_at_kill']) or 'no'}"
        )
    explained = set(report.get("lost_by_error", {})) <= ({"refresh_interrupted"} if not args.no_kills else set())
    return 0 if report and explained else 1


if __name__ == "__main__":
    sys.exit(main())
