"""Operator commands: prune_pending, webhook, check (the "dromos" deployment checks) and
the --help / exit-code contract of every command an operator runs."""

from __future__ import annotations

import contextlib
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
    base = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SETTINGS_MODULE": f"dromos.settings.{role}",
        "DJANGO_SECRET_KEY": "s" * 40,
        "BROKER_API_KEY": "b" * 40,
        "TOKEN_ENCRYPTION_KEYS": settings.TOKEN_ENCRYPTION_KEYS,
        "ALLOW_HTTP_PROVIDER_HOSTS": "127.0.0.1",
        "WEBHOOK_ALLOW_HTTP_HOSTS": "127.0.0.1",
        "DROMOS_VAR_DIR": str(ROOT / "var" / "ops-tests"),
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def execute(*argv: str) -> tuple[int, str, str]:
    """`manage.py ARGV` in this process, exactly as manage.py runs it (argument parsing, the
    CommandError → message + exit status path): returns (exit status, stdout, stderr)."""
    from django.core.management import execute_from_command_line

    out, err = io.StringIO(), io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            execute_from_command_line(["manage.py", *argv])
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
    return status, out.getvalue(), err.getvalue()


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# -- --help and exit codes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "role, command",
    [
        ("broker", "provider"),
        ("broker", "prune_pending"),
        ("broker", "webhook"),
        ("broker", "audit"),
        ("broker", "refresh_due"),
        ("broker", "rotate_token_keys"),
        ("broker", "check"),
        ("gateway", "apikey"),
        ("gateway", "check"),
        ("broker", "provider upsert"),
        ("broker", "provider list"),
        ("broker", "provider remove"),
        ("broker", "provider templates"),
        ("broker", "provider import"),
        ("broker", "provider export"),
        ("broker", "provider docs"),
        ("broker", "webhook add"),
        ("broker", "webhook list"),
        ("broker", "webhook remove"),
        ("broker", "webhook deliveries"),
        ("broker", "audit partitions"),
        ("broker", "audit seal"),
        ("broker", "audit verify"),
        ("broker", "audit export"),
        ("gateway", "apikey create"),
        ("gateway", "apikey list"),
        ("gateway", "apikey revoke"),
    ],
)
def test_every_operator_command_has_help(role, command):
    status, out, err = execute(*command.split(), "--help")
    assert status == 0, err
    assert out.startswith("usage: manage.py " + command) and "-h, --help" in out


@pytest.mark.live  # Django in a child process
def test_help_works_in_each_role_process():
    for role, command in (("broker", "rotate_token_keys"), ("gateway", "apikey")):
        result = manage(command, "--help", role=role)
        assert result.returncode == 0 and result.stdout.startswith(f"usage: manage.py {command}"), result.stderr


@pytest.mark.parametrize(
    "role, args, message",
    [
        ("broker", ["webhook"], "the following arguments are required: {add,list,remove,deliveries}"),
        ("broker", ["webhook", "add", "--workspace", "ws"], "the following arguments are required: --url"),
        (
            "broker",
            ["webhook", "add", "--workspace", "ws", "--url", "https://h.test/x", "--event", "nope"],
            "invalid choice",
        ),
        ("broker", ["prune_pending", "--bogus"], "unrecognized arguments: --bogus"),
        (
            "broker",
            ["provider"],
            "the following arguments are required: {upsert,list,remove,templates,import,export,docs}",
        ),
        ("broker", ["provider", "upsert"], "the following arguments are required: --name"),
        ("broker", ["provider", "import"], "the following arguments are required: file"),
        ("broker", ["provider", "upsert", "--name", "x", "--token-auth", "magic"], "invalid choice: 'magic'"),
        ("broker", ["refresh_due", "--window", "soon"], "invalid int value: 'soon'"),
        ("broker", ["rotate_token_keys", "--batch-size", "many"], "invalid int value: 'many'"),
        ("gateway", ["apikey"], "the following arguments are required: {create,list,revoke,policy}"),
        ("gateway", ["apikey", "create", "--workspace", "ws"], "the following arguments are required: --name"),
        (
            "gateway",
            ["apikey", "create", "--workspace", "ws", "--name", "n", "--scope", "tokens:all"],
            "invalid choice: 'tokens:all'",
        ),
        ("gateway", ["apikey", "revoke"], "the following arguments are required: --prefix"),
    ],
)
def test_usage_errors_exit_2(role, args, message):
    status, _, err = execute(*args)
    assert status == 2, err
    assert message in err and "usage: manage.py" in err


