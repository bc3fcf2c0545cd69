"""What a connection keeps beyond its tokens, and what an agent learns about providers,
through the gateway (two HTTP hops): providers configured with `manage.py provider upsert`
(only the token and revocation endpoints moved to the replay server), consent completed
through the broker's callback, the provider's answers as its documentation records them."""

from __future__ import annotations

import copy
import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from broker_app import crypto
from broker_app.models import Connection, Provider
from broker_app.providers.spec import catalog
from tests.conftest import auth_params
from tests.providers.contract import load

pytestmark = pytest.mark.django_db(transaction=True)
RETURN_URL = "https://app.example.com/oauth/return"


def upsert(*args: str) -> str:
    out = io.StringIO()
    call_command(
        "provider",
        "upsert",
        "--client-id",
        "dromos-client-id",
        "--client-secret",
        "dromos-client-secret",
        *args,
        stdout=out,
        stderr=io.StringIO(),
    )
    return out.getvalue()


def consent(stack, key: str, provider: str, *, scopes=None, params=None, **callback) -> tuple[str, dict]:
    body = {"user_id": "user-1", "provider_name": provider, "return_url": RETURN_URL}
    if scopes is not None:
        body["scopes"] = scopes
    if params is not None:
        body["params"] = params
    started = stack.call("POST", "/v1/request-connection", key, json=body)
    assert started.status_code == 201, started.text
    query = auth_params(started.json()["authUrl"])
    response = stack.callback(code="code-from-provider", state=query["state"], **callback)
    assert response.status_code == 302 and "status=success" in response.headers["Location"], response.headers
    return started.json()["connection_id"], {**query, "authUrl": started.json()["authUrl"]}


def check(stack, key: str, cid: str) -> dict:
    response = stack.call("GET", f"/v1/check-connection/{cid}", key)
    assert response.status_code == 200, response.text
    return response.json()


def stored_refresh_token(cid: str) -> str | None:
    row = Connection.objects.get(pk=cid)
    return crypto.decrypt(row.refresh_token_enc, aad=row.aad("refresh_token"))


def test_salesforce_keeps_instance_url_and_identity_and_refreshes_without_expiry(stack, replay):
    recorded = load("salesforce")
    upsert(
        "--name",
        "salesforce",
        "--token-url",
        replay.url("/services/oauth2/token"),
        "--revocation-url",
        replay.url("/services/oauth2/revoke"),
    )
    key = stack.key()
    replay.answer("POST", "/services/oauth2/token", 200, recorded["exchange"]["body"])
    cid, query = consent(stack, key, "salesforce", params={"login_host": "acme.my.salesforce.com"})
    assert query["authUrl"].startswith("https://acme.my.salesforce.com/services/oauth2/authorize?")
    assert query["scope"] == "api refresh_token" and query["code_challenge_method"] == "S256"
    exchange = replay.only("POST").form
    assert exchange["code"] == "code-from-provider" and exchange["code_verifier"]

    status = check(stack, key, cid)
    assert status["status"] == "active"
    assert status["metadata"] == {
        "instance_url": "https://yourInstance.my.salesforce.com",
        "id": "https://login.salesforce.com/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS",
        "issued_at": "1278448101416",
    }
    assert status["account"] == {"sub": "https://login.salesforce.com/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS"}
    assert status["scopes"] == ["api", "refresh_token"] and status["granted_scopes"] == ["refresh_token", "api"]
    assert status["scopes_narrowed"] is False and status["missing_scopes"] == []
    assert status["expires_at"] is None and status["refresh_token_expires_at"] is None
    assert status["warnings"] == []  # no expiry, a refresh token: nothing to act on
    token = stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key).json()
    assert token["access_token"] == recorded["exchange"]["body"]["access_token"] and token["expires_at"] is None

    # No expires_in: the agent refreshes when Salesforce answers 401. The answer carries no
    # refresh token, so the stored one stays; a moved instance_url replaces the old one.
    replay.reset()
    refreshed_body = copy.deepcopy(recorded["refresh"]["body"])
    refreshed_body["instance_url"] = "https://acme.my.salesforce.com"
    replay.answer("POST", "/services/oauth2/token", 200, refreshed_body)
    refreshed = stack.call("POST", f"/v1/refresh/{cid}", key)
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["access_token"] == refreshed_body["access_token"]
    assert replay.only("POST").form["refresh_token"] == recorded["exchange"]["body"]["refresh_token"]
    assert stored_refresh_token(cid) == recorded["exchange"]["body"]["refresh_token"]
    assert check(stack, key, cid)["metadata"]["instance_url"] == "https://acme.my.salesforce.com"

    replay.reset()
    replay.answer("POST", "/services/oauth2/revoke", 200, "")
    assert stack.call("DELETE", f"/v1/connections/{cid}", key).json()["status"] == "revoked"
    assert replay.only("POST").form == {"token": recorded["exchange"]["body"]["refresh_token"]}


