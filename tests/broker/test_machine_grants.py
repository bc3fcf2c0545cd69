"""Machine connections (issue 18): client credentials (RFC 6749 §4.4), GitHub App installation
tokens and the JWT bearer grant (RFC 7523, Google service accounts), over the gateway → broker
HTTP path, against the fake provider (client credentials edge cases) and fakes that check the
app's JWT exactly as GitHub and Google document it (tests/support/fake_app_providers.py)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from io import StringIO

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from fake_app_providers import new_key_pem
from fake_provider import CLIENT_ID, CLIENT_SECRET, respond

from broker_app import crypto
from broker_app.models import AuditEvent, Connection, Provider, WebhookDelivery
from broker_app.oauth import assertions
from broker_app.providers import registry
from broker_app.providers.registry import private_key, set_private_key
from broker_app.services.refresh import token_refresh_due
from broker_app.services.sweep import due_queryset
from broker_app.webhooks import webhook_endpoint_create
from tests.conftest import make_provider

pytestmark = pytest.mark.django_db(transaction=True)
APP_ID = "Iv23liAbCdEf012345"  # a GitHub App client id (the JWT's iss)
SA_EMAIL = "agent-bot@acme-project.iam.gserviceaccount.com"


def _cc(stack, key, **body):
    payload = {"user_id": "svc", "provider_name": "fake", "flow": "client_credentials", **body}
    return stack.call("POST", "/v1/request-connection", key, json=payload)


def _expire_soon(cid: str, seconds: int = 30) -> None:
    now = timezone.now()
    Connection.objects.filter(pk=cid).update(
        expires_at=now + timedelta(seconds=seconds), last_refreshed_at=now - timedelta(seconds=600)
    )


# -- client credentials --------------------------------------------------------------------------
def test_client_credentials_with_the_provider_app_is_active_and_served_as_bearer(stack, fake_provider_row):
    key = stack.key()
    created = _cc(stack, key, scopes=["api.read", "api.write"], audience="https://api.example.test")
    assert created.status_code == 201, created.text
    assert created.headers["Cache-Control"] == "no-store"
    body = created.json()
    assert body["status"] == "active" and body["flow"] == "client_credentials"
    assert body["scopes"] == ["api.read", "api.write"] and body["warnings"] == []
    assert _last_form == {
        "grant_type": "client_credentials",
        "scope": "api.read api.write",
        "audience": "https://api.example.test",
    }
    token = stack.call("GET", f"/v1/token/{body['connection_id']}", key).json()
    assert token["token_type"] == "Bearer" and token["access_token"].startswith("at-") and token["expires_at"]
    actions = AuditEvent.objects.filter(connection_id=body["connection_id"]).order_by("id")
    assert list(actions.values_list("action", flat=True))[:2] == ["connection.requested", "connection.activated"]


def test_a_machine_connection_lives_in_its_keys_environment(stack, fake_provider_row):
    """Environments (issue 19): made with a development key, a client-credentials connection
    is development's; a production key of the same workspace gets 404 for it."""
    dev, prod = stack.key(environment="development"), stack.key()
    created = _cc(stack, dev)
    assert created.status_code == 201, created.text
    cid = created.json()["connection_id"]
    assert Connection.objects.get(pk=cid).environment == "development"
    assert stack.call("GET", f"/v1/token/{cid}", dev).status_code == 200
    assert stack.call("GET", f"/v1/token/{cid}", prod).status_code == 404
    assert AuditEvent.objects.filter(connection_id=cid).values_list("environment", flat=True).distinct().get() == (
        "development"
    )


_last_form: dict = {}  # the last form the fake provider's token endpoint received


@pytest.fixture(autouse=True)
def _remember_forms(fake_provider, monkeypatch):
    real = fake_provider.token_endpoint

    def recording(form):
        _last_form.clear()
        _last_form.update(form)
        return real(form)

    monkeypatch.setattr(fake_provider, "token_endpoint", recording)


