"""The backup procedure of docs/operations.md, run for real: `pg_dump --format=custom` of a
live deployment's database, `pg_restore` into an empty one, a broker started on it with
the same TOKEN_ENCRYPTION_KEYS serves the same tokens. With other keys the dump is useless,
which is why the keys are backed up apart from it."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess

import pytest
import requests

from tests.ops.conftest import (
    ENTRYPOINT,
    ROOT,
    entrypoint_env,
    free_port,
    http_status,
    random_id,
    reset_postgres_database,
    sibling_database,
    start_role,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    not shutil.which("pg_dump"),
    reason="postgresql-client is not installed (scripts/ensure-system-packages.sh installs it)",
)


def test_a_database_dump_restores_into_a_working_broker(ops_stack, tmp_path):
    workspace = random_id("ws-backup")
    key = ops_stack.new_key(workspace)
    cid = ops_stack.connect(key)
    token = ops_stack.gw("GET", f"/v1/token/{cid}", key).json()["access_token"]

    dump = tmp_path / "dromos.dump"
    subprocess.run(
        ["pg_dump", "--format=custom", "--no-owner", f"--file={dump}", ops_stack.database_url],
        check=True,
        capture_output=True,
        timeout=120,
    )
    restored = sibling_database("restored")
    reset_postgres_database(restored)
    subprocess.run(
        ["pg_restore", "--no-owner", f"--dbname={restored}", str(dump)], check=True, capture_output=True, timeout=120
    )
    env = {**ops_stack.env, "DATABASE_URL": restored}

    def manage(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ENTRYPOINT), "manage", *args],
            cwd=ROOT,
            env={**entrypoint_env(env, tmp_path, "manage"), **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )

    # Every stored secret decrypts with the keys kept apart from the dump ...
    checked = manage("rotate_token_keys", "--check")
    assert checked.returncode == 0, checked.stderr
    assert "(primary)" in checked.stdout and "rows remaining under retired or unknown keys: 0" in checked.stdout
    # ... and with other keys nothing does.
    other_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    wrong = manage("rotate_token_keys", "--check", TOKEN_ENCRYPTION_KEYS=other_key)
    assert wrong.returncode == 1 and "NOT CONFIGURED: these values cannot be decrypted" in wrong.stdout
    # The API keys came along (as digests).
    listing = manage("apikey", "list", "--workspace", workspace, DJANGO_SETTINGS_MODULE="dromos.settings.gateway")
    assert listing.returncode == 0 and key.split("_")[1] in listing.stdout

    port = free_port()
    broker = start_role("broker", {**env, "BASE_URL": f"http://127.0.0.1:{port}"}, tmp_path, port)
    try:
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, "the restored broker", 60)
        answer = requests.get(
            f"http://127.0.0.1:{port}/internal/v1/connections/{cid}/token",
            timeout=30,
            headers={"X-API-Key": env["BROKER_API_KEY"], "X-Dromos-Workspace": workspace},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["access_token"] == token
    finally:
        stop_process(broker)
