"""Production settings refuse to start without their secrets; DEBUG supplies labelled
development values so `make run` needs no set-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOOD = {
    "DJANGO_SECRET_KEY": "s" * 40,
    "BROKER_API_KEY": "b" * 40,
    "TOKEN_ENCRYPTION_KEYS": "r0Ot3xv2mQ0wJ9Lz1fGkq3yZC1u7Q2Wv4lJ8nU0pQ5E=",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/dromos",
    "DEBUG": "false",
}


def _check(mode: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in GOOD and not k.startswith("DJANGO_")}
    full = {
        **base,
        **{k: v for k, v in env.items() if v is not None},
        "DJANGO_SETTINGS_MODULE": f"dromos.settings.{mode}",
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("mode", ["gateway", "broker"])
@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_complete_production_settings_start(mode):
    result = _check(mode, **GOOD)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "mode, missing",
    [
        ("gateway", "DJANGO_SECRET_KEY"),
        ("gateway", "BROKER_API_KEY"),
        ("broker", "DJANGO_SECRET_KEY"),
        ("broker", "BROKER_API_KEY"),
        ("broker", "TOKEN_ENCRYPTION_KEYS"),
    ],
)
@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_missing_secret_is_fatal_outside_debug(mode, missing):
    result = _check(mode, **{**GOOD, missing: None})
    assert result.returncode != 0
    assert f"{missing} is required when DEBUG is off" in result.stderr


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_malformed_encryption_key_is_fatal_even_in_debug():
    result = _check("broker", **{**GOOD, "DEBUG": "true", "TOKEN_ENCRYPTION_KEYS": "not-a-key"})
    assert result.returncode != 0 and "TOKEN_ENCRYPTION_KEYS" in result.stderr
    assert "not-a-key" not in result.stderr


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_debug_runs_without_secrets():
    result = _check("broker", DEBUG="true", DATABASE_URL=GOOD["DATABASE_URL"])
    assert result.returncode == 0, result.stderr


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_wsgi_refuses_to_start_without_a_settings_module():
    """gunicorn dromos.wsgi:application with no DJANGO_SETTINGS_MODULE must not guess a mode."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    result = subprocess.run(
        [sys.executable, "-c", "import dromos.wsgi; print('serving')"],
        cwd=ROOT,
        env={**env, **GOOD},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "serving" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines == ["DJANGO_SETTINGS_MODULE is not set: use dromos.settings.gateway or dromos.settings.broker"], (
        result.stderr
    )


@pytest.mark.parametrize("mode", ["gateway", "broker"])
@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_wsgi_starts_in_either_mode(mode):
    env = {k: v for k, v in os.environ.items() if k not in GOOD and not k.startswith("DJANGO_")}
    result = subprocess.run(
        [sys.executable, "-c", "import dromos.wsgi; print('serving')"],
        cwd=ROOT,
        env={**env, **GOOD, "DJANGO_SETTINGS_MODULE": f"dromos.settings.{mode}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "serving" in result.stdout, result.stderr[-2000:]
