"""Two workspaces, each with its own app at a Google-like provider (issue 19), for real:
the real-process stack (gunicorn gateway and broker, Celery) and a second npm oidc-provider
with two registered clients. Side by side, each workspace names its provider `google`;
each consent screen shows its own client, each token is issued to its own client id, a
refresh goes out with its own secret, and neither workspace reaches the other's connection."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from oidc_consent import complete_consent
from oidc_server import free_port, start_oidc_provider

pytestmark = pytest.mark.e2e
RETURN_URL = "http://127.0.0.1:1/oauth/return"  # nothing listens: the browser stops there
WORKSPACES = {
    "acme": {"client_id": "acme-google-app", "logo": "https://acme.example/logo.png"},
    "globex": {"client_id": "globex-google-app", "logo": "https://globex.example/logo.png"},
}


@pytest.fixture(scope="module")
def tenant_provider(real_stack):
    """A second oidc-provider, the two workspaces' apps registered at it."""
    for app in WORKSPACES.values():
        app["secret"] = "-" + secrets.token_urlsafe(24)  # a leading "-": passed as --client-secret=…
    clients = [
        {
            "client_id": app["client_id"],
            "client_secret": app["secret"],
            "client_name": f"{workspace.title()} Assistant",
            "logo_uri": app["logo"],
            "policy_uri": f"https://{workspace}.example/privacy",
            "redirect_uris": [f"{real_stack.broker_url}/auth/callback"],
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
        }
        for workspace, app in WORKSPACES.items()
    ]
    provider = start_oidc_provider(free_port(), clients)
    try:
        yield provider
    finally:
        provider.stop()


def _gw(stack, key: str, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(
        method, stack.gateway_url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30, **kwargs
    )


def test_two_workspaces_run_the_flow_side_by_side_with_their_own_apps(real_stack, tenant_provider):
    keys = {}
    for workspace, app in WORKSPACES.items():
        real_stack.manage(
            "broker",
            "provider",
            "upsert",
            "--name",
            "google",
            "--workspace",
            workspace,
            "--template",
            "oidc",
            "--display-name",
            f"Google ({workspace})",
            "--discovery-url",
            tenant_provider.discovery_url,
            "--client-id",
            app["client_id"],
            f"--client-secret={app['secret']}",
            "--default-scopes",
            "openid email profile offline_access",
            "--authorize-param",
            "prompt=consent",
        )
        created = real_stack.manage("gateway", "apikey", "create", "--workspace", workspace, "--name", "e2e")
        keys[workspace] = created.stdout.strip().splitlines()[-1]
    listing = real_stack.manage("broker", "provider", "list").stdout
    assert all(app["secret"] not in listing for app in WORKSPACES.values())

    # 1. Both start a connection to "google": each authorization URL names its own client.
    started = {}
    for workspace, key in keys.items():
        providers = {p["name"]: p for p in _gw(real_stack, key, "GET", "/v1/providers").json()["providers"]}
        assert providers["google"]["display_name"] == f"Google ({workspace})"
        answer = _gw(
            real_stack,
            key,
            "POST",
            "/v1/request-connection",
            json={"user_id": f"{workspace}-user", "provider_name": "google", "return_url": RETURN_URL},
        )
        assert answer.status_code == 201, answer.text
        started[workspace] = answer.json()
        query = parse_qs(urlsplit(started[workspace]["authUrl"]).query)
        assert query["client_id"] == [WORKSPACES[workspace]["client_id"]]

    # 2. Each consent screen shows its own client (its id and its logo), never the other's.
    for workspace, body in started.items():
        pages: list[requests.Response] = []
        browser = requests.Session()
        browser.trust_env = False
        browser.hooks["response"].append(lambda response, *args, seen=pages, **kwargs: seen.append(response))
        final = complete_consent(body["authUrl"], login=f"{workspace}-user", stop_at_prefix=RETURN_URL, session=browser)
        assert parse_qs(urlsplit(final).query) == {"status": ["success"], "connection_id": [body["connection_id"]]}
        consent = [r.text for r in pages if 'name="prompt" value="consent"' in r.text]
        assert len(consent) == 1, [r.url for r in pages]
        other = next(w for w in WORKSPACES if w != workspace)
        assert WORKSPACES[workspace]["client_id"] in consent[0] and WORKSPACES[workspace]["logo"] in consent[0]
        assert WORKSPACES[other]["client_id"] not in consent[0] and WORKSPACES[other]["logo"] not in consent[0]

    # 3. Each token was issued to its own client: the id_token's audience, verified with the
    # provider's keys; the access token works at the provider.
    jwks = jwt.PyJWKClient(tenant_provider.metadata["jwks_uri"])
    for workspace, body in started.items():
        cid, key, client_id = body["connection_id"], keys[workspace], WORKSPACES[workspace]["client_id"]
        status = _gw(real_stack, key, "GET", f"/v1/check-connection/{cid}").json()
        assert status["status"] == "active" and status["account"]["sub"] == f"{workspace}-user"
        token = _gw(real_stack, key, "GET", f"/v1/token/{cid}").json()
        claims = jwt.decode(
            token["id_token"],
            jwks.get_signing_key_from_jwt(token["id_token"]).key,
            algorithms=["RS256"],
            audience=client_id,
            issuer=tenant_provider.issuer,
        )
        assert claims["aud"] == client_id and claims["sub"] == f"{workspace}-user"
        info = requests.get(
            f"{tenant_provider.issuer}/me", headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=10
        )
        assert info.status_code == 200 and info.json()["sub"] == f"{workspace}-user"
        # A refresh authenticates with the workspace's own secret (the provider checks it):
        refreshed = _gw(real_stack, key, "POST", f"/v1/refresh/{cid}")
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["access_token"] != token["access_token"]

    # 4. Neither workspace reaches the other's connection.
    for workspace, key in keys.items():
        other = next(w for w in WORKSPACES if w != workspace)
        cid = started[other]["connection_id"]
        assert _gw(real_stack, key, "GET", f"/v1/token/{cid}").status_code == 404
        assert _gw(real_stack, key, "GET", f"/v1/check-connection/{cid}").status_code == 404
