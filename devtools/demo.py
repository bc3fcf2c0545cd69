"""A guided walk through the integration guide's Typical Flow against a running stack."""

from __future__ import annotations

import json

import requests
from oidc_consent import complete_consent  # devtools/, next to this file


def _show(title: str, response: requests.Response, hide: tuple[str, ...] = ()) -> dict:
    body = response.json()
    shown = {k: (v[:12] + "…" if k in hide and isinstance(v, str) else v) for k, v in body.items()}
    print(f"\n== {title}: HTTP {response.status_code}\n{json.dumps(shown, indent=2, default=str)}")
    return body


def walkthrough(stack) -> None:
    gw = stack.gateway_url
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    return_url = "http://127.0.0.1:8000/demo/return"
    print("\nStep 1 — the agent asks the gateway for a connection (POST /v1/request-connection)")
    rc = _show(
        "request-connection",
        requests.post(
            f"{gw}/v1/request-connection",
            headers=headers,
            json={
                "user_id": "demo-user",
                "provider_name": "local",
                "scopes": ["openid", "email", "profile", "offline_access"],
                "return_url": return_url,
            },
        ),
        hide=("state",),
    )
    print(
        f"\nStep 2 — the user opens authUrl and consents. Open it in a browser yourself:\n  {rc['authUrl']}\n"
        "(any login name and password work). This demo consents on the user's behalf:"
    )
    final = complete_consent(rc["authUrl"], login="demo-user", stop_at_prefix=return_url)
    print(f"  the broker redirected the browser to: {final}")
    cid = rc["connection_id"]
    _show("Step 3 — check-connection", requests.get(f"{gw}/v1/check-connection/{cid}", headers=headers))
    token = _show(
        "Step 4 — token", requests.get(f"{gw}/v1/token/{cid}", headers=headers), hide=("access_token", "id_token")
    )
    userinfo = requests.get(f"{stack.oidc.issuer}/me", headers={"Authorization": f"Bearer {token['access_token']}"})
    print(f"\n   the provider's userinfo endpoint accepts the token: HTTP {userinfo.status_code} {userinfo.text}")
    _show(
        "Step 5 — refresh through the gateway (POST /v1/refresh)",
        requests.post(f"{gw}/v1/refresh/{cid}", headers=headers),
        hide=("access_token", "id_token"),
    )
    proxied = requests.get(f"{gw}/v1/proxy/{cid}/me", headers=headers)
    print(
        "\nStep 6 — the agent calls the provider's API through the gateway, never holding the token\n"
        f"  GET {gw}/v1/proxy/{cid}/me  (the local provider's userinfo endpoint)\n"
        f"  HTTP {proxied.status_code} {proxied.text}"
    )
    print(
        f"\nYour API key (workspace 'demo'): {stack.api_key}\nTry: curl -H 'Authorization: Bearer "
        f"{stack.api_key}' {gw}/v1/connections\nGateway API docs: {gw}/docs   Ctrl-C stops everything."
    )
