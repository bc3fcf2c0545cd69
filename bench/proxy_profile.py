"""Where the gateway's time goes on a proxied GET (issue 15): the stack proxy_bench.py starts
(broker, npm oidc-provider, PostgreSQL, Redis), then the gateway's WSGI application loaded in
this process and called directly (no gunicorn, no socket to the agent), one call at a time:

    .venv/bin/python bench/proxy_profile.py                    # cProfile, top functions
    .venv/bin/python bench/proxy_profile.py --calls 3000 --sort tottime
    .venv/bin/python bench/proxy_profile.py --py-spy 20   # sample the real gunicorn gateway instead

With --py-spy SECONDS the calls go over HTTP to the stack's gunicorn gateway (one call at a
time, as proxy_bench.py makes them) while py-spy samples its worker's CPU (idle and waiting
threads excluded); prints the functions by own and by inclusive share of the samples.

Prints the in-process time per call (the gateway's own work plus the upstream and broker
hops it waits for) and the profile. A fresh database as proxy_bench.py (BENCH_DATABASE_URL,
default `<DATABASE_URL's name>_proxybench`, dropped and recreated; BENCH_REDIS_URL)."""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
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

RETURN_URL = "http://127.0.0.1:1/bench/return"


def _connect(stack: Stack) -> str:
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
    return started["connection_id"]


def _py_spy(stack: Stack, cid: str, args) -> None:
    import subprocess

    session = requests.Session()
    url, headers = f"{stack.gateway_url}/v1/proxy/{cid}{args.path}", {"Authorization": f"Bearer {stack.api_key}"}
    for _ in range(200):
        session.get(url, headers=headers, timeout=30)
    master = stack.processes["gateway"].pid
    worker = int(Path(f"/proc/{master}/task/{master}/children").read_text().split()[0])
    out = Path(tempfile.mkdtemp(prefix="proxy-pyspy-")) / "gateway.txt"
    py_spy = str(ROOT / ".venv" / "bin" / "py-spy")
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(worker), "--rate", "1000", "--format", "raw", "--nonblocking", "--gil"]
        + ["--duration", str(int(args.py_spy)), "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    calls, deadline = 0, time.monotonic() + args.py_spy
    while time.monotonic() < deadline:
        session.get(url, headers=headers, timeout=30)
        calls += 1
    spy.wait(60)
    print(f"{calls} proxied calls in {args.py_spy:g} s (samples: {out})")
    _print_samples(out, args.top)


def _print_samples(path: Path, top: int) -> None:
    """py-spy's raw output ("frame (file:line);… count" per line) by function."""
    import re
    from collections import Counter

    own, inclusive, total = Counter(), Counter(), 0
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack_text.split(";") if frame]
        if not frames:
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} samples of the gateway worker's CPU\n\nown time")
    for frame, n in own.most_common(top):
        print(f"{100 * n / total:5.1f}%  {frame}")
    print("\ninclusive time")
    for frame, n in inclusive.most_common(top * 2):
        print(f"{100 * n / total:5.1f}%  {frame}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--path", default="/me")
    parser.add_argument("--save", help="also write the cProfile data to this file (pstats)")
    parser.add_argument("--py-spy", type=float, default=0, help="seconds of py-spy sampling of the real gateway")
    args = parser.parse_args()

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos")
    database_url = os.environ.get("BENCH_DATABASE_URL") or base.rsplit("/", 1)[0] + "/" + (
        base.rsplit("/", 1)[1] + "_proxybench"
    )
    reset_postgres_database(database_url)
    stack = Stack(
        workdir=Path(tempfile.mkdtemp(prefix="proxy-profile-")),
        database_url=database_url,
        redis_url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7"),
        celery=False,
        gateway_workers=1,
        broker_workers=1,
        extra_env={"API_KEY_RATE_LIMIT": "1000000/min", "LOG_LEVEL": "WARNING"},
    )
    stack.start()
    try:
        cid = _connect(stack)
        if args.py_spy:
            _py_spy(stack, cid, args)
            return 0
        os.environ.update({**stack.env, "DJANGO_SETTINGS_MODULE": "dromos.settings.gateway"})
        from dromos.wsgi import application

        def call() -> int:
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": f"/v1/proxy/{cid}{args.path}",
                "RAW_URI": f"/v1/proxy/{cid}{args.path}",
                "QUERY_STRING": "",
                "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": "8000",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "REMOTE_ADDR": "127.0.0.1",
                "HTTP_HOST": "127.0.0.1:8000",
                "HTTP_AUTHORIZATION": f"Bearer {stack.api_key}",
                "HTTP_ACCEPT": "*/*",
                "HTTP_USER_AGENT": "proxy-profile",
                "wsgi.input": io.BytesIO(b""),
                "wsgi.url_scheme": "http",
                "wsgi.errors": sys.stderr,
                "wsgi.multithread": True,
                "wsgi.multiprocess": False,
                "wsgi.run_once": False,
                "wsgi.version": (1, 0),
            }
            status = []
            body = application(environ, lambda s, h, exc_info=None: status.append(s))
            try:
                for _ in body:
                    pass
            finally:
                if hasattr(body, "close"):
                    body.close()
            return int(status[0].split()[0])

        for _ in range(200):
            code = call()
            if code != 200:
                raise SystemExit(f"the proxied call answered {code}")
        times = []
        cpu_start = time.process_time()
        for _ in range(args.calls):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        cpu = (time.process_time() - cpu_start) * 1000 / args.calls
        print(
            f"in-process proxied GET: p50 {statistics.median(times):.2f} ms, "
            f"p90 {sorted(times)[int(len(times) * 0.9)]:.2f} ms, CPU {cpu:.2f} ms per call ({args.calls} calls)"
        )
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.calls):
            call()
        profile.disable()
        if args.save:
            profile.dump_stats(args.save)
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(args.sort).print_stats(args.top)
        print(out.getvalue())
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