def test_per_connection_client_is_used_stored_encrypted_and_never_answered(stack, fake_provider, fake_provider_row):
    fake_provider.cc_clients = {"tenant-42-client": "tenant-42-secret-value"}
    key = stack.key()
    created = _cc(stack, key, client_id="tenant-42-client", client_secret="tenant-42-secret-value", resource="urn:x")
    assert created.status_code == 201 and created.json()["status"] == "active", created.text
    cid = created.json()["connection_id"]
    assert fake_provider.last_token_auth.startswith("Basic ")  # the connection's client, not the app's
    assert _last_form["resource"] == "urn:x"
    answers = [
        created,
        stack.call("GET", f"/v1/check-connection/{cid}", key),
        stack.call("GET", "/v1/connections", key),
        stack.call("GET", f"/v1/token/{cid}", key),
    ]
    for answer in answers:
        assert "tenant-42-secret-value" not in answer.text and "tenant-42-client" not in answer.text
    row = Connection.objects.get(pk=cid)
    assert "tenant-42-secret-value" not in row.grant_secret_enc and row.grant_params == {"resource": "urn:x"}
    assert json.loads(crypto.decrypt(row.grant_secret_enc, aad=row.aad("grant_secret"))) == {
        "client_id": "tenant-42-client",
        "client_secret": "tenant-42-secret-value",
    }
    # Re-obtained with the same client when near expiry (a plain read).
    _expire_soon(cid)
    before = fake_provider.cc_calls
    token = stack.call("GET", f"/v1/token/{cid}", key).json()
    assert fake_provider.cc_calls == before + 1 and fake_provider.last_token_auth.startswith("Basic ")
    assert token["access_token"] != answers[3].json()["access_token"]


def test_wrong_secret_fails_with_the_provider_error_and_never_asks_again(stack, fake_provider, fake_provider_row):
    fake_provider.cc_clients = {"tenant-7": "right-secret-value"}
    key = stack.key()
    created = _cc(stack, key, client_id="tenant-7", client_secret="wrong-secret-value")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "failed" and body["error"] == "invalid_client"
    assert "wrong-secret-value" not in created.text
    cid = body["connection_id"]
    assert fake_provider.cc_calls == 1
    row = Connection.objects.get(pk=cid)
    assert row.grant_secret_enc == ""  # a failed machine connection keeps no secret
    token = stack.call("GET", f"/v1/token/{cid}", key)
    assert token.status_code == 409 and token.json()["reconnect_required"] is True
    assert stack.call("POST", f"/v1/refresh/{cid}", key).status_code == 409
    assert not due_queryset(now=timezone.now() + timedelta(days=1), window_seconds=600).filter(pk=cid).exists()
    assert fake_provider.cc_calls == 1  # no loop
    assert list(AuditEvent.objects.filter(connection_id=cid).values_list("action", flat=True).order_by("id")) == [
        "connection.requested",
        "connection.failed",
    ]


def test_secret_changed_later_fails_the_active_connection_once(stack, fake_provider, fake_provider_row):
    fake_provider.cc_clients = {"tenant-8": "first-secret-value"}
    key = stack.key()
    cid = _cc(stack, key, client_id="tenant-8", client_secret="first-secret-value").json()["connection_id"]
    fake_provider.cc_clients = {"tenant-8": "rotated-at-the-provider"}
    _expire_soon(cid)
    answer = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key)
    assert answer.status_code == 409, answer.text
    status = stack.call("GET", f"/v1/check-connection/{cid}", key).json()
    assert status["status"] == "failed" and status["error"] == "invalid_client"
    calls = fake_provider.cc_calls
    assert token_refresh_due(connection_id=cid).outcome.value == "not_active"
    assert fake_provider.cc_calls == calls


def test_no_expires_in_means_no_expiry_until_a_refresh_is_asked(stack, fake_provider, fake_provider_row):
    fake_provider.access_token_ttl = None
    key = stack.key()
    created = _cc(stack, key)
    cid = created.json()["connection_id"]
    assert created.json()["status"] == "active" and created.json()["expires_at"] is None
    first = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=86400", key).json()
    assert first["expires_at"] is None and fake_provider.cc_calls == 1  # never re-requested on reads
    assert not due_queryset(now=timezone.now() + timedelta(days=365), window_seconds=600).filter(pk=cid).exists()
    refreshed = stack.call("POST", f"/v1/refresh/{cid}", key)
    assert refreshed.status_code == 200 and fake_provider.cc_calls == 2
    assert refreshed.json()["access_token"] != first["access_token"]


