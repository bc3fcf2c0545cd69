"""Environments (issue 19): a workspace's `development` key never sees its `production`
objects (404), exactly like another workspace's; environment names are validated."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from broker_app.models import AuditEvent, Connection, ConnectSession, WebhookDelivery, WebhookEndpoint
from broker_app.webhooks import WebhookError, webhook_endpoint_create
from dromos import wire
from gateway_app.keys import Principal, apikey_create
from gateway_app.models import ApiKey
from tests.conftest import auth_params, connect, make_provider, start_connection

pytestmark = pytest.mark.django_db(transaction=True)

BAD_ENVIRONMENTS = (
    "",
    "../production",
    "prod/x",
    "prod%2Fx",
    "prod'; DROP TABLE broker_app_connection;--",
    'prod" OR 1=1',
    "Production",
    "prod env",
    "-prod",
    "_prod",
    "prod\n",
    "prod\x00",
    "x" * 33,
    "é",
)


def test_another_environments_connection_is_404_everywhere(stack, fake_provider, fake_provider_row):
    prod, dev = stack.key("ws-a"), stack.key("ws-a", environment="development")
    active = connect(stack, fake_provider, prod)
    pending = start_connection(stack, prod)["connection_id"]
    assert Connection.objects.get(pk=active).environment == "production"
    audit_before = AuditEvent.objects.count()
    for cid in (active, pending):
        for method, path in (
            ("GET", f"/v1/check-connection/{cid}"),
            ("GET", f"/v1/token/{cid}"),
            ("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=86400"),
            ("POST", f"/v1/refresh/{cid}"),
            ("DELETE", f"/v1/connections/{cid}"),
            ("GET", f"/v1/proxy/{cid}/users/me"),
        ):
            response = stack.call(method, path, dev)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"] == "not_found"
    for query in ("", "?user_id=user-1", "?provider_name=fake", "?status=active", "?status=pending"):
        listing = stack.call("GET", f"/v1/connections{query}", dev).json()
        assert listing["count"] == 0 and listing["results"] == [], query
    assert stack.call("GET", "/v1/connections?user_id=user-1", prod).json()["count"] == 2
    assert Connection.objects.get(pk=active).status == "active"
    assert fake_provider.refresh_calls == 0 and fake_provider.revocations == []
    assert AuditEvent.objects.count() == audit_before
    # And the other way round: the development key's own connection is its own.
    own = connect(stack, fake_provider, dev)
    assert Connection.objects.get(pk=own).environment == "development"
    assert stack.call("GET", f"/v1/token/{own}", dev).status_code == 200
    assert stack.call("GET", f"/v1/token/{own}", prod).status_code == 404
    # Its audit rows (the token read's too) name its environment, so an audit reader can be
    # held to one environment; the production connection's name production.
    assert set(AuditEvent.objects.filter(connection_id=own).values_list("environment", flat=True)) == {"development"}
    assert AuditEvent.objects.filter(connection_id=own, action="token.read").exists()
    assert set(AuditEvent.objects.filter(connection_id=active).values_list("environment", flat=True)) == {"production"}


def test_broker_scopes_every_internal_lookup_to_the_named_environment(stack, fake_provider, fake_provider_row):
    cid = connect(stack, fake_provider, stack.key("ws-a"))
    for method, path in (
        ("GET", f"/internal/v1/connections/{cid}"),
        ("GET", f"/internal/v1/connections/{cid}/token"),
        ("GET", f"/internal/v1/connections/{cid}/proxy-credential"),
        ("POST", f"/internal/v1/connections/{cid}/refresh"),
        ("POST", f"/internal/v1/connections/{cid}/reconnect"),
        ("DELETE", f"/internal/v1/connections/{cid}"),
    ):
        other = stack.broker(method, path, headers={"X-Dromos-Workspace": "ws-a", wire.ENVIRONMENT_HEADER: "staging"})
        assert other.status_code == 404, (method, path, other.text)
    attention = stack.broker(
        "POST",
        f"/internal/v1/connections/{cid}/proxy-attention",
        headers={"X-Dromos-Workspace": "ws-a", wire.ENVIRONMENT_HEADER: "staging"},
        json={"token_version": 0},
    )
    assert attention.status_code == 404
    # No header: the default environment (where rows made before environments live).
    assert stack.broker("GET", f"/internal/v1/connections/{cid}", headers={"X-Dromos-Workspace": "ws-a"}).ok
    assert Connection.objects.get(pk=cid).status == "active" and not Connection.objects.get(pk=cid).attention


@pytest.mark.parametrize("bad", [b for b in BAD_ENVIRONMENTS if b and "\n" not in b and "\x00" not in b])
def test_a_malformed_environment_header_is_a_400_before_any_lookup(stack, fake_provider_row, bad):
    headers = {"X-Dromos-Workspace": "ws-a", wire.ENVIRONMENT_HEADER: bad.encode("utf-8").decode("latin-1")}
    for method, path in (
        ("GET", "/internal/v1/connections"),
        ("GET", "/internal/v1/connections/c_abc/token"),
        ("GET", "/internal/v1/providers"),
        ("GET", "/internal/v1/workspace-providers"),
    ):
        answer = stack.broker(method, path, headers=headers)
        assert answer.status_code == 400, (bad, path, answer.text)
        assert answer.json()["error"] == "invalid_request" and "environment must be" in answer.json()["message"]


def test_apikey_create_environment_is_validated(stack, fake_provider_row):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "apikey",
        "create",
        "--workspace",
        "ws-a",
        "--name",
        "dev",
        "--environment",
        "development",
        stdout=out,
        stderr=err,
    )
    key = ApiKey.objects.get(name="dev")
    assert key.environment == "development" and "environment development" in err.getvalue()
    listing = io.StringIO()
    call_command("apikey", "list", stdout=listing)
    assert "environment=development" in listing.getvalue()
    for bad in BAD_ENVIRONMENTS:
        with pytest.raises(CommandError, match="environment must be"):
            call_command(
                "apikey", "create", "--workspace", "ws-a", "--name", "bad", f"--environment={bad}", stdout=io.StringIO()
            )
        with pytest.raises(ValueError, match="environment must be"):
            apikey_create(workspace="ws-a", name="bad", environment=bad)
    assert not ApiKey.objects.filter(name="bad").exists()
    # Keys made before environments (no environment named) are production keys.
    assert ApiKey._meta.get_field("environment").default == wire.DEFAULT_ENVIRONMENT == "production"
    assert stack.call("GET", "/v1/connections", stack.key("ws-a")).status_code == 200


def test_providers_belong_to_one_environment(stack, fake_provider, fake_provider_row):
    """A workspace's development app is used by its development keys only; production keys
    keep the shared one."""
    make_provider(
        name="fake",
        discovery_url=fake_provider.discovery_url,
        client_id="dev-client",
        client_secret="dev-secret",
        workspace="ws-a",
        environment="development",
    )
    dev, prod = stack.key("ws-a", environment="development"), stack.key("ws-a")
    assert auth_params(start_connection(stack, dev)["authUrl"])["client_id"] == "dev-client"
    assert auth_params(start_connection(stack, prod)["authUrl"])["client_id"] == "fake-client"
    assert auth_params(start_connection(stack, stack.key("ws-b", environment="development"))["authUrl"])[
        "client_id"
    ] == ("fake-client")


def test_connect_sessions_and_webhooks_stay_in_their_environment(stack, fake_provider, fake_provider_row, settings):
    settings.WEBHOOK_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    prod, dev = stack.key("ws-a"), stack.key("ws-a", environment="development")
    body = {"user_id": "u1", "return_url": "https://app.example.com/done"}
    created = stack.call("POST", "/v1/connect-sessions", prod, json=body)
    assert created.status_code == 201, created.text
    session_id = created.json()["session_id"]
    assert ConnectSession.objects.get(pk=session_id).environment == "production"
    assert stack.call("GET", f"/v1/connect-sessions/{session_id}", dev).status_code == 404
    assert stack.call("GET", f"/v1/connect-sessions/{session_id}", prod).status_code == 200
    # Webhooks: an endpoint of the development environment hears only its connections.
    dev_hook, _ = webhook_endpoint_create(workspace="ws-a", url="http://127.0.0.1:9/dev", environment="development")
    prod_hook, _ = webhook_endpoint_create(workspace="ws-a", url="http://127.0.0.1:9/prod")
    assert (dev_hook.environment, prod_hook.environment) == ("development", "production")
    # The same URL may serve both environments (one endpoint each); twice in one is refused.
    webhook_endpoint_create(workspace="ws-a", url="http://127.0.0.1:9/dev")
    with pytest.raises(WebhookError, match="already has a webhook"):
        webhook_endpoint_create(workspace="ws-a", url="http://127.0.0.1:9/dev", environment="development")
    for bad in BAD_ENVIRONMENTS:
        with pytest.raises(WebhookError, match="environment must be"):
            webhook_endpoint_create(workspace="ws-a", url="http://127.0.0.1:9/x", environment=bad)
    connect(stack, fake_provider, prod)
    connect(stack, fake_provider, dev)
    per_endpoint = {
        endpoint.url: sorted(
            Connection.objects.get(pk=d.connection_id).environment
            for d in WebhookDelivery.objects.filter(endpoint=endpoint)
        )
        for endpoint in WebhookEndpoint.objects.filter(workspace="ws-a")
    }
    assert per_endpoint["http://127.0.0.1:9/prod"] == ["production"]
    assert set(WebhookDelivery.objects.filter(endpoint=dev_hook).values_list("event", flat=True)) == {
        "connection.activated"
    }
    assert [
        Connection.objects.get(pk=d.connection_id).environment
        for d in WebhookDelivery.objects.filter(endpoint=dev_hook)
    ] == ["development"]


def test_the_proxy_credential_cache_is_keyed_by_environment_too():
    prod = Principal(key_id=1, workspace="ws-a", prefix="p", scopes=frozenset())
    dev = Principal(key_id=2, workspace="ws-a", prefix="d", scopes=frozenset(), environment="development")
    # A workspace name may hold a colon; an environment name never does: no two tenants collide.
    tricky = Principal(key_id=3, workspace="development:ws-a", prefix="t", scopes=frozenset())
    assert len({prod.tenant, dev.tenant, tricky.tenant}) == 3
