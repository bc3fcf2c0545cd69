"""Gunicorn settings for the gateway and broker roles (docker/entrypoint.sh passes --config).

Every value comes from the environment with a production default:

- BIND (default 0.0.0.0:$PORT, PORT default 8000), GUNICORN_WORKERS (one per CPU, 2 to 8),
  GUNICORN_THREADS (8), GUNICORN_TIMEOUT (60), FORWARDED_ALLOW_IPS (127.0.0.1).
- Logs: gunicorn's own messages as JSON lines on stderr. Gunicorn's access log stays off:
  the app logs one JSON line per request (dromos.request) with the request id and without
  the query string (the OAuth callback's query carries the code and state).
- Prometheus: PROMETHEUS_MULTIPROC_DIR is emptied when the master starts and a dead
  worker's files are merged, so /metrics sums every worker.
"""

import glob
import os

from gunicorn import glogging

_cpus = os.cpu_count() or 1

bind = os.environ.get("BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# gthread workers: one process per core, threads for the waits (database, broker, provider).
# 2 × CPUs + 1 is the rule for sync workers; with 8 threads each it only adds GIL and
# context-switch overhead and memory (docs/benchmarks.md, issue 7).
workers = int(os.environ.get("GUNICORN_WORKERS") or max(2, min(_cpus, 8)))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS") or 8)
timeout = int(os.environ.get("GUNICORN_TIMEOUT") or 60)
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then: bounded memory whatever a dependency leaks. Not too often:
# a new worker costs about half a second of CPU to import the app (issue 7).
max_requests = 50000
max_requests_jitter = 5000
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# Heartbeat files in memory, not on a possibly slow container filesystem (gunicorn makes them
# itself, private to its workers; nothing else is written there).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108  # nosec B108
accesslog = None
errorlog = "-"


class Logger(glogging.Logger):
    """Gunicorn builds its access-log line for every request as soon as a logging config is
    given (logconfig_dict below), even with the access log off; skip that work."""

    def access(self, resp, req, environ, request_time):
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)


logger_class = Logger
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "dromos.logging.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "loggers": {
        "gunicorn.error": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO"), "propagate": False},
        "gunicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
    },
}


def on_starting(server):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
