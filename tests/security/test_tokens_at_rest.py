"""Tokens at rest: AES-256-GCM, each ciphertext naming its key and bound to its row and
field; key rotation with `manage.py rotate_token_keys` (batches, online, progress, what is
left under retired keys); a wrong or missing key ring stops the broker before it serves."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection as db_connection
from django.db import transaction
from django.utils import timezone

from broker_app import crypto
from broker_app.management.commands import rotate_token_keys
from broker_app.models import Connection, Provider, WebhookEndpoint
from broker_app.providers.registry import client_secret
from broker_app.webhooks import endpoint_secret, webhook_endpoint_create
from tests.conftest import connect

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]

OLD = "r0Ot3xv2mQ0wJ9Lz1fGkq3yZC1u7Q2Wv4lJ8nU0pQ5E="  # dromos.settings.test
NEW = "UjwRr6YmUucHTPeCrXXI3WIHtmK4QPVwVI1mWUtYqiA="
STRANGER = "qoMYAUBr_YJFq0kmpJN_KL1bn9ycc5l6ZQ87saD1PZc="
TOKEN_FIELDS = ("access_token", "refresh_token", "id_token")


def kid(raw: str) -> str:
    return crypto.key_id(crypto.parse_keys(raw)[0])


def token_values(cid: str) -> dict[str, str | None]:
    row = Connection.objects.get(pk=cid)
    return {name: crypto.decrypt(getattr(row, f"{name}_enc"), aad=row.aad(name)) for name in TOKEN_FIELDS}


def stored_row(provider: Provider, n: int) -> tuple[str, dict[str, str]]:
    """An active connection with tokens encrypted under the current primary key (fast: no flow)."""
    row = Connection(
        workspace="ws-a",
        user_id=f"user-{n}",
        provider=provider,
        status="active",
        return_url="https://app.example.com/r",
        expires_at=timezone.now() + timedelta(hours=1),
    )
    values = {name: f"{name}-{n}-{os.urandom(8).hex()}" for name in TOKEN_FIELDS}
    for name, value in values.items():
        setattr(row, f"{name}_enc", crypto.encrypt(value, aad=row.aad(name)))
    row.save(force_insert=True)
    return row.id, values


def rotate(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("rotate_token_keys", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# -- binding and tampering ----------------------------------------------------------------------


def test_every_ciphertext_names_its_key_and_holds_no_plaintext(stack, fake_provider, fake_provider_row):
    key = stack.key()
    cid = connect(stack, fake_provider, key)
    served = stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"]
    row = Connection.objects.get(pk=cid)
    values = token_values(cid)
    assert values["access_token"] == served
    for name in TOKEN_FIELDS:
        ciphertext = getattr(row, f"{name}_enc")
        assert ciphertext.startswith(f"v1.{kid(OLD)}."), name
        assert crypto.KeyRing.key_of(ciphertext) == kid(OLD)
        assert values[name] not in ciphertext
    # Random nonces: the same plaintext never encrypts the same way twice.
    assert crypto.encrypt(served, aad=row.aad("access_token")) != row.access_token_enc
    assert Provider.objects.get(pk=fake_provider_row.pk).client_secret_enc.startswith(f"v1.{kid(OLD)}.")


def test_ciphertext_copied_to_another_row_does_not_decrypt(stack, fake_provider, fake_provider_row):
    key = stack.key()
    victim, attacker = connect(stack, fake_provider, key), connect(stack, fake_provider, key)
    victim_token = token_values(victim)["access_token"]
    stolen = Connection.objects.get(pk=victim).access_token_enc
    Connection.objects.filter(pk=attacker).update(access_token_enc=stolen)
    response = stack.call("GET", f"/v1/token/{attacker}", key)
    assert response.status_code >= 500
    assert response.json()["error"] == "token_unreadable"
    assert victim_token not in response.text and stolen not in response.text
    assert stack.call("GET", f"/v1/token/{victim}", key).json()["access_token"] == victim_token


def test_ciphertext_moved_to_another_field_of_the_same_row_does_not_decrypt(fake_provider_row):
    cid, _ = stored_row(fake_provider_row, 1)
    row = Connection.objects.get(pk=cid)
    for source, target in (
        ("refresh_token", "access_token"),
        ("access_token", "id_token"),
        ("access_token", "pkce_verifier"),
    ):
        with pytest.raises(crypto.DecryptionError):
            crypto.decrypt(getattr(row, f"{source}_enc"), aad=row.aad(target))


def _tampered(ciphertext: str) -> dict[str, str]:
    version, key, body = ciphertext.split(".", 2)
    flipped = body[:20] + ("A" if body[20] != "A" else "B") + body[21:]
    return {
        "flipped-byte": f"{version}.{key}.{flipped}",
        "flipped-tag": f"{version}.{key}.{body[:-2]}{'AA' if body[-2:] != 'AA' else 'BB'}",
        "truncated": f"{version}.{key}.{body[:-10]}",
        "nonce-only": f"{version}.{key}.{body[:16]}",
        "empty-body": f"{version}.{key}.",
        "other-configured-key": f"{version}.{kid(NEW)}.{body}",
        "unknown-key": f"{version}.deadbeef.{body}",
        "other-version": f"v2.{key}.{body}",
        "no-separators": body,
        "not-base64": f"{version}.{key}.{'!' * len(body)}",
    }


def test_tampered_ciphertext_is_an_error_never_garbage(settings, fake_provider_row):
    settings.TOKEN_ENCRYPTION_KEYS = f"{OLD},{NEW}"
    cid, _ = stored_row(fake_provider_row, 1)
    row = Connection.objects.get(pk=cid)
    for value in _tampered(row.access_token_enc).values():
        with pytest.raises(crypto.DecryptionError):
            crypto.decrypt(value, aad=row.aad("access_token"))


def test_tampered_ciphertext_over_http_is_a_500_that_names_nothing(stack, fake_provider, fake_provider_row, caplog):
    key = stack.key()
    cid = connect(stack, fake_provider, key)
    original = Connection.objects.get(pk=cid).access_token_enc
    plaintext = token_values(cid)["access_token"]
    for case, value in _tampered(original).items():
        Connection.objects.filter(pk=cid).update(access_token_enc=value)
        response = stack.call("GET", f"/v1/token/{cid}", key)
        assert response.status_code >= 500, case
        assert response.json()["error"] == "token_unreadable", case
        body = response.text
        assert plaintext not in body and value not in body and OLD not in body and kid(OLD) not in body, case
    logged = caplog.text
    assert plaintext not in logged and original.split(".")[2] not in logged


def test_wrong_key_ring_never_serves_garbage(stack, fake_provider, fake_provider_row, settings):
    key = stack.key()
    cid = connect(stack, fake_provider, key)
    settings.TOKEN_ENCRYPTION_KEYS = STRANGER
    response = stack.call("GET", f"/v1/token/{cid}", key)
    assert response.status_code >= 500 and response.json()["error"] == "token_unreadable"
    assert "access_token" not in response.json()


# -- rotation ---------------------------------------------------------------------------------------


@pytest.fixture
def old_rows(settings, fake_provider_row):
    """Five connections, the provider's client secret and a webhook secret, all under OLD;
    then NEW is put first in the key ring (the operator's first rotation step)."""
    rows = dict(stored_row(fake_provider_row, n) for n in range(5))
    webhook_endpoint_create(workspace="ws-a", url="https://hooks.example.com/dromos")
    settings.TOKEN_ENCRYPTION_KEYS = f"{NEW},{OLD}"
    return rows


def test_check_reports_values_per_key_and_fails_while_retired_keys_hold_data(old_rows):
    with pytest.raises(CommandError, match="^7 rows still use retired or unknown keys"):
        rotate("--check")
    out, _ = rotate_output_of_failure("--check")
    assert f"key {kid(NEW)} (primary): 0 values" in out
    assert f"key {kid(OLD)} (retired): 17 values" in out  # 5 × 3 tokens, a client secret, a webhook secret
    assert "rows remaining under retired or unknown keys: 7 (connections 5, providers 1, webhooks 1)" in out


def rotate_output_of_failure(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError):
        call_command("rotate_token_keys", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_rotation_reencrypts_every_row_in_batches_with_progress(old_rows, monkeypatch, fake_provider_row):
    batches: list[int] = []
    real = rotate_token_keys.Command._rotate_batch

    def spy(self, target, ring, stale, ids, tally):
        batches.append(len(ids))
        return real(self, target, ring, stale, ids, tally)

    monkeypatch.setattr(rotate_token_keys.Command, "_rotate_batch", spy)
    out, err = rotate("--batch-size", "2")
    assert batches == [2, 2, 1, 1, 1]  # connections in batches of two, the provider, the webhook
    assert f"re-encrypted under key {kid(NEW)}: 5 connections, 1 providers, 1 webhooks" in out
    assert "rows remaining under retired or unknown keys: 0 (connections 0, providers 0, webhooks 0)" in out
    assert "connections  [" in err and "5/5 rows" in err and "providers    [" in err  # the progress bar
    for cid, values in old_rows.items():
        row = Connection.objects.get(pk=cid)
        for name in TOKEN_FIELDS:
            assert getattr(row, f"{name}_enc").startswith(f"v1.{kid(NEW)}.")
        assert token_values(cid) == values
    # The retired key can go: NEW alone reads everything, and --check says so.
    django_settings.TOKEN_ENCRYPTION_KEYS = NEW
    assert all(token_values(cid) == values for cid, values in old_rows.items())
    assert client_secret(Provider.objects.get(pk=fake_provider_row.pk)) == "fake-client-secret-value"
    assert endpoint_secret(WebhookEndpoint.objects.get()).startswith("whsec_")
    out, _ = rotate("--check")
    assert "rows remaining under retired or unknown keys: 0" in out
    # Running it again is a no-op.
    assert "0 connections, 0 providers, 0 webhooks" in rotate()[0]


def test_rotation_is_online_rows_held_by_a_refresh_are_skipped_not_waited_for(old_rows):
    """A refresh holds its row lock (FOR UPDATE) for the length of a provider call: the
    rotation neither waits for it nor fails on it, it comes back to it later."""
    held = next(iter(old_rows))
    locked, release = threading.Event(), threading.Event()

    def refresh_in_flight():
        try:
            with transaction.atomic():
                Connection.objects.select_for_update().get(pk=held)
                locked.set()
                release.wait(30)
        finally:
            db_connection.close()

    worker = threading.Thread(target=refresh_in_flight)
    worker.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        out, err = rotate_output_of_failure("--passes", "1")
        assert time.monotonic() - started < 5  # never blocked behind the lock
        assert "re-encrypted under key" in out and "4 connections, 1 providers, 1 webhooks" in out
        assert "rows remaining under retired or unknown keys: 1 (connections 1, providers 0, webhooks 0)" in out
    finally:
        release.set()
        worker.join(10)
    out, _ = rotate()
    assert "1 connections, 0 providers, 0 webhooks" in out and "remaining under retired or unknown keys: 0" in out
    assert all(token_values(cid) == values for cid, values in old_rows.items())


def test_rotation_waits_for_a_row_released_during_its_retry_passes(old_rows):
    held = next(iter(old_rows))
    locked = threading.Event()

    def short_refresh():
        try:
            with transaction.atomic():
                Connection.objects.select_for_update().get(pk=held)
                locked.set()
                time.sleep(0.3)
        finally:
            db_connection.close()

    worker = threading.Thread(target=short_refresh)
    worker.start()
    assert locked.wait(10)
    out, _ = rotate("--passes", "10")
    worker.join(10)
    assert "5 connections, 1 providers, 1 webhooks" in out and "remaining under retired or unknown keys: 0" in out


def test_rows_that_no_longer_decrypt_are_reported_by_id_not_fatal(old_rows, settings, caplog):
    victim = next(iter(old_rows))
    row = Connection.objects.get(pk=victim)
    body = row.access_token_enc.split(".", 2)[2]
    Connection.objects.filter(pk=victim).update(access_token_enc=f"v1.{kid(STRANGER)}.{body}")
    out, _ = rotate_output_of_failure()
    assert "4 connections, 1 providers, 1 webhooks" in out
    assert "rows that did not decrypt with any configured key: 1" in out
    assert "rows remaining under retired or unknown keys: 1" in out
    assert any(getattr(r, "row_id", None) == victim for r in caplog.records)
    out, _ = rotate_output_of_failure("--check")
    assert f"key {kid(STRANGER)} (NOT CONFIGURED: these values cannot be decrypted): 1 values" in out


# -- a wrong or missing key stops the broker --------------------------------------------------------


def _env(**overrides: str) -> dict[str, str]:
    db = django_settings.DATABASES["default"]
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": django_settings.REDIS_URL,
        "DJANGO_SETTINGS_MODULE": "dromos.settings.broker",
        "DJANGO_SECRET_KEY": "s" * 40,
        "BROKER_API_KEY": "b" * 40,
        "TOKEN_ENCRYPTION_KEYS": OLD,
        "DROMOS_VAR_DIR": str(ROOT / "var" / "security-tests"),
        **overrides,
    }


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=120
    )


