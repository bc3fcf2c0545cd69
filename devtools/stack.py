"""Start the whole Dromos system as real processes: the local OIDC provider, the broker
and the gateway (gunicorn, production settings), and optionally a Celery worker and beat.

Used by `make run` (embedded default: SQLite, no Redis), by the end-to-end tests and the
SDK live tests (PostgreSQL + Redis), and by the benchmarks.

    python devtools/stack.py up [--embedded] [--workdir var/stack] [--no-celery]

prints the environment an agent needs (DROMOS_GATEWAY_URL, DROMOS_API_KEY …) and the broker
admin's URL with a local admin user and its random password (printed once), writes the
stack's own environment (secrets, database) to WORKDIR/stack.env, and keeps running until
interrupted. Any manage.py command against that running stack:

    python devtools/stack.py manage broker|gateway COMMAND [ARGS…] [--workdir var/stack]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from oidc_server import OidcProviderHandle, free_port, start_oidc_provider  # devtools/, next to this file

ROOT = Path(__file__).resolve().parent.parent

PYTHON = sys.executable
PROVIDER_NAME = "local"
CLIENT_ID = "dromos-local"
# A machine-only client of the local provider (client_credentials, issue 18): what an agent
# gives as its connection's own client_id / client_secret.
M2M_CLIENT_ID = "dromos-m2m"
ADMIN_USER = "admin"
ENV_FILE = "stack.env"  # in the workdir: what `stack.py manage` runs manage.py with


def _key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


@dataclass
class Stack:
    workdir: Path
    database_url: str | None = None
    redis_url: str | None = None
    celery: bool = True
    beat: bool = True
    gateway_port: int = 0
    broker_port: int = 0
    oidc_port: int = 0
    gateway_workers: int = 2
    broker_workers: int = 2
    # "gunicorn" (default here: its access log masks the connect page's token) or "granian",
    # the image's server, run exactly as docker/serve.py runs it.
    http_server: str = "gunicorn"
    access_token_ttl: int = 3600
    extra_env: dict[str, str] = field(default_factory=dict)
    # More variables for one process only, by its name (broker, gateway, worker, beat).
    process_env: dict[str, dict[str, str]] = field(default_factory=dict)
    oidc_env: dict[str, str] = field(default_factory=dict)  # the oidc-provider's (DEVICE_CODE_TTL …)
    quiet: bool = True
    # Also register the local provider as "google", so that the integration guide's snippet
    # (ProviderName: "Google"; names match case-insensitively) runs unchanged against the stack.
    guide_provider: bool = False

    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    oidc: OidcProviderHandle | None = None
    api_key: str = ""
    env: dict[str, str] = field(default_factory=dict)
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    m2m_client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.broker_port}"

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL"))}
        env.update(self._own_env())
        return env

    def _own_env(self) -> dict[str, str]:
        """The variables the stack itself sets (what `stack.env` holds)."""
        env = {
            "PYTHONPATH": str(ROOT),
            "DEBUG": "false",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(32),
            "BROKER_API_KEY": secrets.token_urlsafe(32),
            # The gateway's /readyz and /metrics need it (dromos/ops_auth.py): ops_headers().
            "GATEWAY_OPS_TOKEN": secrets.token_urlsafe(24),
            "TOKEN_ENCRYPTION_KEYS": _key(),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "BASE_URL": self.broker_url,
            "BROKER_INTERNAL_URL": self.broker_url,
            "ALLOWED_RETURN_DOMAINS": "127.0.0.1:*,localhost:*,app.example.com",
            "ALLOW_HTTP_PROVIDER_HOSTS": "127.0.0.1,localhost",
            # The local OIDC provider's API (its userinfo endpoint) is on this machine.
            "PROXY_ALLOWED_PRIVATE_HOSTS": "127.0.0.1,localhost",
            "DROMOS_VAR_DIR": str(self.workdir),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        }
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        env.update(self.extra_env)
        return env

    def write_env_file(self) -> Path:
        """WORKDIR/stack.env (mode 0600): the stack's own variables, for `stack.py manage`."""
        own = {k: self.env[k] for k in self._own_env()}
        path = self.workdir / ENV_FILE
        path.touch(mode=0o600)
        path.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(own.items())))
        return path

    def create_admin(self, username: str = ADMIN_USER) -> str:
        """A superuser for the broker admin with a random password (returned, shown once)."""
        password = secrets.token_urlsafe(12)
        env = {**self.env, "DJANGO_SETTINGS_MODULE": "dromos.settings.broker", "DJANGO_SUPERUSER_PASSWORD": password}
        subprocess.run(
            [PYTHON, str(ROOT / "manage.py"), "createsuperuser", "--noinput", "--username", username, "--email", ""],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return password

    def manage(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**self.env, "DJANGO_SETTINGS_MODULE": f"dromos.settings.{role}"}
        result = subprocess.run(
            [PYTHON, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args[:2])} ({role}) failed:\n{result.stderr[-3000:]}")
        return result

    def _spawn(self, name: str, args: list[str], role: str) -> None:
        env = {**self.env, "DJANGO_SETTINGS_MODULE": f"dromos.settings.{role}", **self.process_env.get(name, {})}
        log = open(self.workdir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait_http(self, url: str, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{name} exited early:\n{self.log(name)[-3000:]}")
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not become healthy at {url}:\n{self.log(name)[-3000:]}")

    def ops_headers(self) -> dict[str, str]:
        """What an operator sends to the gateway's /readyz and /metrics."""
        return {"Authorization": f"Bearer {self.env['GATEWAY_OPS_TOKEN']}"}

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gateway_port = self.gateway_port or free_port()
        self.broker_port = self.broker_port or free_port()
        self.oidc_port = self.oidc_port or free_port()
        self.env = self._base_env()
        self.write_env_file()
        try:
            self.oidc = start_oidc_provider(
                self.oidc_port,
                [
                    {
                        "client_id": CLIENT_ID,
                        "client_secret": self.client_secret,
                        "redirect_uris": [f"{self.broker_url}/auth/callback"],
                        "token_endpoint_auth_method": "client_secret_basic",
                        "grant_types": [
                            "authorization_code",
                            "refresh_token",
                            "urn:ietf:params:oauth:grant-type:device_code",
                            "client_credentials",
                        ],
                    },
                    {
                        "client_id": M2M_CLIENT_ID,
                        "client_secret": self.m2m_client_secret,
                        "grant_types": ["client_credentials"],
                    },
                ],
                access_token_ttl=self.access_token_ttl,
                extra_env=self.oidc_env,
            )
            self.manage("broker", "migrate", "--noinput", "-v0")
            self.manage("gateway", "migrate", "--noinput", "-v0")
            names = [(PROVIDER_NAME, "Local OIDC provider (demo)")]
            if self.guide_provider:
                names.append(("google", "Google (stand-in: the local OIDC provider)"))
            for name, display_name in names:
                self.manage(
                    "broker",
                    "provider",
                    "upsert",
                    "--name",
                    name,
                    "--template",
                    "oidc",
                    "--display-name",
                    display_name,
                    "--discovery-url",
                    f"{self.oidc.issuer}/.well-known/openid-configuration",
                    "--client-id",
                    CLIENT_ID,
                    f"--client-secret={self.client_secret}",  # may start with "-"
                    "--default-scopes",
                    "openid email profile offline_access",
                    "--authorize-param",
                    "prompt=consent",
                    # The API proxy's target: the provider's own base (userinfo at /me).
                    "--api-base-url",
                    self.oidc.issuer,
                )
            created = self.manage("gateway", "apikey", "create", "--workspace", "demo", "--name", "stack")
            self.api_key = created.stdout.strip().splitlines()[-1]
            gunicorn = [
                PYTHON,
                "-m",
                "gunicorn",
                "dromos.wsgi:application",
                "--access-logfile",
                "-",
                # path only (%(U)s): a query string can hold the callback's code and state
                "--access-logformat",
                '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms',
                # …and the connect page's token masked in it (issue 16)
                "--logger-class",
                "devtools.access_log.AccessLogger",
                "--timeout",
                "60",
                "--graceful-timeout",
                "5",
            ]
            for role, port, workers in (
                ("broker", self.broker_port, self.broker_workers),
                ("gateway", self.gateway_port, self.gateway_workers),
            ):
                if self.http_server == "granian":
                    self.process_env[role] = {
                        "BIND": f"127.0.0.1:{port}",
                        "WEB_WORKERS": str(workers),
                        "WEB_THREADS": "8",
                        "WEB_GRACEFUL_TIMEOUT": "5",
                        **self.process_env.get(role, {}),
                    }
                    self._spawn(role, [PYTHON, str(ROOT / "docker" / "serve.py")], role)
                else:
                    bind = ["-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "gthread", "--threads", "8"]
                    self._spawn(role, [*gunicorn, *bind], role)
            if self.celery:
                self._spawn(
                    "worker",
                    [
                        PYTHON,
                        "-m",
                        "celery",
                        "-A",
                        "dromos",
                        "worker",
                        "-l",
                        "INFO",
                        "-c",
                        "2",
                        "--without-gossip",
                        "--without-mingle",
                    ],
                    "broker",
                )
                if self.beat:
                    self._spawn(
                        "beat",
                        [
                            PYTHON,
                            "-m",
                            "celery",
                            "-A",
                            "dromos",
                            "beat",
                            "-l",
                            "INFO",
                            "-s",
                            str(self.workdir / "celerybeat-schedule"),
                        ],
                        "broker",
                    )
            self._wait_http(f"{self.broker_url}/healthz", "broker")
            self._wait_http(f"{self.gateway_url}/healthz", "gateway")
        except BaseException:
            self.stop()
            raise
        return self

    def agent_env(self) -> dict[str, str]:
        return {
            "DROMOS_GATEWAY_URL": self.gateway_url,
            "DROMOS_API_KEY": self.api_key,
            "DROMOS_E2E_PROVIDER": PROVIDER_NAME,
            "DROMOS_E2E_RETURN_URL": f"http://127.0.0.1:{free_port()}/oauth/return",
            "DROMOS_E2E_CONSENT_CMD": f"{PYTHON} {ROOT / 'devtools' / 'oidc_consent.py'}",
            "DROMOS_BROKER_URL": self.broker_url,
        }

    def stop(self) -> None:
        """SIGTERM to each main process: gunicorn and Celery stop their own workers (a signal
        to the whole process group kills Celery's pool under its feet, and its main process
        can then hang on exit for good). Up to 10 s, then SIGKILL to whatever is left in each
        process group. Another Ctrl-C meanwhile skips the wait, never the clean-up."""
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        try:
            deadline = time.monotonic() + 10
            for process in self.processes.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except KeyboardInterrupt:
            pass
        finally:
            for process in self.processes.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            self.processes.clear()
            if self.oidc is not None:
                self.oidc.stop()
                self.oidc = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def reset_postgres_database(url: str) -> None:
    """Drop and recreate the database named in `url` (tests and benchmarks only)."""
    from urllib.parse import urlsplit

    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def default_workdir() -> str:
    return os.environ.get("DROMOS_STACK_DIR") or str(ROOT / "var" / "stack")


def manage_running(workdir: Path, role: str, args: list[str]) -> int:
    """manage.py ARGS in ROLE's settings with the environment of the stack running in workdir."""
    path = workdir / ENV_FILE
    if not path.exists():
        print(f"no stack environment at {path}: start the stack first (make run)", file=sys.stderr)
        return 2
    own = dict(shlex.split(line)[0].split("=", 1) for line in path.read_text().splitlines() if line.strip())
    # The caller's environment passes through (DJANGO_SUPERUSER_PASSWORD for createsuperuser
    # --noinput, say); the stack's own variables win, and its database is the one used.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(own, DJANGO_SETTINGS_MODULE=f"dromos.settings.{role}")
    return subprocess.run([PYTHON, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("manage", help="run a manage.py command against the running stack")
    run.add_argument("--workdir", default=default_workdir(), help="the running stack's workdir (default var/stack)")
    run.add_argument("role", choices=["broker", "gateway"], help="whose settings (and tables) the command uses")
    run.add_argument("args", nargs=argparse.REMAINDER, help="the manage.py command and its arguments")
    up = sub.add_parser("up", help="start the stack and keep it running")
    up.add_argument("--embedded", action="store_true", help="SQLite + filesystem Celery transport, no services")
    up.add_argument("--workdir", default=default_workdir())
    up.add_argument("--gateway-port", type=int, default=8000)
    up.add_argument("--broker-port", type=int, default=8001)
    up.add_argument("--oidc-port", type=int, default=9400)
    up.add_argument("--no-celery", action="store_true")
    up.add_argument(
        "--guide-provider",
        action="store_true",
        help='also register the local provider as "google" (the integration guide\'s snippet)',
    )
    up.add_argument("--env-file", help="write the agent environment (KEY=VALUE lines) here")
    up.add_argument("--demo", action="store_true", help="walk through the flow once, then keep running")
    args = parser.parse_args()
    if args.command == "manage":
        if not args.args:
            run.error("name a manage.py command, e.g. `manage broker createsuperuser`")
        return manage_running(Path(args.workdir), args.role, args.args)

    workdir = Path(args.workdir)
    if args.embedded:
        shutil.rmtree(workdir, ignore_errors=True)
    stack = Stack(
        workdir=workdir,
        database_url=None if args.embedded else os.environ.get("DATABASE_URL"),
        redis_url=None if args.embedded else os.environ.get("REDIS_URL"),
        celery=not args.no_celery,
        gateway_port=args.gateway_port,
        broker_port=args.broker_port,
        oidc_port=args.oidc_port,
        guide_provider=args.guide_provider,
    )
    stack.start()
    env = stack.agent_env()
    if args.env_file:
        Path(args.env_file).write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
    print(
        json.dumps(
            {
                "gateway": stack.gateway_url,
                "broker": stack.broker_url,
                "oidc_provider": stack.oidc.issuer if stack.oidc else None,
                "logs": str(workdir),
            },
            indent=2,
        )
    )
    print("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
    sys.stdout.flush()
    password = stack.create_admin()
    if args.demo:
        from demo import walkthrough

        walkthrough(stack)
    workdir_arg = "" if str(workdir) == str(ROOT / "var" / "stack") else f" --workdir {shlex.quote(str(workdir))}"
    print(
        f"\nBroker admin: {stack.broker_url}/admin/  user: {ADMIN_USER}  password: {password}  (shown only now)\n"
        f"Any manage.py command against this stack: .venv/bin/python devtools/stack.py manage{workdir_arg} "
        "broker|gateway COMMAND …",
        flush=True,
    )
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        while not stopping:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    print(f"{name} exited; see {workdir / (name + '.log')}", file=sys.stderr)
                    stopping.append(1)
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