def test_near_expiry_many_callers_one_token_request(stack, fake_provider, fake_provider_row, settings):
    # Every caller waits for the one token request (no gateway bulkhead, enough waiters).
    settings.GATEWAY_SLOW_CALLS_PER_KEY = settings.GATEWAY_SLOW_CALLS_PER_WORKSPACE = 0
    settings.REFRESH_MAX_WAITERS = 20
    key = stack.key()
    cid = _cc(stack, key).json()["connection_id"]
    _expire_soon(cid)
    results: list[str] = []

    def read():
        answer = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key)
        results.append(answer.json().get("access_token", answer.text))

    threads = [threading.Thread(target=read) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake_provider.cc_calls == 2  # creation + one re-request, however many callers
    assert len(set(results)) == 1


def test_the_sweep_re_obtains_a_token_in_use(stack, fake_provider, fake_provider_row):
    key = stack.key()
    cid = _cc(stack, key).json()["connection_id"]
    now = timezone.now()
    Connection.objects.filter(pk=cid).update(
        expires_at=now + timedelta(seconds=60),
        last_refreshed_at=now - timedelta(seconds=3540),
        last_read_at=now - timedelta(seconds=3500),
    )
    assert due_queryset(now=now, window_seconds=600).filter(pk=cid).exists()
    assert token_refresh_due(connection_id=cid).outcome.value == "success"
    assert fake_provider.cc_calls == 2
    assert Connection.objects.get(pk=cid).expires_at > now + timedelta(seconds=3000)


def test_provider_down_at_creation_stores_nothing_and_later_keeps_the_token(stack, fake_provider, fake_provider_row):
    key = stack.key()
    fake_provider.script(respond(503, {"error": "temporarily_unavailable"}))
    down = _cc(stack, key)
    assert down.status_code == 503 and down.json()["error"] == "provider_unavailable"
    assert Connection.objects.count() == 0 and AuditEvent.objects.count() == 0
    cid = _cc(stack, key).json()["connection_id"]
    current = stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"]
    _expire_soon(cid)
    fake_provider.script(respond(503, {"error": "temporarily_unavailable"}))
    served = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key)
    assert served.status_code == 200 and served.json()["access_token"] == current  # still valid: served
    row = Connection.objects.get(pk=cid)
    assert row.status == "active" and row.refresh_failures == 1 and row.next_refresh_attempt_at is not None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"client_secret": "only-the-secret"}, "client_id"),
        ({"client_id": "only-the-id"}, "client_secret"),
        ({"private_key": "-----BEGIN PRIVATE KEY-----"}, "private_key"),
        ({"subject": "someone@example.test"}, "subject"),
        ({"client_id": "c", "client_secret": "bad\r\nX-Injected: 1"}, "client_secret"),
        ({"audience": "two words"}, "audience"),
        ({"client_id": "clïent", "client_secret": "s3cret-value"}, "client_id"),
    ],
)
def test_client_credentials_bad_input_is_400_and_stores_nothing(stack, fake_provider_row, body, field):
    answer = _cc(stack, stack.key(), **body)
    assert answer.status_code == 400, answer.text
    assert field in answer.json()["details"]
    assert "only-the-secret" not in answer.text and "bad\r\n" not in answer.text
    assert Connection.objects.count() == 0


def test_machine_fields_on_the_code_flow_are_refused(stack, fake_provider_row):
    answer = stack.call(
        "POST",
        "/v1/request-connection",
        stack.key(),
        json={"user_id": "u", "provider_name": "fake", "return_url": "https://app.example.com/r", "client_secret": "x"},
    )
    assert answer.status_code == 400 and "client_secret" in answer.json()["details"]


def test_a_provider_without_the_grant_or_needing_audience_is_refused(stack, fake_provider_row):
    Provider.objects.create(name="gh", template="github", client_id="x")
    answer = _cc(stack, stack.key(), provider_name="gh")
    assert answer.status_code == 400 and "flow" in answer.json()["details"]
    # Auth0 issues machine tokens for one API, named by `audience` (grant_requires).
    auth0 = Provider(name="a0", template="auth0", client_id="x", settings={"domain": "acme.us.auth0.com"})
    registry.set_client_secret(auth0, "s" * 20)
    auth0.save()
    answer = _cc(stack, stack.key(), provider_name="a0")
    assert answer.status_code == 400 and "audience" in answer.json()["details"]
    assert Connection.objects.count() == 0


