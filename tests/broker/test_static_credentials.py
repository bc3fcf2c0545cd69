"""Static credentials (API keys, Basic logins): created verified, served only by the token
endpoint in the documented shape, replaced in place, refused when bad (nothing stored)."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from broker_app.models import AuditEvent, Connection, Provider
from broker_app.oauth import client
from broker_app.providers.spec import builtin_catalog

pytestmark = pytest.mark.django_db(transaction=True)
KEY = "sk-test-" + "A1b2C3d4" * 4


@pytest.fixture
def verify_at(monkeypatch, fake_provider):
    """Point the named templates' verify_url at the fake provider's /verify."""

    def point(*templates: str) -> None:
        for name in templates:
            monkeypatch.setitem(builtin_catalog()[name], "verify_url", f"{fake_provider.url}/verify")
            Provider.objects.get_or_create(name=name.replace("_", "-"), defaults={"template": name})

    return point


def _create(stack, key, provider, credentials, **extra):
    body = {"user_id": "user-1", "provider_name": provider, "credentials": credentials, **extra}
    return stack.call("POST", "/v1/connections", key, json=body)


def test_api_key_connection_is_verified_stored_and_served(stack, fake_provider, verify_at):
    verify_at("openai")
    fake_provider.valid_credentials = {f"Bearer {KEY}"}
    key = stack.key()
    created = _create(stack, key, "openai", {"type": "api_key", "api_key": KEY})
    assert created.status_code == 201, created.text
    assert created.headers["Cache-Control"] == "no-store"
    body = created.json()
    assert body["status"] == "active" and KEY not in created.text
    assert fake_provider.verify_requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"
    cid = body["connection_id"]
    assert KEY not in stack.call("GET", f"/v1/check-connection/{cid}", key).text
    token = stack.call("GET", f"/v1/token/{cid}", key)
    assert token.status_code == 200 and token.headers["Cache-Control"] == "no-store"
    served = token.json()
    assert served["access_token"] == KEY and served["token_type"] == "api_key" and served["expires_at"] is None
    # auto_refresh never tries to refresh a key; a forced refresh is refused, not a 500.
    assert stack.call("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=86400", key).json()["access_token"] == KEY
    assert 400 <= stack.call("POST", f"/v1/refresh/{cid}", key).status_code < 500
    row = Connection.objects.get(pk=cid)
    assert KEY not in row.access_token_enc and row.flow == "api_key"
    assert list(AuditEvent.objects.filter(connection_id=cid).values_list("action", flat=True).order_by("id"))[:2] == [
        "connection.requested",
        "connection.activated",
    ]


def test_wrong_key_is_400_invalid_credentials_and_nothing_is_stored(stack, fake_provider, verify_at):
    verify_at("openai")
    fake_provider.valid_credentials = {"Bearer the-right-one"}
    answer = _create(stack, stack.key(), "openai", {"type": "api_key", "api_key": KEY})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_credentials"
    assert KEY not in answer.text
    assert Connection.objects.count() == 0 and AuditEvent.objects.count() == 0


def test_verification_endpoint_down_refuses_and_stores_nothing(stack, fake_provider, verify_at):
    verify_at("openai")
    fake_provider.verify_status = 503
    answer = _create(stack, stack.key(), "openai", {"type": "api_key", "api_key": KEY})
    assert answer.status_code == 503 and answer.json()["error"] == "provider_unavailable"
    assert Connection.objects.count() == 0


def test_basic_login_is_served_with_username_password_and_header_value(stack, fake_provider, verify_at):
    verify_at("twilio")
    login = base64.b64encode(b"AC0123456789:auth-token-value-0123").decode()
    fake_provider.valid_credentials = {f"Basic {login}"}
    key = stack.key()
    created = _create(
        stack, key, "twilio", {"type": "basic", "username": "AC0123456789", "password": "auth-token-value-0123"}
    )
    assert created.status_code == 201, created.text
    assert "auth-token-value" not in created.text
    served = stack.call("GET", f"/v1/token/{created.json()['connection_id']}", key).json()
    assert served["token_type"] == "basic" and served["access_token"] == login
    assert (served["username"], served["password"]) == ("AC0123456789", "auth-token-value-0123")


def test_credentials_are_replaced_in_place_and_a_bad_replacement_changes_nothing(stack, fake_provider, verify_at):
    verify_at("openai")
    new_key = "sk-new-" + "Z9y8X7w6" * 4
    fake_provider.valid_credentials = {f"Bearer {KEY}", f"Bearer {new_key}"}
    key = stack.key()
    cid = _create(stack, key, "openai", {"type": "api_key", "api_key": KEY}).json()["connection_id"]
    replaced = stack.call(
        "PUT", f"/v1/connections/{cid}/credentials", key, json={"credentials": {"type": "api_key", "api_key": new_key}}
    )
    assert replaced.status_code == 200 and replaced.json()["connection_id"] == cid and new_key not in replaced.text
    assert stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"] == new_key
    wrong = stack.call(
        "PUT",
        f"/v1/connections/{cid}/credentials",
        key,
        json={"credentials": {"type": "api_key", "api_key": "sk-wrong-key-000000"}},
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_credentials"
    assert stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"] == new_key
    assert AuditEvent.objects.filter(connection_id=cid, action="credentials.replaced").count() == 1


def test_a_template_without_verification_stores_the_key_unverified(stack, fake_provider):
    Provider.objects.create(name="linear-key", template="linear_api_key")
    created = _create(stack, stack.key(), "linear-key", {"type": "api_key", "api_key": "lin_api_" + "x" * 40})
    assert created.status_code == 201, created.text


@pytest.mark.parametrize(
    "credentials, field",
    [
        ({"type": "api_key", "api_key": ""}, "api_key"),
        ({"type": "api_key"}, "api_key"),
        ({"type": "api_key", "api_key": "k" * 10240}, "api_key"),
        ({"type": "api_key", "api_key": "sk-abc\x00def"}, "api_key"),
        ({"type": "api_key", "api_key": "sk-abc\r\nX-Injected: 1"}, "api_key"),
        ({"type": "api_key", "api_key": "sk-abc def"}, "api_key"),
        ({"type": "api_key", "api_key": "sk-abcé"}, "api_key"),
        ({"type": "api_key", "api_key": KEY, "password": "x"}, "password"),
        ({"type": "basic", "username": "u", "password": ""}, "password"),
        ({"type": "basic", "username": "a:b", "password": "p"}, "username"),
        ({"type": "basic", "username": "u", "password": "line\nbreak"}, "password"),
        ({"type": "basic", "username": "u", "password": "p" * 10240}, "password"),
        ({"type": "token", "api_key": KEY}, "type"),
    ],
)
def test_bad_credentials_are_refused_and_never_echoed(stack, fake_provider, verify_at, credentials, field):
    verify_at("openai")
    answer = _create(stack, stack.key(), "openai", credentials)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request" and field in answer.text
    for value in credentials.values():
        if len(value) > 6 and value not in ("api_key", "basic"):
            assert value not in answer.text
    assert Connection.objects.count() == 0 and fake_provider.verify_requests == []


def test_the_credential_kind_must_be_the_templates(stack, fake_provider, verify_at, fake_provider_row):
    verify_at("openai")
    wrong_kind = _create(stack, stack.key(), "openai", {"type": "basic", "username": "u", "password": "p"})
    assert wrong_kind.status_code == 400 and "api_key" in wrong_kind.json()["message"]
    oauth = _create(stack, stack.key(), "fake", {"type": "api_key", "api_key": KEY})
    assert oauth.status_code == 400 and "request-connection" in oauth.json()["message"]
    assert Connection.objects.count() == 0


def test_each_kind_is_injected_as_the_template_says(fake_provider, db):
    from broker_app.providers.registry import resolve_static

    def spec(template: str):
        provider = Provider.objects.create(name=template.replace("_", "-"), template=template)
        return resolve_static(provider, {"site": "acme"} if template == "jira_api_token" else {})

    api_key = {"type": "api_key", "api_key": KEY}
    assert client.credential_headers(spec("openai"), api_key) == ({"Authorization": f"Bearer {KEY}"}, {})
    assert client.credential_headers(spec("anthropic"), api_key) == (
        {"anthropic-version": "2023-06-01", "x-api-key": KEY},
        {},
    )
    assert client.credential_headers(spec("pagerduty_api_key"), api_key)[0]["Authorization"] == f"Token token={KEY}"
    assert client.credential_headers(spec("datadog"), api_key) == ({"DD-API-KEY": KEY}, {})
    assert client.credential_headers(spec("linear_api_key"), api_key) == ({"Authorization": KEY}, {})
    as_query = replace(spec("stripe_api_key"), credential_query_param="api_key")
    assert client.credential_headers(as_query, api_key) == ({}, {"api_key": KEY})
    jira = spec("jira_api_token")
    assert jira.verify_url == "https://acme.atlassian.net/rest/api/3/myself"
    headers, _ = client.credential_headers(jira, {"type": "basic", "username": "me@acme.test", "password": "tok"})
    assert base64.b64decode(headers["Authorization"].removeprefix("Basic ")) == b"me@acme.test:tok"