def test_slack_user_token_and_narrower_granted_scopes(stack, replay):
    body = copy.deepcopy(load("slack")["exchange"]["body"])
    upsert("--name", "slack", "--token-url", replay.url("/api/oauth.v2.access"))
    key = stack.key()
    replay.answer("POST", "/api/oauth.v2.access", 200, body)
    cid, query = consent(stack, key, "slack", scopes=["users:read", "chat:write", "users:read.email"])
    assert query["user_scope"] == "users:read,chat:write,users:read.email" and "scope" not in query
    assert "code_challenge" not in query  # Slack does not document PKCE

    status = check(stack, key, cid)
    assert status["granted_scopes"] == ["users:read", "users:read.email"]
    assert status["scopes_narrowed"] is True and status["missing_scopes"] == ["chat:write"]
    assert status["warnings"] == ["scopes_narrowed"]
    assert status["account"] == {"sub": "U1234", "team_id": "T9TK3CUKW"}
    assert status["metadata"] == {
        "team_id": "T9TK3CUKW",
        "team_name": "Slack Softball Team",
        "enterprise_id": "E12345678",
        "app_id": "A0KRD7HC3",
    }
    token = stack.call("GET", f"/v1/token/{cid}", key).json()
    assert token["access_token"] == body["authed_user"]["access_token"] and token["token_type"] == "Bearer"
    assert stored_refresh_token(cid) == body["authed_user"]["refresh_token"]


def test_quickbooks_realm_and_refresh_token_expiry_warnings(stack, replay):
    recorded = load("quickbooks")
    upsert("--name", "quickbooks", "--token-url", replay.url("/oauth2/v1/tokens/bearer"))
    key = stack.key()
    replay.answer("POST", "/oauth2/v1/tokens/bearer", 200, recorded["exchange"]["body"])
    cid, _query = consent(stack, key, "quickbooks", realmId="1182151270")

    status = check(stack, key, cid)
    assert status["metadata"] == {"realmId": "1182151270"}
    lifetime = timezone.datetime.fromisoformat(status["refresh_token_expires_at"]) - timezone.now()
    assert timedelta(days=100) < lifetime <= timedelta(seconds=8726400)
    assert status["warnings"] == []

    # Intuit's refresh-token lifetime is absolute: each answer states what is left.
    replay.reset()
    soon = {**recorded["refresh"]["body"], "x_refresh_token_expires_in": 5 * 86400}
    replay.answer("POST", "/oauth2/v1/tokens/bearer", 200, soon)
    assert stack.call("POST", f"/v1/refresh/{cid}", key).status_code == 200
    assert stored_refresh_token(cid) == soon["refresh_token"]
    status = check(stack, key, cid)
    lifetime = timezone.datetime.fromisoformat(status["refresh_token_expires_at"]) - timezone.now()
    assert timedelta(days=4, hours=23) < lifetime <= timedelta(days=5)
    assert status["warnings"] == ["refresh_token_expires_soon"]
    listed = stack.call("GET", "/v1/connections?provider_name=quickbooks", key).json()["results"]
    assert listed[0]["warnings"] == ["refresh_token_expires_soon"]

    Connection.objects.filter(pk=cid).update(refresh_expires_at=timezone.now() - timedelta(minutes=1))
    assert check(stack, key, cid)["warnings"] == ["refresh_token_expired"]


