"""Per-key egress policy (issue 15): a call outside the key's rules is 403 `proxy_forbidden`,
naming the missing rule, before any provider call."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command

from broker_app.models import AuditEvent
from gateway_app.egress import PolicyError, apikey_set_policy, policy_parse, rule_parse
from gateway_app.keys import apikey_create
from gateway_app.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)


def _key_with(stack, *rules: str, workspace: str = "ws-a") -> str:
    key, plaintext = apikey_create(workspace=workspace, name="scoped")
    apikey_set_policy(key=key, rules=[rule_parse(r) for r in rules])
    return plaintext


def test_rules_allow_exactly_what_they_name(proxied, fake_provider):
    stack, _, cid = proxied
    key = _key_with(stack, "fake GET /users/me/messages*", "fake PUT,DELETE /things/*")
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me/messages", key).status_code == 200
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me/messages/17?format=raw", key).status_code == 200
    assert stack.call("DELETE", f"/v1/proxy/{cid}/things/a/b", key).status_code == 200
    calls = len(fake_provider.api_calls)
    reads = AuditEvent.objects.filter(connection_id=cid, action="token.read").count()
    for method, path in (
        ("POST", "/users/me/messages"),
        ("GET", "/users/me/drafts"),
        ("GET", "/users/me/messagesX/../x"),
        ("GET", "/Users/me/messages"),
        ("PATCH", "/things/1"),
    ):
        response = stack.call(method, f"/v1/proxy/{cid}{path}", key)
        assert response.status_code in (400, 403), (method, path)
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me/drafts", key)
    body = response.json()
    assert body["error"] == "proxy_forbidden" and "GET /users/me/drafts" in body["message"]
    assert body["missing_rule"] == "<provider> GET /users/me/drafts"
    # Refused before the broker was even asked for the credential, and before any provider call.
    assert AuditEvent.objects.filter(connection_id=cid, action="token.read").count() == reads
    assert len(fake_provider.api_calls) == calls


def test_a_rule_for_another_provider_is_refused_naming_the_missing_rule(proxied, fake_provider):
    stack, _, cid = proxied
    key = _key_with(stack, "github * /repos/acme/*")
    response = stack.call("GET", f"/v1/proxy/{cid}/repos/acme/widgets", key)
    assert response.status_code == 403
    assert response.json()["missing_rule"] == "fake GET /repos/acme/widgets"
    assert fake_provider.api_calls == []


def test_an_empty_policy_allows_nothing_and_the_default_comes_from_settings(proxied, fake_provider, settings):
    stack, open_key, cid = proxied
    key = _key_with(stack)
    assert stack.call("GET", f"/v1/proxy/{cid}/x", key).status_code == 403
    assert stack.call("GET", f"/v1/proxy/{cid}/x", open_key).status_code == 200  # default: open
    from gateway_app import egress

    settings.PROXY_DEFAULT_POLICY = "closed"
    egress.cache_clear()
    response = stack.call("GET", f"/v1/proxy/{cid}/x", open_key)
    assert response.status_code == 403 and response.json()["error"] == "proxy_forbidden"
    assert len(fake_provider.api_calls) == 1


@pytest.mark.parametrize(
    "text",
    [
        "google GET",
        "google FETCH /x",
        "google GET x",
        "Goo gle GET /x",
        "google GET /a?b",
        "bad/name GET /x",
    ],
)
def test_bad_rules_are_refused(text):
    with pytest.raises(PolicyError):
        rule_parse(text)


def test_policy_documents():
    rules = policy_parse(
        {"allow": ["google GET /gmail/v1/*", {"provider": "github", "methods": ["*"], "path": "/repos/acme/*"}]}
    )
    assert [str(r) for r in rules] == ["google GET /gmail/v1/*", "github * /repos/acme/*"]
    with pytest.raises(PolicyError):
        policy_parse({"allow": [{"provider": "github", "path": "/x", "extra": 1}]})
    with pytest.raises(PolicyError):
        policy_parse({"deny": []})


def test_apikey_create_with_allow_and_policy_file(db, tmp_path, capsys):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"allow": [{"provider": "slack", "methods": ["POST"], "path": "/api/chat.*"}]}))
    call_command(
        "apikey",
        "create",
        "--workspace",
        "ws-p",
        "--name",
        "mail-agent",
        "--allow",
        "google GET /gmail/v1/users/me/messages*",
        "--allow",
        "github * /repos/acme/*",
        "--policy",
        str(policy),
    )
    plaintext = capsys.readouterr().out.strip().splitlines()[-1]
    key = ApiKey.objects.get(prefix=plaintext.split("_")[1])
    assert key.egress_policy == [
        {"provider": "google", "methods": ["GET"], "path": "/gmail/v1/users/me/messages*"},
        {"provider": "github", "methods": ["*"], "path": "/repos/acme/*"},
        {"provider": "slack", "methods": ["POST"], "path": "/api/chat.*"},
    ]
    with pytest.raises(CommandError, match="policy not saved"):
        call_command("apikey", "create", "--workspace", "ws-p", "--name", "x", "--allow", "google GET")
    assert not ApiKey.objects.filter(name="x").exists()
    call_command("apikey", "policy", "--prefix", key.prefix, "--default")
    key.refresh_from_db()
    assert key.egress_policy is None


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_provider_upsert_api_base_url(db):
    result = subprocess.run(
        [sys.executable, "manage.py", "provider", "upsert", "--help"], capture_output=True, text=True, check=True
    )
    assert "--api-base-url" in result.stdout


def test_the_catalog_accepts_the_proxy_keys_and_checks_the_base_url():
    from broker_app.providers.spec import entry_problems

    entry = {
        "display_name": "Shop",
        "authorize_url": "https://{shop}.shop.example/oauth/authorize",
        "token_url": "https://{shop}.shop.example/oauth/token",
        "api_base_url": "https://{shop}.shop.example/admin/api",
        "api_hosts": ["*.files.shop.example"],
        "api_auth": {"header": "X-Shop-Token", "format": "{token}"},
        "params": {"shop": {"pattern": "^[a-z0-9-]{1,60}$", "example": "acme"}},
        "account_id_field": "",
        "offline_access": "always",
    }
    assert entry_problems("shop", entry) == []
    assert entry_problems("shop", {**entry, "api_base_url": "http://{shop}.shop.example"}) == [
        "shop: api_base_url must be an https URL without a trailing slash"
    ]
    assert entry_problems("shop", {**entry, "api_base_url": "https://{region}.x.example"}) == [
        "shop: api_base_url uses {region} but no params.region is declared"
    ]
    assert entry_problems("shop", {**entry, "api_auth": {"header": "X-Shop-Token", "format": "Token"}}) == [
        'shop: api_auth must be {header = "NAME", format = "... {token} ..."}'
    ]