@pytest.mark.parametrize(
    "role, args, message",
    [
        ("gateway", ["apikey", "revoke", "--prefix", "nosuchkey"], "no key with prefix 'nosuchkey'"),
        ("gateway", ["apikey", "create", "--workspace", "bad workspace!", "--name", "n"], "workspace must be 1-128"),
        ("broker", ["provider", "remove", "--name", "nope"], "no provider named 'nope'"),
        ("broker", ["provider", "upsert", "--name", "x", "--template", "nope"], "unknown template 'nope'"),
        (
            "broker",
            ["provider", "upsert", "--name", "google", "--authorize-param", "hd"],
            "expected key=value, got 'hd'",
        ),
        ("broker", ["refresh_due", "--window", "-5"], "--window must be 0 or more seconds"),
        ("broker", ["refresh_due", "--provider", "nope"], "unknown provider 'nope'"),
        ("broker", ["refresh_due", "--enqueue", "--window", "60"], "--window applies to refreshes run here"),
        ("broker", ["rotate_token_keys", "--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_input_is_a_clear_one_line_error_with_exit_1(role, args, message):
    status, _, err = execute(*args)
    assert status == 1, err
    assert err.startswith("CommandError: ") and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.live  # Django in a child process
def test_bad_input_exit_status_in_the_role_process():
    result = manage("apikey", "revoke", "--prefix", "nosuchkey", role="gateway")
    assert (
        result.returncode == 1
        and result.stderr.strip().splitlines()[-1] == "CommandError: no key with prefix 'nosuchkey'"
    )
    result = manage("refresh_due", "--window", "-1")
    assert result.returncode == 1 and "CommandError: --window must be 0 or more seconds" in result.stderr
    assert "Traceback" not in result.stderr


# -- apikey: what an operator runs ----------------------------------------------------------------------


def test_apikey_create_list_revoke_as_an_operator_runs_them():
    status, key, err = execute(
        "apikey",
        "create",
        "--workspace",
        "acme",
        "--name",
        "billing-agent",
        "--scope",
        "tokens:read",
        "--scope",
        "connections:read",
    )
    assert status == 0, err
    key = key.strip()
    prefix = key.split("_")[1]
    assert f"created key {prefix} for workspace acme; it is shown once" in err and key not in err
    other = execute("apikey", "create", "--workspace", "umbrella", "--name", "ops")[1].strip()

    status, listing, _ = execute("apikey", "list", "--workspace", "acme")
    assert status == 0 and key not in listing
    assert listing.splitlines() == [
        f"{prefix}\tacme\tbilling-agent\tactive\tlast_used=never\tscopes=connections:read,tokens:read"
    ]
    everything = execute("apikey", "list")[1]
    assert prefix in everything and other.split("_")[1] in everything and other not in everything

    from gateway_app.keys import apikey_verify, cache_clear

    assert apikey_verify(key).workspace == "acme"
    status, out, _ = execute("apikey", "revoke", "--prefix", prefix)
    assert status == 0 and out.strip() == f"revoked {prefix}"
    cache_clear()
    assert apikey_verify(key) is None
    today = timezone.now().strftime("%Y-%m-%d")
    assert f"\tbilling-agent\trevoked {today}\t" in execute("apikey", "list", "--workspace", "acme")[1]
    status, out, _ = execute("apikey", "revoke", "--prefix", prefix)  # idempotent
    assert status == 0 and out.strip() == f"revoked {prefix}"
    assert apikey_verify(other) is not None


# -- refresh_due: progress on stderr, outcomes on stdout --------------------------------------------


def test_refresh_due_shows_progress_and_outcomes(stack, fake_provider, fake_provider_row):
    from tests.conftest import connect

    key = stack.key("ws-due")
    ids = [connect(stack, fake_provider, key) for _ in range(3)]
    now = timezone.now()  # two one-hour tokens with 30 s left, one with five hours left
    Connection.objects.filter(pk__in=ids[:2]).update(
        expires_at=now + timedelta(seconds=30),
        next_refresh_attempt_at=None,
        last_refreshed_at=now - timedelta(seconds=3570),
        last_read_at=now - timedelta(seconds=3560),  # read since: in use
    )
    Connection.objects.filter(pk=ids[2]).update(expires_at=now + timedelta(hours=5), next_refresh_attempt_at=None)
    out, _ = run("refresh_due", "--dry-run")
    assert set(out.splitlines()[:-1]) == set(ids[:2]) and out.splitlines()[-1] == "due: 2 (dry run, nothing changed)"
    out, err = run("refresh_due", "--provider", "fake")
    assert err.strip().endswith("2/2")
    assert out.startswith("due: 2; success: 2 (")
    assert all(Connection.objects.get(pk=cid).token_version == 2 for cid in ids[:2])
    assert Connection.objects.get(pk=ids[2]).token_version == 1
    assert run("refresh_due")[0].startswith("due: 0; nothing due")


# -- prune_pending -----------------------------------------------------------------------------------


@pytest.fixture
def provider(db):
    return make_provider(
        name="ops",
        discovery_url="http://127.0.0.1:1/.well-known/openid-configuration",
        client_id="c",
        client_secret="s",
    )


def pending(provider, *, closed_ago: timedelta | None, workspace: str = "ws") -> Connection:
    expires = timezone.now() - closed_ago if closed_ago is not None else timezone.now() + timedelta(minutes=5)
    return Connection.objects.create(
        workspace=workspace,
        user_id="u",
        provider=provider,
        scopes=["openid"],
        return_url="https://app.example.com/r",
        state_expires_at=expires,
        state_digest=crypto.digest(os.urandom(8).hex()),
    )


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


@pytest.mark.live  # Django in a child process
def test_prune_pending_exit_codes(provider):
    pending(provider, closed_ago=timedelta(days=2))
    bad = manage("prune_pending", "--older-than", "soon")
    assert bad.returncode == 1 and "--older-than must look like" in bad.stderr
    good = manage("prune_pending", "--older-than", "1d")
    assert good.returncode == 0 and "pruned 1 stale" in good.stdout


# -- webhook ------------------------------------------------------------------------------------------


@pytest.mark.live  # Django in a child process
def test_webhook_add_prints_the_secret_once_and_stores_it_encrypted():
    result = manage(
        "webhook",
        "add",
        "--workspace",
        "acme",
        "--url",
        "https://hooks.acme.test/dromos",
        "--event",
        "connection.failed",
        "--event",
        "connection.revoked",
    )
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


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://hooks.acme.test/x", "must use https"),
        ("ftp://hooks.acme.test/x", "absolute https URL"),
        ("hooks.acme.test/x", "absolute https URL"),
        ("https://user:pw@hooks.acme.test/x", "must not carry credentials"),
    ],
)
def test_webhook_add_rejects_bad_urls(url, message):
    with pytest.raises(CommandError, match=message):
        run("webhook", "add", "--workspace", "acme", "--url", url)
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.live  # Django in a child process
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


@pytest.mark.live  # Django in a child process
def test_plain_check_and_migrate_need_no_broker_or_provider():
    dead = f"http://127.0.0.1:{free_port()}"
    result = manage("check", role="gateway", BROKER_INTERNAL_URL=dead)
    assert result.returncode == 0, result.stderr
    assert "broker" not in result.stdout + result.stderr


@pytest.mark.live  # Django in a child process
def test_check_reports_an_unreachable_broker_from_the_gateway():
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["check", "--tag", "dromos"], ["check", "--deploy"]):
        result = manage(*args, role="gateway", BROKER_INTERNAL_URL=dead)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"(dromos.E102) the broker's /healthz does not answer 200 at {dead}/healthz" in result.stderr


@pytest.mark.live  # Django in a child process
def test_check_passes_against_a_reachable_broker(stack, fake_provider_row):
    result = manage("check", "--tag", "dromos", role="gateway", BROKER_INTERNAL_URL=stack.url)
    assert result.returncode == 0, result.stderr
    broker = manage("check", "--tag", "dromos", role="broker")
    assert broker.returncode == 0, broker.stderr


@pytest.mark.live  # Django in a child process
def test_check_reports_secrets_and_providers(fake_provider_row, provider):
    result = manage(
        "check", "--tag", "dromos", role="broker", DJANGO_SECRET_KEY="dev-only-whatever", BROKER_API_KEY="short"
    )
    assert result.returncode == 1
    assert "(dromos.E101) DJANGO_SECRET_KEY is the development default" in result.stderr
    assert "(dromos.W101) BROKER_API_KEY is only 5 characters long" in result.stderr
    # The unreachable provider is reported; the working one (the fake provider) is not.
    assert "(dromos.E113) provider ops: endpoints do not resolve" in result.stderr
    assert "provider fake" not in result.stderr


@pytest.mark.live  # Django in a child process
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