def test_a_provider_without_a_client_secret_needs_the_connection_client(stack, fake_provider):
    Provider.objects.create(name="public", template="oidc", discovery_url=fake_provider.discovery_url, client_id="x")
    answer = _cc(stack, stack.key(), provider_name="public")
    assert answer.status_code == 400 and "client_id" in answer.json()["details"]
    assert Connection.objects.count() == 0 and fake_provider.cc_calls == 0


def test_delete_wipes_the_connection_client_secret(stack, fake_provider, fake_provider_row):
    fake_provider.cc_clients = {"tenant-9": "tenant-9-secret-value"}
    key = stack.key()
    cid = _cc(stack, key, client_id="tenant-9", client_secret="tenant-9-secret-value").json()["connection_id"]
    assert stack.call("DELETE", f"/v1/connections/{cid}", key).status_code == 200
    row = Connection.objects.get(pk=cid)
    assert row.status == "revoked" and row.grant_secret_enc == "" and row.access_token_enc == ""


def test_rotate_token_keys_reencrypts_connection_and_provider_secrets(stack, fake_provider, settings):
    pem, _public = new_key_pem()
    fake_provider.cc_clients = {"tenant-r": "tenant-r-secret-value"}
    provider = Provider(name="fake", template="oidc", discovery_url=fake_provider.discovery_url, client_id=CLIENT_ID)
    registry.set_client_secret(provider, "fake-client-secret-value")
    set_private_key(provider, pem)
    provider.save()
    key = stack.key()
    cid = _cc(stack, key, client_id="tenant-r", client_secret="tenant-r-secret-value").json()["connection_id"]
    old = Connection.objects.get(pk=cid).grant_secret_enc
    old_key = Provider.objects.get(pk=provider.pk).private_key_enc
    new = _new_key()
    settings.TOKEN_ENCRYPTION_KEYS = f"{new},{settings.TOKEN_ENCRYPTION_KEYS}"
    registry.cache_clear()
    call_command("rotate_token_keys", stdout=StringIO())
    row, provider = Connection.objects.get(pk=cid), Provider.objects.get(pk=provider.pk)
    assert row.grant_secret_enc != old and crypto.keyring().is_current(row.grant_secret_enc)
    assert provider.private_key_enc != old_key and crypto.keyring().is_current(provider.private_key_enc)
    assert assertions.load_private_key(private_key(provider)).key_size == 2048
    _expire_soon(cid)
    assert stack.call("GET", f"/v1/token/{cid}", key).status_code == 200  # still decrypts and works
    assert fake_provider.cc_calls == 2


def _new_key() -> str:
    import base64
    import os

    return base64.urlsafe_b64encode(os.urandom(32)).decode()


# -- GitHub App installation tokens ----------------------------------------------------------------
@pytest.fixture
def github_app(fake_app):
    pem, public = new_key_pem()
    fake_app.app_keys[APP_ID] = public
    fake_app.installations.add("4242")
    provider = Provider(
        name="acme-bot",
        template="github_app_installation",
        client_id=APP_ID,
        token_url=f"{fake_app.url}/app/installations/{{installation_id}}/access_tokens",
    )
    set_private_key(provider, pem)
    provider.save()
    return provider


def _app(stack, key, provider="acme-bot", flow="github_app", **body):
    payload = {"user_id": "repo-bot", "provider_name": provider, "flow": flow, **body}
    return stack.call("POST", "/v1/request-connection", key, json=payload)


