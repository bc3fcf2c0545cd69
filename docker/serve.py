"""The gateway's and the broker's HTTP server: granian (a Rust HTTP server, WSGI interface),
started by docker/entrypoint.sh (`HTTP_SERVER=gunicorn` starts gunicorn with
docker/gunicorn.conf.py instead). Issue 20 measured both on the token path: granian's HTTP
handling costs a tenth of gunicorn's (docs/benchmarks.md).

Every value comes from the environment with a production default:

- BIND (default 0.0.0.0:$PORT, PORT default 8000; `unix:/path` for a Unix socket),
  WEB_WORKERS (one per CPU, 2 to 8), WEB_THREADS (8 per worker: the waits on the database,
  the broker and providers; the gateway's slow-call bulkheads are sized for 8);
  GUNICORN_WORKERS / GUNICORN_THREADS are read when the WEB_ ones are unset.
- Recycling, as gunicorn's max_requests did: a worker is replaced after WEB_WORKER_LIFETIME
  seconds (default 6 h, never under 60) or when its resident memory stays above
  WEB_WORKER_MAX_RSS MiB (default 300) — bounded memory whatever a dependency leaks. A worker
  that dies is respawned. A stopping worker gets WEB_GRACEFUL_TIMEOUT seconds (30) to finish.
- Logs: granian's own messages as JSON lines on stderr (dromos.logging.JsonFormatter); its
  access log stays off: the app logs one JSON line per request (dromos.request) with the
  request id and without the query string.
- Prometheus: PROMETHEUS_MULTIPROC_DIR is emptied before the workers start; a replaced
  worker's files are merged by the next worker that starts (dromos/wsgi.py).

Not carried over from gunicorn (docs/operations.md): its worker timeout (a worker whose main
loop stopped answering for GUNICORN_TIMEOUT seconds was killed; granian's runtime is not
Python, and a stuck request holds one thread, as under gunicorn's threads), and
FORWARDED_ALLOW_IPS (granian reads no forwarded header; Django's BEHIND_TLS_PROXY decides the
scheme, as it did)."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _number(env: Mapping[str, str], *names: str, default: int, minimum: int = 1) -> int:
    for name in names:
        value = (env.get(name) or "").strip()
        if value:
            try:
                number = int(value)
            except ValueError:
                raise SystemExit(f"{name} must be a whole number, not {value!r}") from None
            if number < minimum:
                raise SystemExit(f"{name} must be at least {minimum}, not {number}")
            return number
    return default


def options(env: Mapping[str, str] = os.environ) -> dict:
    """granian.Granian's arguments for this environment."""
    from granian.constants import Interfaces
    from granian.log import LogLevels

    cpus = os.cpu_count() or 1
    bind = env.get("BIND") or f"0.0.0.0:{env.get('PORT') or '8000'}"
    where: dict = {}
    if bind.startswith("unix:"):
        where["uds"] = Path(bind.removeprefix("unix:"))
    else:
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit():
            raise SystemExit(f"BIND must be HOST:PORT or unix:PATH, not {bind!r}")
        where.update(address=host.strip("[]"), port=int(port))
    level = (env.get("LOG_LEVEL") or "INFO").lower()
    return {
        "target": "dromos.wsgi:application",
        **where,
        "interface": Interfaces.WSGI,
        "workers": _number(env, "WEB_WORKERS", "GUNICORN_WORKERS", default=max(2, min(cpus, 8))),
        "blocking_threads": _number(env, "WEB_THREADS", "GUNICORN_THREADS", default=8),
        "runtime_threads": 1,
        "websockets": False,
        "respawn_failed_workers": True,
        "workers_lifetime": _number(env, "WEB_WORKER_LIFETIME", default=6 * 3600, minimum=60),
        "workers_max_rss": _number(env, "WEB_WORKER_MAX_RSS", default=300),
        "workers_kill_timeout": _number(env, "WEB_GRACEFUL_TIMEOUT", default=30),
        "log_level": LogLevels(level) if level in LogLevels.__members__ else LogLevels.info,
        "log_dictconfig": {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": "dromos.logging.JsonFormatter"}},
            "handlers": {
                "console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
            },
            "loggers": {
                "_granian": {"handlers": ["console"], "propagate": False},
                "granian.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            },
        },
        "log_access": False,
        "working_dir": ROOT,
    }


def empty_metrics_directory(env: Mapping[str, str] = os.environ) -> None:
    """A fresh PROMETHEUS_MULTIPROC_DIR for this server's workers (gunicorn.conf's on_starting)."""
    directory = env.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)


def main() -> None:
    from granian import Granian

    if sys.argv[1:]:
        raise SystemExit(
            "docker/serve.py takes no arguments: set WEB_WORKERS, WEB_THREADS, BIND… "
            "(HTTP_SERVER=gunicorn passes arguments to gunicorn)"
        )
    settings = options()
    empty_metrics_directory()
    sys.path.insert(0, str(ROOT))
    Granian(**settings).serve()


if __name__ == "__main__":
    main()
