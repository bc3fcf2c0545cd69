"""Prometheus metrics of Celery workers (refresh outcomes, webhook deliveries …).

A worker serves no HTTP, so with CELERY_METRICS_PORT set its main process starts a small
/metrics server. Pool processes write to PROMETHEUS_MULTIPROC_DIR (docker/entrypoint.sh
gives every role its own), which is emptied when the worker starts; the server sums them."""

from __future__ import annotations

import glob
import logging
import os

from celery.signals import worker_init, worker_process_shutdown

from dromos.env import env_int, env_str

logger = logging.getLogger(__name__)


def _multiproc_dir() -> str | None:
    return env_str("PROMETHEUS_MULTIPROC_DIR")


@worker_init.connect
def start_metrics_server(**kwargs) -> None:
    port = env_int("CELERY_METRICS_PORT", 0)
    if not port:
        return
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

    directory = _multiproc_dir()
    registry = REGISTRY
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    # All interfaces by default: Prometheus scrapes the worker from its network (CELERY_METRICS_ADDR narrows it).
    start_http_server(port, addr=env_str("CELERY_METRICS_ADDR", "0.0.0.0"), registry=registry)  # noqa: S104  # nosec B104
    logger.info("worker metrics served", extra={"port": port})


@worker_process_shutdown.connect
def mark_process_dead(pid=None, **kwargs) -> None:
    if _multiproc_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
