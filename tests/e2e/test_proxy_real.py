"""The API proxy (issue 15) for real: gunicorn gateway and broker processes, the npm
oidc-provider as the provider, its userinfo endpoint (/me) as the API."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import requests
from fake_provider import CLIENT_ID as FAKE_CLIENT_ID
from fake_provider import CLIENT_SECRET as FAKE_CLIENT_SECRET
from fake_provider import FakeProvider, api_chunked_cut
from oidc_consent import complete_consent

pytestmark = pytest.mark.e2e
RETURN_URL = "http://127.0.0.1:1/oauth/return"


def _gw(stack, method, path, **kwargs):
    headers = {"Authorization": f"Bearer {stack.api_key}", **kwargs.pop("headers", {})}
    return requests.request(method, stack.gateway_url + path, headers=headers, timeout=30, **kwargs)


def _connect(stack, login: str) -> str:
    started = _gw(
        stack,
        "POST",
        "/v1/request-connection",
        json={
            "user_id": login,
            "provider_name": "local",
            "scopes": ["openid", "email", "profile", "offline_access"],
            "return_url": RETURN_URL,
        },
    ).json()
    final = complete_consent(started["authUrl"], login=login, stop_at_prefix=RETURN_URL)
    assert "status=success" in final
    return started["connection_id"]


def _audit(stack, cid: str, action: str) -> list[tuple]:
    with psycopg.connect(stack.database_url) as conn:
        return conn.execute(
            "SELECT actor, detail FROM broker_app_auditevent WHERE connection_id = %s AND action = %s",
            [cid, action],
        ).fetchall()


def test_a_proxied_call_reaches_the_real_userinfo_endpoint_with_a_token_the_agent_never_saw(real_stack):
    cid = _connect(real_stack, "dora")
    providers = {p["name"]: p for p in _gw(real_stack, "GET", "/v1/providers").json()["providers"]}
    assert providers["local"]["api_base_url"] == real_stack.oidc.issuer
    response = _gw(real_stack, "GET", f"/v1/proxy/{cid}/me")
    assert response.status_code == 200, response.text
    assert response.json()["sub"] == "dora" and response.json()["email"] == "dora@example.test"
    assert response.headers["Dromos-Connection-Id"] == cid
    assert "access_token" not in response.text
    # The agent never read a token: the only token reads were the proxy's, audited as such.
    reads = _audit(real_stack, cid, "token.read")
    assert reads and all(actor.startswith("proxy:apikey:") for actor, _ in reads)
    deadline = time.monotonic() + 5  # the gateway writes audit rows off the request path (≤ 0.1 s)
    rows = []
    while ("GET", "/me", 200, "local") not in rows and time.monotonic() < deadline:
        time.sleep(0.05)
        with psycopg.connect(real_stack.database_url) as conn:
            rows = conn.execute(
                "SELECT method, path, status, provider FROM gateway_app_proxycall WHERE connection_id = %s", [cid]
            ).fetchall()
    assert ("GET", "/me", 200, "local") in rows


def _fake_connection(stack, fake: FakeProvider, name: str) -> str:
    """A provider `name` on the fake provider (its /api/ as the API), and an active connection."""
    stack.manage(
        "broker",
        "provider",
        "upsert",
        "--name",
        name,
        "--template",
        "oidc",
        "--discovery-url",
        fake.discovery_url,
        "--client-id",
        FAKE_CLIENT_ID,
        f"--client-secret={FAKE_CLIENT_SECRET}",
        "--api-base-url",
        f"{fake.url}/api",
    )
    started = _gw(
        stack,
        "POST",
        "/v1/request-connection",
        json={"user_id": "frank", "provider_name": name, "scopes": ["openid"], "return_url": RETURN_URL},
    ).json()
    params = {k: v[0] for k, v in parse_qs(urlsplit(started["authUrl"]).query).items()}
    code = fake.issue_code(code_challenge=params["code_challenge"], nonce=params["nonce"])
    callback = requests.get(
        f"{stack.broker_url}/auth/callback",
        params={"code": code, "state": params["state"], "iss": fake.issuer},
        allow_redirects=False,
        timeout=30,
    )
    assert "status=success" in callback.headers["Location"], callback.headers
    return started["connection_id"]


def test_twenty_concurrent_401s_across_gateway_processes_cause_one_refresh_of_a_rotating_grant(real_stack):
    """The 401 path against a provider that rotates refresh tokens and revokes the grant when
    an old one is presented again (the fake provider: the npm one offers no way to make the
    API refuse a token the broker still holds without also ending the grant)."""
    fake = FakeProvider().start()
    name = "rotating"
    try:
        cid = _fake_connection(real_stack, fake, name)
        # Both gateway processes hold the token, then the provider stops accepting it.
        for _ in range(8):
            assert _gw(real_stack, "GET", f"/v1/proxy/{cid}/warm").status_code == 200
        fake.expire_access_tokens()
        fake.refresh_delay = 0.3

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: _gw(real_stack, "GET", f"/v1/proxy/{cid}/users/me"), range(20)))
        assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
        assert fake.refresh_calls == 1
        assert len(_audit(real_stack, cid, "token.refreshed")) == 1
        assert _gw(real_stack, "GET", f"/v1/check-connection/{cid}").json()["status"] == "active"
        # The rotated refresh token was stored: the next 401 refreshes with it (a reused old
        # one would revoke the grant). auto_refresh would be coalesced with the refresh just done.
        # Past PROXY_TOKEN_CACHE_SECONDS (5): a gateway process that served none of the 20 may
        # still hold the first token, and its 401 would be coalesced, not refreshed.
        time.sleep(5.5)
        fake.expire_access_tokens()
        again = _gw(real_stack, "GET", f"/v1/proxy/{cid}/users/me")
        assert again.status_code == 200, again.text
        assert fake.refresh_calls == 2
    finally:
        real_stack.manage("broker", "provider", "remove", "--name", name, check=False)  # disabled: it has connections
        fake.stop()


def test_under_gunicorn_a_chunked_answer_cut_short_breaks_and_a_chunked_upload_is_capped(real_stack):
    """What only a real server shows: the agent's answer is chunked when the provider's is, so
    a provider hanging up mid-body must end it without its last chunk (never a clean end);
    and a chunked upload (no Content-Length) is counted as it arrives."""
    fake = FakeProvider().start()
    name = "chunky"
    try:
        cid = _fake_connection(real_stack, fake, name)
        fake.api_answer(api_chunked_cut())
        response = _gw(real_stack, "GET", f"/v1/proxy/{cid}/stream", stream=True)
        assert response.status_code == 200 and response.headers.get("Transfer-Encoding") == "chunked"
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            response.content  # noqa: B018  (reading it is the test)

        def upload(size: int):
            yield b"z" * size

        limit = 10 * 1024 * 1024  # PROXY_MAX_BODY_BYTES' default
        small = _gw(real_stack, "POST", f"/v1/proxy/{cid}/upload", data=upload(1000))
        assert small.status_code == 200 and small.json()["received"] == 1000, small.text
        big = _gw(real_stack, "POST", f"/v1/proxy/{cid}/upload", data=upload(limit + 1))
        assert big.status_code == 413 and big.json()["error"] == "request_too_large"
    finally:
        real_stack.manage("broker", "provider", "remove", "--name", name, check=False)
        fake.stop()
