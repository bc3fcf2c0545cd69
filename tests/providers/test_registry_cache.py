"""registry.resolve builds a provider's spec (and decrypts its client secret) once per row
version and parameters; every way an operator changes the row is a new version."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from broker_app import crypto
from broker_app.models import Provider
from broker_app.providers import registry
from broker_app.providers.registry import resolve

pytestmark = pytest.mark.django_db

NEW_KEY = "UjwRr6YmUucHTPeCrXXI3WIHtmK4QPVwVI1mWUtYqiA="


@pytest.fixture
def decrypts(monkeypatch) -> list[str]:
    """The AADs of every decryption the registry does."""
    seen: list[str] = []
    real = crypto.decrypt

    def spy(value, *, aad):
        seen.append(aad)
        return real(value, aad=aad)

    monkeypatch.setattr(registry.crypto, "decrypt", spy)
    registry.cache_clear()
    return seen


def fresh(provider: Provider) -> Provider:
    return Provider.objects.get(pk=provider.pk)  # as a callback or a refresh loads it


def test_one_row_version_is_resolved_once_per_parameters(fake_provider_row, decrypts):
    first, hooks = resolve(fresh(fake_provider_row))
    again, same_hooks = resolve(fresh(fake_provider_row))
    assert again == first and same_hooks is hooks and first.client_secret == "fake-client-secret-value"
    assert len(decrypts) == 1
    resolve(fresh(fake_provider_row), {})
    assert len(decrypts) == 1  # no parameters and empty parameters are the same connection
    zendesk = Provider.objects.create(name="zd", template="zendesk", client_id="c")
    acme, _ = resolve(zendesk, {"subdomain": "acme"})
    assert resolve(fresh(zendesk), {"subdomain": "acme"})[0] == acme
    other, _ = resolve(fresh(zendesk), {"subdomain": "globex"})
    assert acme.token_url == "https://acme.zendesk.com/oauth/tokens"
    assert other.token_url == "https://globex.zendesk.com/oauth/tokens"
    assert len(decrypts) == 3  # one per (row version, parameters)


def test_the_provider_command_invalidates(fake_provider_row, decrypts):
    assert resolve(fresh(fake_provider_row))[0].client_secret == "fake-client-secret-value"
    call_command("provider", "upsert", "--name", "fake", "--client-secret", "rotated-secret", stdout=io.StringIO())
    assert resolve(fresh(fake_provider_row))[0].client_secret == "rotated-secret"


def test_an_admin_save_invalidates(fake_provider_row, decrypts):
    spec, _ = resolve(fresh(fake_provider_row))
    assert "prompt" not in spec.authorize_params and spec.display_name != "Fake SSO"
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("operator", "operator@example.test", "pw-not-used"))
    row = fresh(fake_provider_row)
    form = {
        "name": row.name,
        "display_name": "Fake SSO",
        "template": row.template,
        "client_id": row.client_id,
        "discovery_url": row.discovery_url,
        "authorize_url": "",
        "token_url": "",
        "revocation_url": "",
        "userinfo_url": "",
        "default_scopes": '["openid", "email", "profile"]',
        "authorize_params": '{"prompt": "login"}',
        "token_auth": "",
        "settings": "{}",
        "enabled": "on",
    }
    response = client.post(reverse("admin:broker_app_provider_change", args=[row.pk]), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    spec, _ = resolve(fresh(fake_provider_row))
    assert spec.authorize_params == {"prompt": "login"} and spec.display_name == "Fake SSO"


def test_a_secret_written_without_touching_updated_at_invalidates(fake_provider_row, decrypts):
    """The row's version is all of it, not updated_at alone (a queryset update skips auto_now)."""
    resolve(fresh(fake_provider_row))
    row = fresh(fake_provider_row)
    registry.set_client_secret(row, "written-by-update")
    Provider.objects.filter(pk=row.pk).update(client_secret_enc=row.client_secret_enc)
    assert fresh(fake_provider_row).updated_at == row.updated_at
    assert resolve(fresh(fake_provider_row))[0].client_secret == "written-by-update"


def test_key_rotation_invalidates(fake_provider_row, decrypts, settings):
    """rotate_token_keys re-encrypts the secret under the new key; once the old key is
    retired, the spec comes from the new ciphertext, not from what was cached."""
    resolve(fresh(fake_provider_row))
    settings.TOKEN_ENCRYPTION_KEYS = f"{NEW_KEY},{settings.TOKEN_ENCRYPTION_KEYS}"
    call_command("rotate_token_keys", stdout=io.StringIO(), stderr=io.StringIO())
    settings.TOKEN_ENCRYPTION_KEYS = NEW_KEY
    rotated = fresh(fake_provider_row)
    assert rotated.client_secret_enc != fake_provider_row.client_secret_enc
    assert resolve(rotated)[0].client_secret == "fake-client-secret-value"
    assert len(decrypts) == 2
