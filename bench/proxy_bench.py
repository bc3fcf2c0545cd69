"""API proxy benchmark (issue 15): a proxied GET against a direct call to the same upstream,
in the same run. docs/benchmarks.md ("API proxy") has the results and how to read them.

    .venv/bin/python bench/proxy_bench.py                 # 4 rounds x 500 calls per case
    .venv/bin/python bench/proxy_bench.py --rounds 2 --calls 200   # quick look

Starts the real processes (devtools/stack.py: gunicorn gateway and broker with production
settings, one worker each, PostgreSQL, Redis, the npm oidc-provider; no Celery) in a fresh
database (BENCH_DATABASE_URL, default `<DATABASE_URL's name>_proxybench`, dropped and
recreated; BENCH_REDIS_URL), connects one user through the real consent flow, then, from
this process, one call at a time over keep-alive connections, alternating the cases
(direct, proxied, direct, proxied …, `--rounds` rounds of `--calls` calls each):

- direct   GET {provider}/me with the access token (what an agent holding the token does);
- proxied  GET {gateway}/v1/proxy/{connection_id}/me with the API key only;
- floor    GET {gateway}/v1/ping: what any call through the gateway's web stack costs
           (no key, no database), for reading the overhead.

The upstream is the same process and endpoint for both, so the difference is the proxy's
cost: the gateway's authentication, rate limit, egress policy, credential (from the
process cache; from the broker once every PROXY_TOKEN_CACHE_SECONDS), SSRF checks, the
extra hop and the audit row (handed to gateway_app.proxy_audit's writer thread). Prints
the p50/p99 of each case, the p50/p99 overhead (the
medians over rounds of proxied minus direct), the gateway's and the broker's CPU time per
proxied call, and the issue's target (p50 overhead <= 3 ms); writes var/bench/proxy_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "devtools"))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from oidc_consent import complete_consent  # noqa: E402
from stack import Stack, reset_postgres_database  # noqa: E402

from bench.token_bench import _CLK, _children, _proc_ticks  # noqa: E402

TARGET_P50_OVERHEAD_MS = 3.0
RETURN_URL = "http://127.0.0.1:1/bench/return"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _cpu_ticks(pid: int) -> int:
    return _proc_ticks(pid, with_children=True) + sum(_proc_ticks(child) for child in _children(pid))


def _timed(session: requests.Session, url: str, headers: dict[str, str], calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        response = session.get(url, headers=headers, timeout=30)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}: {response.text[:300]}")
        times.append(elapsed * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--token-cache-seconds", default="5", help="PROXY_TOKEN_CACHE_SECONDS for the gateway")
    args = parser.parse_args()

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos")
    database_url = os.environ.get("BENCH_DATABASE_URL") or base.rsplit("/", 1)[0] + "/" + (
        base.rsplit("/", 1)[1] + "_proxybench"
    )
    reset_postgres_database(database_url)
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
    stack = Stack(
        workdir=Path(tempfile.mkdtemp(prefix="proxy-bench-")),
        database_url=database_url,
        redis_url=redis_url,
        celery=False,
        gateway_workers=1,
        broker_workers=1,
        extra_env={
            "PROXY_TOKEN_CACHE_SECONDS": args.token_cache_seconds,
            "API_KEY_RATE_LIMIT": "1000000/min",
            "LOG_LEVEL": "WARNING",
        },
    )
    stack.start()
    try:
        api = {"Authorization": f"Bearer {stack.api_key}"}
        started = requests.post(
            f"{stack.gateway_url}/v1/request-connection",
            headers=api,
            json={
                "user_id": "bench",
                "provider_name": "local",
                "scopes": ["openid", "email", "profile", "offline_access"],
                "return_url": RETURN_URL,
            },
            timeout=30,
        ).json()
        complete_consent(started["authUrl"], login="bench", stop_at_prefix=RETURN_URL)
        cid = started["connection_id"]
        token = requests.get(f"{stack.gateway_url}/v1/token/{cid}", headers=api, timeout=30).json()["access_token"]
        direct_url, direct_headers = f"{stack.oidc.issuer}/me", {"Authorization": f"Bearer {token}"}
        proxied_url = f"{stack.gateway_url}/v1/proxy/{cid}/me"
        direct_session, proxied_session, floor_session = requests.Session(), requests.Session(), requests.Session()
        floor_url = f"{stack.gateway_url}/v1/ping"
        _timed(direct_session, direct_url, direct_headers, 100)  # warm-up: connections, caches, JIT
        _timed(proxied_session, proxied_url, api, 100)
        _timed(floor_session, floor_url, {}, 100)

        gateway_pid, broker_pid = stack.processes["gateway"].pid, stack.processes["broker"].pid
        rounds = []
        for _ in range(args.rounds):
            direct = _timed(direct_session, direct_url, direct_headers, args.calls)
            floor = _timed(floor_session, floor_url, {}, args.calls)
            before = {"gateway": _cpu_ticks(gateway_pid), "broker": _cpu_ticks(broker_pid)}
            proxied = _timed(proxied_session, proxied_url, api, args.calls)
            after = {"gateway": _cpu_ticks(gateway_pid), "broker": _cpu_ticks(broker_pid)}
            rounds.append(
                {
                    "floor_p50": statistics.median(floor),
                    "floor_p99": _percentile(floor, 0.99),
                    "direct_p50": statistics.median(direct),
                    "direct_p99": _percentile(direct, 0.99),
                    "proxied_p50": statistics.median(proxied),
                    "proxied_p99": _percentile(proxied, 0.99),
                    "gateway_cpu_ms": (after["gateway"] - before["gateway"]) / _CLK * 1000 / args.calls,
                    "broker_cpu_ms": (after["broker"] - before["broker"]) / _CLK * 1000 / args.calls,
                }
            )
    finally:
        stack.stop()

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    result = {
        "rounds": rounds,
        "calls_per_round": args.calls,
        "token_cache_seconds": args.token_cache_seconds,
        "floor_p50_ms": med("floor_p50"),
        "floor_p99_ms": med("floor_p99"),
        "direct_p50_ms": med("direct_p50"),
        "direct_p99_ms": med("direct_p99"),
        "proxied_p50_ms": med("proxied_p50"),
        "proxied_p99_ms": med("proxied_p99"),
        "overhead_p50_ms": statistics.median(r["proxied_p50"] - r["direct_p50"] for r in rounds),
        "overhead_p99_ms": statistics.median(r["proxied_p99"] - r["direct_p99"] for r in rounds),
        "gateway_cpu_ms_per_call": med("gateway_cpu_ms"),
        "broker_cpu_ms_per_call": med("broker_cpu_ms"),
    }
    out = ROOT / "var" / "bench" / "proxy_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("| case | p50 ms | p99 ms |\n|---|---|---|")
    print(f"| direct GET {{provider}}/me | {result['direct_p50_ms']:.2f} | {result['direct_p99_ms']:.2f} |")
    print(f"| proxied GET /v1/proxy/{{id}}/me | {result['proxied_p50_ms']:.2f} | {result['proxied_p99_ms']:.2f} |")
    print(f"| gateway floor: GET /v1/ping | {result['floor_p50_ms']:.2f} | {result['floor_p99_ms']:.2f} |")
    print(f"| overhead | {result['overhead_p50_ms']:.2f} | {result['overhead_p99_ms']:.2f} |")
    print(
        f"\nCPU per proxied call: gateway {result['gateway_cpu_ms_per_call']:.2f} ms, "
        f"broker {result['broker_cpu_ms_per_call']:.2f} ms ({args.rounds} rounds x {args.calls} calls; "
        f"PROXY_TOKEN_CACHE_SECONDS={args.token_cache_seconds})"
    )
    met = result["overhead_p50_ms"] <= TARGET_P50_OVERHEAD_MS
    print(f"target p50 overhead <= {TARGET_P50_OVERHEAD_MS} ms: {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
