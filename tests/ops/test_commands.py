"""Operator commands: prune_pending, webhook, check (the "dromos" deployment checks) and
the --help / exit-code contract of every command an operator runs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.core.management.base import SystemCheckError
from django.utils import timezone

from broker_app import crypto
from broker_app.models import AuditEvent, Connection, WebhookEndpoint
from tests.conftest import make_provider
from tests.ops.conftest import ROOT, free_port

pytestmark = pytest.mark.django_db(transaction=True)


def manage(*args: str, role: str = "broker", **env: str) -> subprocess.CompletedProcess:
    """manage.py in a subprocess against this test database, as an operator runs it."""
    db = settings.DATABASES["default"]
    database_url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "DATABASE_URL": database_url,
            "REDIS_URL": settings.REDIS_URL, "DJANGO_SETTINGS_MODULE": f"dromos.settings.{role}",
            "DJANGO_SECRET_KEY": "s" * 40, "BROKER_API_KEY": "b" * 40,
            "TOKEN_ENCRYPTION_KEYS": settings.TOKEN_ENCRYPTION_KEYS,
            "ALLOW_HTTP_PROVIDER_HOSTS": "127.0.0.1", "WEBHOOK_ALLOW_HTTP_HOSTS": "127.0.0.1",
            "DROMOS_VAR_DIR": str(ROOT / "var" / "ops-tests")}
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env={**base, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# -- --help and exit codes --------------------------------------------------------------------------

@pytest.mark.parametrize("role, command", [
    ("broker", "provider"), ("broker", "prune_pending"), ("broker", "webhook"), ("broker", "refresh_due"),
    ("broker", "check"), ("gateway", "apikey"), ("gateway", "check"),
])
def test_every_operator_command_has_help(role, command):
    result = manage(command, "--help", role=role)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: manage.py " + command)


@pytest.mark.parametrize("args, message", [
    (["webhook"], "the following arguments are required: {add,list,remove,deliveries}"),
    (["webhook", "add", "--workspace", "ws"], "the following arguments are required: --url"),
    (["webhook", "add", "--workspace", "ws", "--url", "https://h.test/x", "--event", "nope"], "invalid choice"),
    (["prune_pending", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_usage_errors_exit_2(args, message):
    result = manage(*args)
    assert result.returncode == 2 and message in result.stderr


# -- prune_pending -----------------------------------------------------------------------------------

@pytest.fixture
def provider(db):
    return make_provider(name="ops", discovery_url="http://127.0.0.1:1/.well-known/openid-configuration",
                         client_id="c", client_secret="s")


def pending(provider, *, closed_ago: timedelta | None, workspace: str = "ws") -> Connection:
    expires = timezone.now() - closed_ago if closed_ago is not None else timezone.now() + timedelta(minutes=5)
    return Connection.objects.create(workspace=workspace, user_id="u", provider=provider, scopes=["openid"],
                                     return_url="https://app.example.com/r", state_expires_at=expires,
                                     state_digest=crypto.digest(os.urandom(8).hex()))


def test_prune_pending_dry_run_lists_and_changes_nothing(provider):
    stale = pending(provider, closed_ago=timedelta(hours=2))
    fresh = pending(provider, closed_ago=None)
    out, _ = run("prune_pending", "--dry-run")
    assert stale.id in out and fresh.id not in out
    assert "stale pending connections: 1 (dry run, nothing changed)" in out
    assert set(Connection.objects.values_list("status", flat=True)) == {"pending"}


def test_prune_pending_fails_stale_connections_with_progress(provider):
    old = pending(provider, closed_ago=timedelta(hours=3))
    recent = pending(provider, closed_ago=timedelta(minutes=10))
    open_window = pending(provider, closed_ago=None)
    out, err = run("prune_pending", "--older-than", "1h")
    assert "pruned 1 stale pending connection(s)" in out and "pruned 1/1" in err
    assert Connection.objects.get(pk=old.pk).status == "failed"
    assert Connection.objects.get(pk=old.pk).error == "state_expired"
    assert AuditEvent.objects.filter(connection_id=old.pk, action="connection.failed").exists()
    assert Connection.objects.get(pk=recent.pk).status == "pending"
    out, _ = run("prune_pending")
    assert "pruned 1 stale" in out
    assert Connection.objects.get(pk=recent.pk).status == "failed"
    assert Connection.objects.get(pk=open_window.pk).status == "pending"
    assert "pruned 0 stale" in run("prune_pending")[0]


@pytest.mark.parametrize("value", ["1w", "-5", "abc", "1.5h"])
def test_prune_pending_rejects_bad_durations(value):
    with pytest.raises(CommandError, match="--older-than must look like"):
        run("prune_pending", "--older-than", value)


def test_prune_pending_exit_codes(provider):
    pending(provider, closed_ago=timedelta(days=2))
    bad = manage("prune_pending", "--older-than", "soon")
    assert bad.returncode == 1 and "--older-than must look like" in bad.stderr
    good = manage("prune_pending", "--older-than", "1d")
    assert good.returncode == 0 and "pruned 1 stale" in good.stdout


# -- webhook ------------------------------------------------------------------------------------------

def test_webhook_add_prints_the_secret_once_and_stores_it_encrypted():
    result = manage("webhook", "add", "--workspace", "acme", "--url", "https://hooks.acme.test/dromos",
                    "--event", "connection.failed", "--event", "connection.revoked")
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_") and len(secret) > 40 and result.stdout.strip() == secret
    assert "shown once" in result.stderr and secret not in result.stderr
    endpoint = WebhookEndpoint.objects.get(workspace="acme")
    assert endpoint.events == ["connection.failed", "connection.revoked"]
    assert secret not in endpoint.secret_enc and endpoint.secret_enc.startswith("v1.")
    from broker_app.webhooks import endpoint_secret

    assert endpoint_secret(endpoint) == secret
    listing = manage("webhook", "list", "--workspace", "acme")
    assert listing.returncode == 0 and "https://hooks.acme.test/dromos" in listing.stdout
    assert secret not in listing.stdout and "events=connection.failed,connection.revoked" in listing.stdout


@pytest.mark.parametrize("url, message", [
    ("http://hooks.acme.test/x", "must use https"),
    ("ftp://hooks.acme.test/x", "absolute https URL"),
    ("hooks.acme.test/x", "absolute https URL"),
    ("https://user:pw@hooks.acme.test/x", "must not carry credentials"),
])
def test_webhook_add_rejects_bad_urls(url, message):
    with pytest.raises(CommandError, match=message):
        run("webhook", "add", "--workspace", "acme", "--url", url)
    assert not WebhookEndpoint.objects.exists()


def test_webhook_duplicate_and_remove():
    run("webhook", "add", "--workspace", "acme", "--url", "https://hooks.acme.test/a")
    with pytest.raises(CommandError, match="already has a webhook"):
        run("webhook", "add", "--workspace", "acme", "--url", "https://hooks.acme.test/a")
    with pytest.raises(CommandError, match="has no webhook for that url"):
        run("webhook", "remove", "--workspace", "acme", "--url", "https://hooks.acme.test/other")
    with pytest.raises(CommandError, match="no webhook with id"):
        run("webhook", "remove", "--id", "not-a-uuid")
    with pytest.raises(CommandError, match="--id, or with --workspace and --url"):
        run("webhook", "remove", "--workspace", "acme")
    out, _ = run("webhook", "remove", "--workspace", "acme", "--url", "https://hooks.acme.test/a")
    assert "removed webhook https://hooks.acme.test/a" in out
    assert not WebhookEndpoint.objects.exists()
    missing = manage("webhook", "remove", "--workspace", "acme", "--url", "https://hooks.acme.test/a")
    assert missing.returncode == 1 and "has no webhook for that url" in missing.stderr


# -- check: the "dromos" deployment checks -----------------------------------------------------------

def test_plain_check_and_migrate_need_no_broker_or_provider():
    dead = f"http://127.0.0.1:{free_port()}"
    result = manage("check", role="gateway", BROKER_INTERNAL_URL=dead)
    assert result.returncode == 0, result.stderr
    assert "broker" not in result.stdout + result.stderr


def test_check_reports_an_unreachable_broker_from_the_gateway():
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["check", "--tag", "dromos"], ["check", "--deploy"]):
        result = manage(*args, role="gateway", BROKER_INTERNAL_URL=dead)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"(dromos.E102) the broker's /healthz does not answer 200 at {dead}/healthz" in result.stderr


def test_check_passes_against_a_reachable_broker(stack, fake_provider_row):
    result = manage("check", "--tag", "dromos", role="gateway", BROKER_INTERNAL_URL=stack.url)
    assert result.returncode == 0, result.stderr
    broker = manage("check", "--tag", "dromos", role="broker")
    assert broker.returncode == 0, broker.stderr


def test_check_reports_secrets_and_providers(fake_provider_row, provider):
    result = manage("check", "--tag", "dromos", role="broker", DJANGO_SECRET_KEY="dev-only-whatever",
                    BROKER_API_KEY="short")
    assert result.returncode == 1
    assert "(dromos.E101) DJANGO_SECRET_KEY is the development default" in result.stderr
    assert "(dromos.W101) BROKER_API_KEY is only 5 characters long" in result.stderr
    # The unreachable provider is reported; the working one (the fake provider) is not.
    assert "(dromos.E113) provider ops: endpoints do not resolve" in result.stderr
    assert "provider fake" not in result.stderr


def test_check_reports_a_client_secret_that_no_longer_decrypts(fake_provider_row):
    other_key = "q1Ot3xv2mQ0wJ9Lz1fGkq3yZC1u7Q2Wv4lJ8nU0pQ5E="
    result = manage("check", "--tag", "dromos", role="broker", TOKEN_ENCRYPTION_KEYS=other_key)
    assert result.returncode == 1, result.stderr
    assert "provider fake: client secret does not decrypt with TOKEN_ENCRYPTION_KEYS" in result.stderr, result.stderr


def test_check_in_process_raises_system_check_error(settings):
    settings.BROKER_INTERNAL_URL = f"http://127.0.0.1:{free_port()}"
    settings.READINESS_EXTRA_CHECK = "gateway_app.broker_client.readiness"
    from gateway_app import broker_client

    broker_client.reset()
    try:
        with pytest.raises(SystemCheckError, match="broker's /healthz does not answer"):
            call_command("check", tags=["dromos"], stdout=io.StringIO(), stderr=io.StringIO())
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())  # plain check: no broker needed
    finally:
        broker_client.reset()
