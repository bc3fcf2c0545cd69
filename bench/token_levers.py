"""Issue 20's hot-path levers measured one by one, old and new code in the same process,
alternated in short chunks (so that the load other processes put on the machine hits both
alike): CPU per call (time.process_time) of each piece of the token path before and after.

    .venv/bin/python bench/token_bench.py --scales 10000 --audit-rows 0 --hold > held.txt &
    .venv/bin/python bench/token_levers.py --stack held.txt --role broker --base /tmp/base-tree
    .venv/bin/python bench/token_levers.py --stack held.txt --role gateway --base /tmp/base-tree

--base is a checkout of the code before the levers (`git archive <commit> | tar -x -C DIR`):
its modules are loaded under other names next to this tree's. Against the held stack's
PostgreSQL and Redis (real round trips; the same statements both ways).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from token_micro import enter_held_stack  # noqa: E402 - a sibling script


def _load(base: Path, relative: str, name: str):
    spec = importlib.util.spec_from_file_location(name, base / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compare(label: str, old, new, *, chunk: int, rounds: int) -> dict:
    """Alternate `chunk` calls of old and new, `rounds` times; µs of CPU per call."""
    for fn in (old, new):
        for _ in range(chunk):
            fn()
    spent = {"old": [], "new": []}
    for _ in range(rounds):
        for which, fn in (("old", old), ("new", new)):
            started = time.process_time()
            for _ in range(chunk):
                fn()
            spent[which].append((time.process_time() - started) / chunk * 1e6)
    ratios = [n / o for o, n in zip(spent["old"], spent["new"], strict=True) if o]
    result = {
        "lever": label,
        "old_us": round(statistics.median(spent["old"]), 1),
        "new_us": round(statistics.median(spent["new"]), 1),
        "saved_us": round(statistics.median(o - n for o, n in zip(spent["old"], spent["new"], strict=True)), 1),
        "new/old": round(statistics.median(ratios), 3),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stack", required=True)
    parser.add_argument("--role", choices=("broker", "gateway"), required=True)
    parser.add_argument("--base", required=True, help="a checkout of the code before the levers")
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--log", default=os.devnull)
    args = parser.parse_args()

    stack = enter_held_stack(args.stack, args.role, args.log)

    from django.core import signals
    from django.db import connection

    import dromos.wsgi  # noqa: F401 - Django set up as the server sets it up
    from dromos import fastpath, wire

    base = Path(args.base)
    old_fastpath = _load(base, "dromos/fastpath.py", "old_dromos_fastpath")
    ids = Path(stack["ids"]).read_text().split()
    rng = random.Random(1)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/internal/v1/connections/x/token",
        "QUERY_STRING": "",
        "HTTP_HOST": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
    }
    run = dict(chunk=args.chunk, rounds=args.rounds)
    results = []

    # Shared by both roles: the access-log line + histogram, the security headers.
    route = "/v1/token/<str:connection_id>"
    started = time.perf_counter()
    results.append(
        compare(
            "access log line + latency histogram",
            lambda: old_fastpath._observe(environ, route, 200, started),
            lambda: fastpath._observe(environ, route, 200, started),
            **run,
        )
    )
    import logging

    from dromos.logging import JsonFormatter

    old_logging = _load(base, "dromos/logging.py", "old_dromos_logging")
    record = logging.getLogger("dromos.request").makeRecord(
        "dromos.request",
        logging.INFO,
        "(unknown file)",
        0,
        "%s %s %s",
        ("GET", environ["PATH_INFO"], 200),
        None,
        extra={"method": "GET", "path": environ["PATH_INFO"], "route": route, "status": 200, "duration_ms": 1.25},
    )
    old_formatter, new_formatter = old_logging.JsonFormatter(), JsonFormatter()
    assert old_formatter.format(record) == new_formatter.format(record)
    results.append(
        compare("JSON log formatter", lambda: old_formatter.format(record), lambda: new_formatter.format(record), **run)
    )
    results.append(
        compare(
            "security headers",
            lambda: old_fastpath.security_headers(environ),
            lambda: fastpath.security_headers(environ),
            **run,
        )
    )
    connection.ensure_connection()

    def old_cycle():
        signals.request_started.send(sender=__name__, environ=environ)
        signals.request_finished.send(sender=__name__)

    def new_cycle():
        fastpath.request_started(environ)
        fastpath.request_finished()

    results.append(compare("request started/finished (connection checks)", old_cycle, new_cycle, **run))

    if args.role == "broker":
        from broker_app import selectors

        old_selectors = _load(base, "broker_app/selectors.py", "old_broker_selectors")
        from dromos.db import execute_fixed

        old_db = _load(base, "dromos/db/__init__.py", "old_dromos_db")
        sql, _ = selectors._token_query(True)
        results.append(
            compare(
                "execute_fixed (the token SELECT)",
                lambda: old_db.execute_fixed(sql, [rng.choice(ids), "bench", wire.DEFAULT_ENVIRONMENT], fetch=True),
                lambda: execute_fixed(sql, [rng.choice(ids), "bench", wire.DEFAULT_ENVIRONMENT], fetch=True),
                **run,
            )
        )
        from broker_app import fast_token

        old_fast_token = _load(base, "broker_app/fast_token.py", "old_broker_fast_token")
        results.append(
            compare(
                "client address check",
                lambda: old_fast_token._client_ip(environ),
                lambda: fast_token._client_ip(environ),
                **run,
            )
        )
        results.append(
            compare(
                "token row SELECT + instance",
                lambda: old_selectors.connection_for_token(connection_id=rng.choice(ids), workspace="bench"),
                lambda: selectors.connection_for_token(connection_id=rng.choice(ids), workspace="bench"),
                **run,
            )
        )
    else:
        from gateway_app import keys, metrics, ratelimit

        old_ratelimit = _load(base, "gateway_app/ratelimit.py", "old_gateway_ratelimit")

        def old_observe_broker_call(method: str, path: str, outcome: str, started: float) -> None:
            # The code before the lever (loading the old module would register its metrics twice).
            operation = metrics.operation_of(method, path)
            metrics.BROKER_CALL_SECONDS.labels(operation=operation, outcome=outcome).observe(
                time.perf_counter() - started
            )
            if method == "GET" and operation.endswith("/{id}/token"):
                metrics.TOKEN_FETCHES.labels(outcome=outcome).inc()

        old_keys = _load(base, "gateway_app/keys.py", "old_gateway_keys")
        check = dict(marker="bench:levers:revoked", key="bench:levers", limit=10**9, window=60)
        results.append(
            compare(
                "Redis EVALSHA (revocation + throttle)",
                lambda: old_ratelimit.revoked_or_rate_limited(**check),
                lambda: ratelimit.revoked_or_rate_limited(**check),
                **run,
            )
        )
        path = "/internal/v1/connections/c_0123456789abcdef/token"
        results.append(
            compare(
                "broker-call metrics",
                lambda: old_observe_broker_call("GET", path, "200", started),
                lambda: metrics.observe_broker_call("GET", path, "200", started),
                **run,
            )
        )
        results.append(
            compare(
                "revocation marker key",
                lambda: old_keys.revocation_marker_key("abcd1234"),
                lambda: keys.revocation_marker_key("abcd1234"),
                **run,
            )
        )
    if args.role == "broker":  # what the broker's fast path spends on each piece now
        from broker_app.audit import Actor, audit_record
        from broker_app.services.token_view import token_view

        actor = Actor(name="apikey:abcd1234", workspace="bench", ip="127.0.0.1")
        row = selectors.connection_for_token(connection_id=ids[0], workspace="bench")
        pieces = {
            "audit INSERT (client side)": lambda: audit_record(
                connection_id=row.id, workspace="bench", environment=row.environment, actor=actor, action="token.read"
            ),
            "decryption + token view": lambda: token_view(row),
        }
        for label, fn in pieces.items():
            results.append(compare(label, fn, fn, **run))
    print("BENCH_JSON " + json.dumps({"role": args.role, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