BOOT_BROKER = ["-c", "import dromos.wsgi; print('serving')"]


@pytest.mark.parametrize(
    "keys, message",
    [
        ("", "TOKEN_ENCRYPTION_KEYS"),
        ("not-base64-at-all!", "TOKEN_ENCRYPTION_KEYS entry 1 is not url-safe base64"),
        ("c2hvcnQ=", "TOKEN_ENCRYPTION_KEYS entry 1 must decode to 32 bytes"),
        (f"{NEW},c2hvcnQ=", "TOKEN_ENCRYPTION_KEYS entry 2 must decode to 32 bytes"),
    ],
)
@pytest.mark.live  # Django in a child process
def test_missing_or_malformed_key_ring_refuses_to_start(keys, message):
    for args in (["manage.py", "check"], BOOT_BROKER) if not keys else (["manage.py", "check"],):
        done = _run(args, TOKEN_ENCRYPTION_KEYS=keys)
        assert done.returncode != 0 and "serving" not in done.stdout, args
        assert message in done.stderr, done.stderr[-2000:]
        if keys:
            assert keys not in done.stderr  # the message never echoes a key


@pytest.mark.live  # Django in a child process
def test_wrong_key_ring_for_the_stored_data_refuses_to_start(fake_provider, fake_provider_row):
    stored_row(fake_provider_row, 1)
    ok = _run(BOOT_BROKER)
    assert ok.returncode == 0 and "serving" in ok.stdout, ok.stderr[-2000:]
    for keys in (STRANGER, f"{STRANGER},{NEW}"):  # a wrong key; the old key dropped too early
        booted = _run(BOOT_BROKER, TOKEN_ENCRYPTION_KEYS=keys)
        assert booted.returncode != 0 and "serving" not in booted.stdout
        assert "TOKEN_ENCRYPTION_KEYS cannot decrypt stored data" in booted.stderr, booted.stderr[-2000:]
        checked = _run(["manage.py", "check", "--database", "default"], TOKEN_ENCRYPTION_KEYS=keys)
        assert checked.returncode != 0
        assert "dromos.E004" in checked.stderr and "dromos.E002" in checked.stderr, checked.stderr[-2000:]
        assert STRANGER not in booted.stderr + checked.stderr


def test_every_encrypted_connection_column_is_rotated():
    """A new ciphertext column (the device flow's device_code_enc) is re-encrypted by
    rotate_token_keys, or a key rotation would strand it."""
    from broker_app.management.commands.rotate_token_keys import TARGETS

    encrypted = {f.name for f in Connection._meta.concrete_fields if f.name.endswith("_enc")}
    assert encrypted == set(next(t for t in TARGETS if t.model is Connection).fields)
