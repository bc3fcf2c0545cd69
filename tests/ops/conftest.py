"""Operations tests: real processes started exactly as the Docker image starts them.

`ops_stack` is devtools/stack.py's Stack (real OIDC provider, migrations, a provider, an
API key) whose gateway, broker and Celery worker are launched through
docker/entrypoint.sh ROLE — the image's own command lines, granian's options, Prometheus
multiprocess directories — against a fresh PostgreSQL database and Redis."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "devtools"))

from oidc_consent import complete_consent  # noqa: E402
from oidc_server import free_port  # noqa: E402
from stack import CLIENT_ID, Stack, reset_postgres_database  # noqa: E402

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
ARTIFACTS = ROOT / "artifacts"
RETURN_URL = "http://127.0.0.1:1/oauth/return"  # nothing listens: the consent walk stops there


def sibling_database(suffix: str) -> str:
    """A database of its own next to the test database (one per xdist worker)."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos")
    head, name = base.rsplit("/", 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"{head}/{name}_{suffix}{'_' + worker if worker else ''}"


def entrypoint_env(base: dict[str, str], workdir: Path, name: str) -> dict[str, str]:
    """What the container environment provides, for one role, on this machine."""
    return {
        **base,
        "PYTHON": sys.executable,
        "TMPDIR": str(workdir),
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / f"prometheus-{name}"),
    }


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
            env.update(
                CELERY_CONCURRENCY="2",
                CELERY_METRICS_PORT=str(self.worker_metrics_port),
                CELERY_METRICS_ADDR="127.0.0.1",
            )
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.processes[name] = subprocess.Popen(
            [str(ENTRYPOINT), name], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def gw(self, method: str, path: str, key: str | None = None, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {key or self.api_key}", **kwargs.pop("headers", {})}
        return requests.request(method, self.gateway_url + path, headers=headers, timeout=30, **kwargs)

    def broker_get(self, path: str, **kwargs) -> requests.Response:
        headers = {"X-API-Key": self.env["BROKER_API_KEY"], **kwargs.pop("headers", {})}
        return requests.get(self.broker_url + path, headers=headers, timeout=30, **kwargs)

    def new_key(self, workspace: str, *scopes: str) -> str:
        flags = [arg for scope in scopes for arg in ("--scope", scope)]
        return self.manage(
            "gateway", "apikey", "create", "--workspace", workspace, "--name", "ops", *flags
        ).stdout.split()[-1]

    def connect(
        self, key: str, *, user_id: str = "user-ops", login: str = "alice", deny: bool = False, provider: str = "local"
    ) -> str:
        """A connection through the real consent flow; returns its id (active, or failed when denied)."""
        started = self.gw(
            "POST",
            "/v1/request-connection",
            key,
            json={
                "user_id": user_id,
                "provider_name": provider,
                "scopes": ["openid", "email", "offline_access"],
                "return_url": RETURN_URL,
            },
        )
        assert started.status_code == 201, started.text
        complete_consent(started.json()["authUrl"], login=login, deny=deny, stop_at_prefix=RETURN_URL)
        return started.json()["connection_id"]

    def db(self):
        """A connection to the stack's own database (the test database is another one)."""
        import psycopg

        return psycopg.connect(self.database_url, autocommit=True)

    def deliveries_settled(self, workspace: str) -> bool:
        """No delivery of the workspace's webhooks is still pending (the worker stores the
        outcome just after the receiver has answered)."""
        with self.db() as conn:
            return not conn.execute(
                "SELECT 1 FROM broker_app_webhookdelivery d JOIN broker_app_webhookendpoint e ON e.id = d.endpoint_id "
                "WHERE e.workspace = %s AND d.status = 'pending' LIMIT 1",
                [workspace],
            ).fetchone()

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
        workdir=tmp_path_factory.mktemp("ops-stack"),
        database_url=database_url,
        redis_url=settings.REDIS_URL,
        celery=True,
        beat=False,
        extra_env={
            "WEBHOOK_RETRY_BASE_SECONDS": "1",
            "WEBHOOK_MAX_ATTEMPTS": "3",
            "WEBHOOK_ALLOW_HTTP_HOSTS": "127.0.0.1",
            "METRICS_CONNECTIONS_CACHE_SECONDS": "0",
        },
    )
    stack.start()
    try:
        wait_for(lambda: _get_ok(f"http://127.0.0.1:{stack.worker_metrics_port}/metrics"), "worker metrics", 60)
        yield stack
    finally:
        stack.stop()


def start_role(role: str, env: dict[str, str], workdir: Path, port: int) -> subprocess.Popen:
    """One more gateway or broker (one worker) through the entrypoint, next to the stack."""
    env = {
        **entrypoint_env(env, workdir, f"{role}-{port}"),
        "BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "1",
        "GUNICORN_THREADS": "2",
    }
    log = open(workdir / f"{role}-{port}.log", "ab")  # noqa: SIM115 - owned by the process
    return subprocess.Popen(
        [str(ENTRYPOINT), role], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def http_status(url: str, **headers: str) -> int | None:
    try:
        return requests.get(url, headers=headers, timeout=5).status_code
    except requests.RequestException:
        return None


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

    from gateway_app import keys

    keys.cache_clear()
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


# -- small HTTP servers the tests run next to the stack ---------------------------------------------


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class WebhookReceiver:
    """A workspace's webhook endpoint: records every POST and answers the statuses a test
    scripts per path (then 200)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.received.append(Received(time.monotonic(), self.path, dict(self.headers), body))
                    script = receiver.scripts.get(self.path) or []
                    status = script.pop(0) if script else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, event: str, connection_id: str, *, timeout: float = 30) -> Received:
        def found():
            for r in self.at(path):
                if r.headers.get("Dromos-Event") == event and r.json()["data"]["connection_id"] == connection_id:
                    return r
            return None

        return wait_for(found, f"{event} for {connection_id} at {path}", timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def webhook_receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


class TokenProxy:
    """Stands in front of the OIDC provider's token endpoint; while `failing` it answers 503
    (a provider outage, as the refresh service sees one)."""

    def __init__(self, target: str) -> None:
        self.target, self.failing, self.calls = target, False, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                proxy.calls += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.failing:
                    status, payload, content_type = 503, b'{"error":"temporarily_unavailable"}', "application/json"
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                    answer = requests.post(proxy.target, data=body, headers=headers, timeout=10)
                    status, payload = answer.status_code, answer.content
                    content_type = answer.headers.get("Content-Type", "application/json")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def flaky_provider(ops_stack):
    """A second provider on the same OIDC server whose token endpoint the test can take down."""
    proxy = TokenProxy(ops_stack.oidc.metadata["token_endpoint"])
    ops_stack.manage(
        "broker",
        "provider",
        "upsert",
        "--name",
        "flaky",
        "--template",
        "oidc",
        "--discovery-url",
        ops_stack.oidc.discovery_url,
        "--token-url",
        proxy.url,
        "--client-id",
        CLIENT_ID,
        f"--client-secret={ops_stack.client_secret}",
        "--default-scopes",
        "openid email offline_access",
        "--authorize-param",
        "prompt=consent",
    )
    yield proxy
    proxy.close()
