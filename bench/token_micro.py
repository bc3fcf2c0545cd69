"""In-process CPU per token request of one role's WSGI application (issue 20's levers).

    .venv/bin/python bench/token_bench.py --scales 10000 --audit-rows 0 --hold &   # a seeded stack
    .venv/bin/python bench/token_micro.py --stack STACK_JSON --role broker -n 3000
    .venv/bin/python bench/token_micro.py --stack STACK_JSON --role gateway -n 3000

STACK_JSON is the line `--hold` prints (or a file holding it). The script loads the role's
settings with the held stack's environment (its database, Redis, keys; the gateway calls the
held stack's broker over HTTP), builds dromos.wsgi's application and calls it n times in one
thread with a random seeded connection id (and, for the gateway, a random API key), timing
this process's CPU (time.process_time) per request. The access log goes to --log (a file, as
under the server). The tree measured is the one on PYTHONPATH (run it from another checkout to
compare code versions, alternately, on the same minute).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path


def enter_held_stack(stack_arg: str, role: str, log: str) -> dict:
    """This process configured as `role` of the stack `token_bench.py --hold` keeps up (its JSON
    line, or the file holding it): the stack's environment, the role's settings, no Prometheus
    multiprocess directory; log lines (written to stderr) go to `log`. The stack's description."""
    raw = stack_arg if stack_arg.lstrip().startswith("{") else Path(stack_arg).read_text()
    stack = json.loads(next(line for line in raw.splitlines() if line.startswith("{")))
    for line in Path(stack["env_file"]).read_text().splitlines():
        name, _, value = line.partition("=")
        os.environ[name] = shlex.split(value)[0] if value else ""
    os.environ["DJANGO_SETTINGS_MODULE"] = f"dromos.settings.{role}"
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    sys.stderr = open(log, "a")  # noqa: SIM115 - the log handler writes to sys.stderr
    return stack


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stack", required=True, help="the JSON line token_bench.py --hold prints, or its file")
    parser.add_argument("--role", choices=("broker", "gateway"), required=True)
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--log", default=os.devnull, help="where the JSON log lines go")
    parser.add_argument("--profile", help="write a cProfile of the measured loop here")
    args = parser.parse_args()

    stack = enter_held_stack(args.stack, args.role, args.log)

    from dromos.wsgi import application

    ids = Path(stack["ids"]).read_text().split()
    keys = Path(stack["keys"]).read_text().split("\n")
    keys = [k for k in keys if k]
    rng = random.Random(1)
    host, port = stack[args.role].removeprefix("http://").split(":")

    def environ() -> dict:
        cid = rng.choice(ids)
        env = {
            "REQUEST_METHOD": "GET",
            "QUERY_STRING": "",
            "SCRIPT_NAME": "",
            "SERVER_NAME": host,
            "SERVER_PORT": port,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": f"{host}:{port}",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
        }
        if args.role == "broker":
            env["PATH_INFO"] = f"/internal/v1/connections/{cid}/token"
            env["HTTP_X_API_KEY"] = stack["broker_key"]
            env["HTTP_X_DROMOS_WORKSPACE"] = "bench"
        else:
            env["PATH_INFO"] = f"/v1/token/{cid}"
            env["HTTP_AUTHORIZATION"] = rng.choice(keys)
        return env

    statuses: dict[str, int] = {}

    def start_response(status, headers, exc_info=None):
        statuses[status] = statuses.get(status, 0) + 1

    def run(n: int) -> None:
        for _ in range(n):
            b"".join(application(environ(), start_response))

    run(args.warmup)
    statuses.clear()
    # The environ's construction is measured alone and subtracted.
    started = time.process_time()
    for _ in range(args.n):
        environ()
    overhead = time.process_time() - started
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
    wall = time.perf_counter()
    started = time.process_time()
    run(args.n)
    cpu = time.process_time() - started - overhead
    wall = time.perf_counter() - wall
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    print(
        json.dumps(
            {
                "role": args.role,
                "tree": os.environ.get("PYTHONPATH", ""),
                "n": args.n,
                "cpu_us_per_request": round(cpu / args.n * 1e6, 1),
                "wall_us_per_request": round(wall / args.n * 1e6, 1),
                "statuses": statuses,
            }
        )
    )
    return 0 if set(statuses) == {"200 OK"} else 1


if __name__ == "__main__":
    sys.exit(main())
