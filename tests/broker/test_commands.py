"""The manage.py interfaces scripts rely on, with DESIGN.md's spellings."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from broker_app.models import Provider
from broker_app.providers.registry import client_secret, resolve
from gateway_app.keys import apikey_verify
from gateway_app.models import ApiKey

pytestmark = pytest.mark.django_db


def _run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_provider_upsert_creates_then_updates_google():
    out = _run(
        "provider",
        "upsert",
        "--name",
        "google",
        "--client-id",
        "cid.apps.googleusercontent.com",
        "--client-secret",
        "very-secret-value",
        "--default-scopes",
        "openid email",
        "--authorize-param",
        "hd=example.com",
        "--token-auth",
        "client_secret_post",
    )
    assert out.startswith("created provider google (template google")
    provider = Provider.objects.get(name="google")
    assert "very-secret-value" not in provider.client_secret_enc and client_secret(provider) == "very-secret-value"
    spec, _ = resolve(provider)
    assert spec.authorize_params == {
        "access_type": "offline",
        "prompt": "consent",
        "include_granted_scopes": "true",
        "hd": "example.com",
    }
    assert spec.default_scopes == ("openid", "email") and spec.token_auth == "client_secret_post"
    assert "very-secret-value" not in repr(spec)
    _run("provider", "upsert", "--name", "google", "--client-id", "other-id")
    provider.refresh_from_db()
    assert provider.client_id == "other-id" and client_secret(provider) == "very-secret-value"
    listing = _run("provider", "list")
    assert "google\tgoogle\tenabled\tclient_id=other-id\tsecret set" in listing
    assert "very-secret-value" not in listing


def test_provider_upsert_generic_oidc_from_discovery(fake_provider):
    out = _run(
        "provider",
        "upsert",
        "--name",
        "corp-sso",
        "--discovery-url",
        fake_provider.discovery_url,
        "--client-id",
        "c",
        "--client-secret",
        "s",
    )
    assert "template oidc" in out
    spec, _ = resolve(Provider.objects.get(name="corp-sso"))
    assert spec.token_url == f"{fake_provider.url}/token" and spec.issuer == fake_provider.issuer


def test_provider_upsert_rejects_unknown_template_and_unreachable_discovery():
    with pytest.raises(CommandError, match="unknown template"):
        _run("provider", "upsert", "--name", "x", "--template", "nope")
    with pytest.raises(CommandError, match="not saved"):
        _run(
            "provider",
            "upsert",
            "--name",
            "y",
            "--discovery-url",
            "http://127.0.0.1:9/.well-known/x",
            "--client-id",
            "c",
        )
    assert not Provider.objects.filter(name__in=["x", "y"]).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--name", "bad name!", "--template", "oidc", "--discovery-url", "https://idp.example.com"), "name: "),
        (
            ("--name", "okname", "--template", "oidc", "--discovery-url", "not a url"),
            "discovery_url: Enter a valid URL",
        ),
        (("--name", "x" * 65, "--template", "oidc", "--discovery-url", "https://idp.example.com"), "name: "),
    ],
)
def test_provider_upsert_refuses_invalid_fields_with_a_one_line_error(args, message):
    """A CommandError (one line, exit 1), not a ValidationError traceback; nothing saved."""
    with pytest.raises(CommandError, match=f"^provider not saved: {message}"):
        _run("provider", "upsert", *args, "--client-id", "c", "--client-secret", "s3cr3t-value", "--no-check")
    assert Provider.objects.count() == 0


def test_apikey_create_prints_the_key_alone_as_last_line():
    out = _run("apikey", "create", "--workspace", "acme", "--name", "agent")
    key = out.strip().splitlines()[-1]
    assert key.startswith("dk_") and " " not in key
    row = ApiKey.objects.get(workspace="acme")
    assert key not in row.key_digest and row.prefix in key
    assert apikey_verify(key).workspace == "acme"
    assert row.prefix in _run("apikey", "list") and key not in _run("apikey", "list")
    _run("apikey", "revoke", "--prefix", row.prefix)
    from gateway_app.keys import cache_clear

    cache_clear()
    assert apikey_verify(key) is None
