"""Operations tests: real processes started exactly as the Docker image starts them.

`ops_stack` is devtools/stack.py's Stack (real OIDC provider, migrations, a provider, an
API key) whose gateway, broker and Celery worker are launched through
docker/entrypoint.sh ROLE — the image's own command lines, gunicorn config, Prometheus
multiprocess directories — against a fresh PostgreSQL database and Redis."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "devtools"))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from oidc_consent import complete_consent  # noqa: E402
from oidc_server import free_port  # noqa: E402
from stack import Stack, reset_postgres_database  # noqa: E402

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
ARTIFACTS = ROOT / "artifacts"
RETURN_URL = "http://127.0.0.1:1/oauth/return"  # nothing listens: the consent walk stops there


def sibling_database(suffix: str) -> str:
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos")
    head, name = base.rsplit("/", 1)
    return f"{head}/{name}_{suffix}"


def entrypoint_env(base: dict[str, str], workdir: Path, name: str) -> dict[str, str]:
    """What the container environment provides, for one role, on this machine."""
    return {**base, "PYTHON": sys.executable, "TMPDIR": str(workdir),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / f"prometheus-{name}")}


class EntrypointStack(Stack):
    """Every long-running process goes through docker/entrypoint.sh ROLE."""

    worker_metrics_port: int = 0

    def _spawn(self, name: str, args: list[str], role: str) -> None:
        env = entrypoint_env(self.env, self.workdir, name)
        port = {"broker": self.broker_port, "gateway": self.gateway_port}.get(name)
        if port:
            env.update(BIND=f"127.0.0.1:{port}", GUNICORN_WORKERS="2", GUNICORN_THREADS="4")
        if name == "worker":
            self.worker_metrics_port = free_port()
            env.update(CELERY_CONCURRENCY="2", CELERY_METRICS_PORT=str(self.worker_metrics_port),
                       CELERY_METRICS_ADDR="127.0.0.1")
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.processes[name] = subprocess.Popen([str(ENTRYPOINT), name], env=env, cwd=ROOT, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def gw(self, method: str, path: str, key: str | None = None, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {key or self.api_key}", **kwargs.pop("headers", {})}
        return requests.request(method, self.gateway_url + path, headers=headers, timeout=30, **kwargs)

    def broker_get(self, path: str, **kwargs) -> requests.Response:
        headers = {"X-API-Key": self.env["BROKER_API_KEY"], **kwargs.pop("headers", {})}
        return requests.get(self.broker_url + path, headers=headers, timeout=30, **kwargs)

    def new_key(self, workspace: str) -> str:
        return self.manage("gateway", "apikey", "create", "--workspace", workspace, "--name", "ops").stdout.split()[-1]

    def connect(self, key: str, *, user_id: str = "user-ops", login: str = "alice", deny: bool = False) -> str:
        """A connection through the real consent flow; returns its id (active, or failed when denied)."""
        started = self.gw("POST", "/v1/request-connection", key, json={
            "user_id": user_id, "provider_name": "local", "scopes": ["openid", "email", "offline_access"],
            "return_url": RETURN_URL})
        assert started.status_code == 201, started.text
        complete_consent(started.json()["authUrl"], login=login, deny=deny, stop_at_prefix=RETURN_URL)
        return started.json()["connection_id"]

    def json_log(self, name: str) -> list[dict]:
        lines = []
        for line in self.log(name).splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass
        return lines


@pytest.fixture(scope="session")
def ops_stack(tmp_path_factory, _redis_database_per_worker):
    from django.conf import settings

    database_url = sibling_database("stack")
    reset_postgres_database(database_url)
    stack = EntrypointStack(
        workdir=tmp_path_factory.mktemp("ops-stack"), database_url=database_url,
        redis_url=settings.REDIS_URL, celery=True, beat=False,
        extra_env={"WEBHOOK_RETRY_BASE_SECONDS": "1", "WEBHOOK_ALLOW_HTTP_HOSTS": "127.0.0.1",
                   "METRICS_CONNECTIONS_CACHE_SECONDS": "0"},
    )
    stack.start()
    try:
        wait_for(lambda: _get_ok(f"http://127.0.0.1:{stack.worker_metrics_port}/metrics"), "worker metrics", 60)
        yield stack
    finally:
        stack.stop()


def _get_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_for(predicate, what: str, timeout: float = 30, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(autouse=True)
def _clear_process_caches():
    """As tests/conftest.py's, but deleting only Django's cache keys: a FLUSHDB would also
    drop the Celery queues and bindings of `ops_stack`, which shares this Redis database."""
    import redis
    from django.conf import settings

    from gateway_app import services

    services.cache_clear()
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=":*", count=1000):
        client.delete(key)
    yield


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sample `name{labels}` in Prometheus text, 0 when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def random_id(prefix: str = "ops") -> str:
    return f"{prefix}-{secrets.token_hex(8)}"
