"""Agent API keys (random, shown once, stored hashed, revocable, scoped) and workspace
isolation on every endpoint."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection as db_connection
from django.utils import timezone

from broker_app.models import AuditEvent, Connection
from gateway_app.models import ApiKey
from tests.conftest import connect, start_connection

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


def _create(workspace="ws-a", *scopes: str) -> tuple[ApiKey, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "apikey",
        "create",
        "--workspace",
        workspace,
        "--name",
        "agent",
        *[arg for scope in scopes for arg in ("--scope", scope)],
        stdout=out,
        stderr=err,
    )
    plaintext = out.getvalue().strip().splitlines()[-1]
    return ApiKey.objects.get(prefix=plaintext.split("_")[1]), plaintext


def test_key_is_random_shown_once_and_stored_as_a_digest():
    row, plaintext = _create()
    other_row, other = _create()
    assert plaintext != other and row.prefix != other_row.prefix
    assert plaintext.startswith(f"dk_{row.prefix}_") and len(plaintext.split("_", 2)[2]) == 43  # 256 bits
    assert row.key_digest == hashlib.sha256(plaintext.encode()).hexdigest()
    secret_part = plaintext.split("_", 2)[2]
    stored = " ".join(str(value) for value in ApiKey.objects.filter(pk=row.pk).values().first().values())
    assert secret_part not in stored
    listing = io.StringIO()
    call_command("apikey", "list", stdout=listing)
    assert row.prefix in listing.getvalue() and secret_part not in listing.getvalue()


def test_last_used_at_is_recorded(stack, fake_provider_row):
    row, plaintext = _create()
    assert row.last_used_at is None
    assert stack.call("GET", "/v1/providers", plaintext).status_code == 200
    row.refresh_from_db()
    assert row.last_used_at is not None and (timezone.now() - row.last_used_at).total_seconds() < 30


def test_wrong_secret_with_a_known_prefix_is_refused_even_when_cached(stack, fake_provider_row):
    _, plaintext = _create()
    assert stack.call("GET", "/v1/providers", plaintext).status_code == 200  # now cached
    forged = plaintext[:-4] + ("AAAA" if not plaintext.endswith("AAAA") else "BBBB")
    response = stack.call("GET", "/v1/providers", forged)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"


def test_revocation_is_immediate_in_this_process(stack, fake_provider_row):
    row, plaintext = _create()
    assert stack.call("GET", "/v1/providers", plaintext).status_code == 200
    call_command("apikey", "revoke", "--prefix", row.prefix, stdout=io.StringIO())
    assert stack.call("GET", "/v1/providers", plaintext).status_code == 401


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_revocation_from_another_process_reaches_a_cached_key(stack, fake_provider_row, settings):
    """`manage.py apikey revoke` runs in its own process; this process holds the key in its
    in-process cache and must still refuse it at the next request (not API_KEY_CACHE_SECONDS later)."""
    settings.API_KEY_CACHE_SECONDS = 300
    row, plaintext = _create()
    assert stack.call("GET", "/v1/providers", plaintext).status_code == 200
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dromos.settings.test",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/" + db_connection.settings_dict["NAME"],
        "REDIS_URL": settings.REDIS_URL,
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "apikey", "revoke", "--prefix", row.prefix],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert stack.call("GET", "/v1/providers", plaintext).status_code == 401


def test_unknown_scope_is_refused():
    from django.core.management.base import CommandError

    with pytest.raises((CommandError, SystemExit)):
        call_command(
            "apikey",
            "create",
            "--workspace",
            "ws",
            "--name",
            "n",
            "--scope",
            "tokens:everything",
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )


def test_scoped_keys(stack, fake_provider, fake_provider_row):
    full = stack.key("ws-a")
    cid = connect(stack, fake_provider, full)
    _, requester = _create("ws-a", "connections:write")
    _, reader = _create("ws-a", "tokens:read")

    started = stack.call(
        "POST",
        "/v1/request-connection",
        requester,
        json={"user_id": "u2", "provider_name": "fake", "return_url": "https://app.example.com/r"},
    )
    assert started.status_code == 201
    for method, path in (
        ("GET", f"/v1/token/{cid}"),
        ("POST", f"/v1/refresh/{cid}"),
        ("GET", f"/v1/check-connection/{cid}"),
        ("DELETE", f"/v1/connections/{cid}"),
        ("GET", "/v1/connections"),
    ):
        denied = stack.call(method, path, requester)
        assert denied.status_code == 403, (method, path)
        assert denied.json()["error"] == "forbidden"
    assert stack.call("GET", f"/v1/token/{cid}", reader).status_code == 200
    assert (
        stack.call(
            "POST",
            "/v1/request-connection",
            reader,
            json={"user_id": "u3", "provider_name": "fake", "return_url": "https://app.example.com/r"},
        ).status_code
        == 403
    )
    assert stack.call("DELETE", f"/v1/connections/{cid}", reader).status_code == 403
    assert Connection.objects.get(pk=cid).status == "active"
    assert fake_provider.refresh_calls == 0 and fake_provider.revocations == []


def test_another_workspaces_connection_is_404_everywhere(stack, fake_provider, fake_provider_row):
    key_a, key_b = stack.key("ws-a"), stack.key("ws-b")
    active = connect(stack, fake_provider, key_a)
    pending = start_connection(stack, key_a)["connection_id"]
    audit_before = AuditEvent.objects.count()
    for cid in (active, pending):
        for method, path in (
            ("GET", f"/v1/check-connection/{cid}"),
            ("GET", f"/v1/token/{cid}"),
            ("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=86400"),
            ("POST", f"/v1/refresh/{cid}"),
            ("DELETE", f"/v1/connections/{cid}"),
        ):
            response = stack.call(method, path, key_b)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json() == {"error": "not_found", "message": "connection not found"}
    for query in (
        "",
        "?user_id=user-1",
        "?provider_name=fake",
        "?status=active",
        "?status=pending",
        "?user_id=user-1&provider_name=fake&status=active",
    ):
        listing = stack.call("GET", f"/v1/connections{query}", key_b).json()
        assert listing["count"] == 0 and listing["results"] == [], query
    assert stack.call("GET", "/v1/connections?user_id=user-1", key_a).json()["count"] == 2
    # Nothing happened to the other workspace's connection, nothing reached the provider.
    assert Connection.objects.get(pk=active).status == "active"
    assert fake_provider.refresh_calls == 0 and fake_provider.revocations == []
    assert AuditEvent.objects.count() == audit_before


def test_broker_scopes_every_internal_lookup_to_the_named_workspace(stack, fake_provider, fake_provider_row):
    cid = connect(stack, fake_provider, stack.key("ws-a"))
    for method, path in (
        ("GET", f"/internal/v1/connections/{cid}"),
        ("GET", f"/internal/v1/connections/{cid}/token"),
        ("POST", f"/internal/v1/connections/{cid}/refresh"),
        ("DELETE", f"/internal/v1/connections/{cid}"),
    ):
        assert stack.broker(method, path, headers={"X-Dromos-Workspace": "ws-b"}).status_code == 404
        missing = stack.broker(method, path)
        assert missing.status_code == 400 and "X-Dromos-Workspace" in missing.json()["message"]
    assert Connection.objects.get(pk=cid).status == "active"