def test_github_app_installation_token_with_a_jwt_github_accepts(stack, fake_app, github_app):
    key = stack.key()
    before = time.time()
    created = _app(stack, key, params={"installation_id": "4242"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (
        body["status"] == "active"
        and body["flow"] == "github_app"
        and body["metadata"] == {"repository_selection": "selected"}
    )
    seen = fake_app.seen[-1]
    assert seen.verdict == "ok"
    assert seen.header == {"alg": "RS256", "typ": "JWT"}
    assert seen.claims["iss"] == APP_ID
    assert before - 61 <= seen.claims["iat"] <= time.time() - 59  # 60 s in the past (clock drift)
    assert seen.claims["exp"] - seen.claims["iat"] <= 600 and seen.claims["exp"] <= time.time() + 600
    assert seen.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert seen.headers["Accept"] == "application/vnd.github+json"
    token = stack.call("GET", f"/v1/token/{body['connection_id']}", key).json()
    assert token["access_token"] == fake_app.issued[-1] and token["token_type"] == "Bearer"
    lives = (timezone.datetime.fromisoformat(token["expires_at"].replace("Z", "+00:00")) - timezone.now()).seconds
    assert 3500 < lives <= 3600
    # Re-obtained before its hour ends: a read within 60 s of the end gets a new one.
    _expire_soon(body["connection_id"])
    again = stack.call("GET", f"/v1/token/{body['connection_id']}", key).json()
    assert again["access_token"] == fake_app.issued[-1] != token["access_token"] and len(fake_app.seen) == 2


def test_github_app_with_the_connection_own_key_and_app(stack, fake_app):
    pem, public = new_key_pem()
    fake_app.app_keys["123456"] = public  # the numeric app id works as iss too
    fake_app.installations.add("77")
    Provider.objects.create(
        name="gh-apps",
        template="github_app_installation",
        token_url=f"{fake_app.url}/app/installations/{{installation_id}}/access_tokens",
    )
    key = stack.key()
    created = _app(
        stack, key, provider="gh-apps", client_id="123456", private_key=pem, params={"installation_id": "77"}
    )
    assert created.status_code == 201 and created.json()["status"] == "active", created.text
    assert fake_app.seen[-1].verdict == "ok" and fake_app.seen[-1].claims["iss"] == "123456"
    row = Connection.objects.get(pk=created.json()["connection_id"])
    assert "PRIVATE KEY" not in row.grant_secret_enc and "PRIVATE KEY" not in created.text


def test_github_app_wrong_key_or_installation_fails_with_the_provider_error(stack, fake_app, github_app):
    key = stack.key()
    unknown = _app(stack, key, params={"installation_id": "999"})
    assert unknown.json()["status"] == "failed" and unknown.json()["error"] == "installation_not_found"
    other_pem, _ = new_key_pem()  # well-formed, but not the app's key
    wrong = _app(stack, key, private_key=other_pem, params={"installation_id": "4242"})
    assert wrong.status_code == 201 and wrong.json()["error"] == "invalid_client", wrong.text
    assert fake_app.seen[-1].verdict == "signature"
    assert len(fake_app.seen) == 2


def _pem(key, fmt=serialization.PrivateFormat.PKCS8, encryption=None) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption or serialization.NoEncryption()).decode()


@pytest.mark.parametrize(
    ("private_key", "says"),
    [
        ("not a key at all", "not a PEM private key"),
        ("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "not a valid PEM"),
        ("EC", "not an RSA key"),
        ("SMALL", "at least 2048"),
        ("ENCRYPTED", "passphrase"),
    ],
)
def test_malformed_private_key_is_a_clear_400_and_nothing_is_stored(stack, fake_app, github_app, private_key, says):
    if private_key == "EC":
        private_key = _pem(ec.generate_private_key(ec.SECP256R1()))
    elif private_key == "SMALL":
        private_key = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505 (the point)
    elif private_key == "ENCRYPTED":
        private_key = _pem(
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            encryption=serialization.BestAvailableEncryption(b"passphrase"),
        )
    answer = _app(stack, stack.key(), private_key=private_key, params={"installation_id": "4242"})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request", answer.text
    assert says in answer.json()["message"] and "private_key" in answer.json()["details"]
    assert private_key.strip() not in answer.text and "MII" not in answer.text and "AAAA" not in answer.text
    assert Connection.objects.count() == 0 and fake_app.seen == []


def test_provider_command_refuses_a_malformed_key_and_stores_a_good_one(tmp_path, fake_app, db):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CommandError, match="provider not saved: the private key is not a valid PEM"):
        call_command(
            "provider", "upsert", "--name", "bot", "--template", "github_app_installation",
            "--client-id", APP_ID, "--private-key-file", str(bad), stdout=StringIO(),
        )  # fmt: skip
    assert not Provider.objects.filter(name="bot").exists()
    good = tmp_path / "good.pem"
    pem, _ = new_key_pem()
    good.write_text(pem)
    out = StringIO()
    call_command(
        "provider", "upsert", "--name", "bot", "--template", "github_app_installation",
        "--client-id", APP_ID, "--private-key-file", str(good), stdout=out,
    )  # fmt: skip
    provider = Provider.objects.get(name="bot")
    assert "PRIVATE KEY" not in provider.private_key_enc and "PRIVATE KEY" not in out.getvalue()
    assert assertions.load_private_key(private_key(provider)).key_size == 2048


def test_missing_private_key_or_installation_is_400(stack, fake_app):
    Provider.objects.create(name="nokey", template="github_app_installation", client_id=APP_ID)
    key = stack.key()
    answer = _app(stack, key, provider="nokey", params={"installation_id": "1"})
    assert answer.status_code == 400 and "private_key" in answer.json()["details"]
    pem, _ = new_key_pem()
    answer = _app(stack, key, provider="nokey", private_key=pem)
    assert answer.status_code == 400 and "installation_id" in answer.json()["message"]
    assert Connection.objects.count() == 0


# -- JWT bearer (Google service accounts) -----------------------------------------------------------
@pytest.fixture
def service_account(fake_app):
    pem, public = new_key_pem()
    fake_app.service_accounts[SA_EMAIL] = public
    provider = Provider(
        name="gsa", template="google_service_account", client_id=SA_EMAIL, token_url=fake_app.google_token_url
    )
    set_private_key(provider, pem)
    provider.save()
    return provider


DRIVE = "https://www.googleapis.com/auth/drive.readonly"


def test_jwt_bearer_assertion_as_google_documents_it(stack, fake_app, service_account):
    key = stack.key()
    created = _app(stack, key, provider="gsa", flow="jwt_bearer", scopes=[DRIVE])
    assert created.status_code == 201 and created.json()["status"] == "active", created.text
    seen = fake_app.seen[-1]
    assert seen.verdict == "ok" and seen.header == {"alg": "RS256", "typ": "JWT"}
    assert seen.claims["iss"] == SA_EMAIL and seen.claims["aud"] == fake_app.google_token_url
    assert seen.claims["scope"] == DRIVE and "sub" not in seen.claims
    assert seen.claims["exp"] - seen.claims["iat"] == 3600 and abs(seen.claims["iat"] - time.time()) < 5
    assert set(seen.form) == {"grant_type", "assertion"} and "Authorization" not in seen.headers
    token = stack.call("GET", f"/v1/token/{created.json()['connection_id']}", key).json()
    assert token["access_token"] == fake_app.issued[-1] and token["token_type"] == "Bearer"


def test_jwt_bearer_impersonates_a_subject_or_fails_when_not_delegated(stack, fake_app, service_account):
    fake_app.delegation[SA_EMAIL] = {"alice@acme.example"}
    key = stack.key()
    ok = _app(stack, key, provider="gsa", flow="jwt_bearer", scopes=[DRIVE], subject="alice@acme.example")
    assert ok.json()["status"] == "active" and fake_app.seen[-1].claims["sub"] == "alice@acme.example"
    assert Connection.objects.get(pk=ok.json()["connection_id"]).grant_params == {"subject": "alice@acme.example"}
    refused = _app(stack, key, provider="gsa", flow="jwt_bearer", scopes=[DRIVE], subject="bob@acme.example")
    assert refused.json()["status"] == "failed" and refused.json()["error"] == "unauthorized_client"


def test_jwt_bearer_wrong_key_fails_invalid_grant(stack, fake_app, service_account):
    other, _ = new_key_pem()
    answer = _app(stack, stack.key(), provider="gsa", flow="jwt_bearer", scopes=[DRIVE], private_key=other)
    assert answer.json()["status"] == "failed" and answer.json()["error"] == "invalid_grant"
    assert fake_app.seen[-1].verdict == "signature"


def test_jwt_bearer_is_not_a_github_flow(stack, fake_app, service_account):
    answer = _app(stack, stack.key(), provider="gsa", flow="github_app")
    assert answer.status_code == 400 and "flow" in answer.json()["details"]
    answer = _app(stack, stack.key(), provider="gsa", flow="jwt_bearer", client_secret="not-for-this-flow")
    assert answer.status_code == 400 and "client_secret" in answer.json()["details"]
    assert Connection.objects.count() == 0


# -- the assertions themselves, exactly ---------------------------------------------------------------
def test_github_app_jwt_claims_and_lifetime():
    pem, public = new_key_pem()
    token = assertions.github_app_jwt(private_key_pem=pem, issuer=APP_ID, now=1_700_000_000)
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT"}
    claims = jwt.decode(token, public, algorithms=["RS256"], options={"verify_exp": False})
    assert claims == {"iat": 1_700_000_000 - 60, "exp": 1_700_000_000 + 540, "iss": APP_ID}


def test_jwt_bearer_assertion_claims():
    pem, public = new_key_pem()
    token = assertions.jwt_bearer_assertion(
        private_key_pem=pem,
        issuer=SA_EMAIL,
        audience="https://oauth2.googleapis.com/token",
        scopes=["a", "b"],
        subject="u@x.example",
        now=1_700_000_000,
    )
    claims = jwt.decode(
        token,
        public,
        algorithms=["RS256"],
        audience="https://oauth2.googleapis.com/token",
        options={"verify_exp": False},
    )
    assert claims == {
        "iss": SA_EMAIL,
        "aud": "https://oauth2.googleapis.com/token",
        "iat": 1_700_000_000,
        "exp": 1_700_003_600,
        "scope": "a b",
        "sub": "u@x.example",
    }


def test_a_key_with_escaped_newlines_from_a_json_key_file_loads():
    pem, _ = new_key_pem()
    assert assertions.load_private_key(pem.replace("\n", "\\n")).key_size == 2048


# -- the proxy, events -------------------------------------------------------------------------------
def test_proxy_injects_a_machine_token_and_a_401_re_obtains_one(stack, fake_provider):
    """A client-credentials token without expires_in is used until the API refuses it: the
    proxy's 401 re-requests one (single flight, as a refresh) and retries once."""
    from gateway_app import egress, proxy

    proxy.credentials_clear()
    proxy.pools_clear()
    egress.cache_clear()
    make_provider(
        name="fake",
        discovery_url=fake_provider.discovery_url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        api_base_url=f"{fake_provider.url}/api",
    )
    fake_provider.access_token_ttl = None
    key = stack.key()
    cid = _cc(stack, key).json()["connection_id"]
    first = stack.call("GET", f"/v1/proxy/{cid}/reports", key)
    assert first.status_code == 200 and fake_provider.api_calls[-1]["token_valid"] is True
    used = fake_provider.api_calls[-1]["headers"]["authorization"]
    assert used.startswith("Bearer at-") and used.removeprefix("Bearer ") not in first.text
    fake_provider.expire_access_tokens()
    again = stack.call("GET", f"/v1/proxy/{cid}/reports", key)
    assert again.status_code == 200, again.text
    assert fake_provider.cc_calls == 2 and fake_provider.api_calls[-1]["token_valid"] is True
    assert fake_provider.api_calls[-1]["headers"]["authorization"] != used
    proxy.credentials_clear()
    proxy.pools_clear()


def test_machine_connections_fire_the_same_events(stack, fake_provider, fake_provider_row):
    webhook_endpoint_create(workspace="ws-a", url="http://127.0.0.1:9/hook")
    fake_provider.cc_clients = {"tenant-e": "tenant-e-secret-value"}
    key = stack.key()
    ok = _cc(stack, key).json()["connection_id"]
    bad = _cc(stack, key, client_id="tenant-e", client_secret="not-it-at-all").json()["connection_id"]
    events = set(WebhookDelivery.objects.values_list("connection_id", "event"))
    assert {(ok, "connection.activated"), (bad, "connection.failed")} <= events
    payloads = " ".join(str(p) for p in WebhookDelivery.objects.values_list("payload", flat=True))
    assert "not-it-at-all" not in payloads and "tenant-e-secret-value" not in payloads


@pytest.mark.parametrize("flow", ["github_app", "jwt_bearer"])
def test_proxy_injects_app_tokens_as_bearer(stack, fake_app, fake_provider, github_app, service_account, flow):
    from gateway_app import egress, proxy

    proxy.credentials_clear()
    proxy.pools_clear()
    egress.cache_clear()
    provider = github_app if flow == "github_app" else service_account
    Provider.objects.filter(pk=provider.pk).update(api_base_url=f"{fake_provider.url}/api")
    key = stack.key()
    extra = {"params": {"installation_id": "4242"}} if flow == "github_app" else {"scopes": [DRIVE]}
    cid = _app(stack, key, provider=provider.name, flow=flow, **extra).json()["connection_id"]
    fake_provider.valid_access_tokens.add(fake_app.issued[-1])
    answer = stack.call("GET", f"/v1/proxy/{cid}/repos", key)
    assert answer.status_code == 200, answer.text
    [call] = fake_provider.api_calls
    assert call["headers"]["authorization"] == f"Bearer {fake_app.issued[-1]}" and call["token_valid"] is True
    assert fake_app.issued[-1] not in answer.text
    proxy.credentials_clear()
    proxy.pools_clear()