def test_entra_scopes_are_compared_like_for_like(stack, replay):
    body = copy.deepcopy(load("microsoft")["exchange"]["body"])
    del body["id_token"]
    upsert(
        "--name",
        "microsoft",
        "--setting",
        "tenant=organizations",
        "--token-url",
        replay.url("/organizations/oauth2/v2.0/token"),
    )
    key = stack.key()
    scopes = ["offline_access", "User.Read", "Mail.Read"]
    body["scope"] = "https://graph.microsoft.com/User.Read https://graph.microsoft.com/mail.read"
    replay.answer("POST", "/organizations/oauth2/v2.0/token", 200, body)
    cid, query = consent(stack, key, "microsoft", scopes=scopes)
    assert query["authUrl"].startswith("https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize?")
    status = check(stack, key, cid)
    # Entra drops its resource prefix and may change case; offline_access is never echoed.
    assert status["granted_scopes"] == ["User.Read", "mail.read"] and status["scopes_narrowed"] is False

    body["scope"] = "https://graph.microsoft.com/User.Read"
    replay.answer("POST", "/organizations/oauth2/v2.0/token", 200, body)
    cid, _query = consent(stack, key, "microsoft", scopes=scopes)
    status = check(stack, key, cid)
    assert status["missing_scopes"] == ["Mail.Read"] and "scopes_narrowed" in status["warnings"]


def test_notion_keeps_the_owner_and_has_nothing_to_refresh(stack, replay):
    body = load("notion")["exchange"]["body"]
    upsert("--name", "notion", "--token-url", replay.url("/v1/oauth/token"))
    key = stack.key()
    replay.answer("POST", "/v1/oauth/token", 200, body)
    cid, query = consent(stack, key, "notion")
    assert query["owner"] == "user" and "scope" not in query
    status = check(stack, key, cid)
    assert status["account"] == {
        "sub": "4d4d3f6e-9a1b-4c2d-8e3f-5a6b7c8d9e0f",
        "email": "ada@example.com",
        "name": "Ada Lovelace",
    }
    assert status["metadata"]["workspace_name"] == "Ada's Notion Workspace"
    assert status["expires_at"] is None and status["warnings"] == []
    refresh = stack.call("POST", f"/v1/refresh/{cid}", key)
    assert refresh.status_code == 409 and refresh.json()["error"] == "refresh_not_supported"
    assert stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key).json()["access_token"] == body["access_token"]


def test_providers_list_what_an_agent_needs(stack):
    upsert("--name", "google")
    upsert("--name", "github")
    upsert("--name", "github-app", "--template", "github_app")
    upsert("--name", "zendesk")
    upsert("--name", "keycloak", "--setting", "host=sso.example.com")
    upsert("--name", "okta")
    upsert("--name", "notion")
    upsert("--name", "spotify", "--default-scopes", "user-read-email playlist-read-private")
    upsert("--name", "box", "--disable")
    response = stack.call("GET", "/v1/providers", stack.key())
    assert response.status_code == 200
    providers = {p["name"]: p for p in response.json()["providers"]}
    assert list(providers) == sorted(providers) and "box" not in providers
    for name, listed in providers.items():
        entry = catalog()[listed["template"]]
        assert listed["docs_url"] == entry["docs_url"] and listed["docs_url"].startswith("https://")
        assert listed["display_name"] == entry["display_name"]
        assert listed["provider_id"] == str(Provider.objects.get(name=name).pk)
        assert "client_secret" not in response.text and "dromos-client-secret" not in response.text

    google = providers["google"]
    assert google["default_scopes"] == ["openid", "email", "profile"]
    assert (google["supports_refresh"], google["supports_pkce"], google["oidc"]) == (True, True, True)
    assert google["supports_revocation"] is True and google["params"] == []
    assert google["scopes_url"] == "https://developers.google.com/identity/protocols/oauth2/scopes"
    assert providers["github"]["supports_refresh"] is False and providers["github"]["supports_revocation"] is True
    assert providers["github-app"]["supports_refresh"] is True
    assert providers["github-app"]["refresh_token_rotation"] is True
    assert providers["github-app"]["refresh_token_lifetime_days"] == 184
    assert providers["spotify"]["default_scopes"] == ["user-read-email", "playlist-read-private"]
    assert providers["spotify"]["supports_revocation"] is False
    assert providers["notion"]["default_scopes"] == [] and providers["notion"]["supports_pkce"] is False

    assert providers["zendesk"]["params"] == ["subdomain"]
    assert providers["zendesk"]["param_formats"]["subdomain"]["example"] == "acme"
    assert providers["zendesk"]["param_formats"]["subdomain"]["required"] is True
    assert providers["keycloak"]["params"] == ["realm"]  # the host is the operator's
    assert providers["okta"]["params"] == ["authorization_server", "domain"]
    assert providers["okta"]["param_formats"]["authorization_server"]["required"] is False
    assert providers["okta"]["param_formats"]["domain"]["required"] is True
