"""`make run`'s command: the whole system on the embedded default (SQLite, filesystem
Celery transport — no PostgreSQL, no Redis) walks the Typical Flow for a newcomer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from oidc_server import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_make_run_command_walks_the_flow_without_external_services(tmp_path):
    ports = {"--gateway-port": free_port(), "--broker-port": free_port(), "--oidc-port": free_port()}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    args = [sys.executable, "devtools/stack.py", "up", "--embedded", "--demo", "--workdir", str(tmp_path / "var")]
    for flag, port in ports.items():
        args += [flag, str(port)]
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            lines.append(line)
            if line.startswith("Your API key"):
                break
        output = "".join(lines)
        assert "Your API key" in output, output[-4000:]
        assert "status=success&connection_id=c_" in output
        assert "userinfo endpoint accepts the token: HTTP 200" in output
        assert "Step 5 — refresh through the gateway (POST /v1/refresh): HTTP 200" in output
        # Step 6: a proxied call reaches the provider's userinfo endpoint (the embedded
        # default: SQLite, no Redis) and the agent sees the user's claims, not a token.
        assert "never holding the token" in output and '"sub":"demo-user"' in output.replace(" ", "")
        assert (tmp_path / "var" / "dromos.sqlite3").exists()
        gateway = f"http://127.0.0.1:{ports['--gateway-port']}"
        assert requests.get(f"{gateway}/healthz", timeout=5).status_code == 200
        key = output.split("Your API key (workspace 'demo'): ")[1].split()[0]
        listing = requests.get(f"{gateway}/v1/connections", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert listing.json()["count"] == 1 and listing.json()["results"][0]["status"] == "active"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
