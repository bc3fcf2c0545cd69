"""Integration self-check of the local oidc-provider and the test helpers.

Starts devtools/oidc-provider/server.js (needs `npm ci --prefix devtools/oidc-provider`)
on a free port and walks the flows the Dromos tests rely on.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
import pytest
import requests

DEVTOOLS = Path(__file__).resolve().parents[2] / "devtools"
sys.path.insert(0, str(DEVTOOLS))

import oidc_server  # noqa: E402
from oidc_consent import ConsentError, complete_consent, confirm_device_code  # noqa: E402
from oidc_server import (  # noqa: E402
    OidcProviderError,
    free_port,
    start_oidc_provider,
)

CALLBACK = "http://127.0.0.1:8001/auth/callback"
CLIENT_ID = "dromos-demo"
CLIENT_SECRET = "dromos-demo-secret"
POST_CLIENT_ID = "dromos-post"
POST_CLIENT_SECRET = "dromos-post-secret"
ACCESS_TOKEN_TTL = 1234
pytestmark = pytest.mark.live  # the npm oidc-provider, a real process
# Nothing ever listens there: complete_consent must stop at the refused redirect.
DEAD_PORT = free_port()
DEAD_CALLBACK = f"http://127.0.0.1:{DEAD_PORT}/auth/callback"


@pytest.fixture(scope="module")
def provider():
    handle = start_oidc_provider(
        free_port(),
        [
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [CALLBACK]},
            {
                "client_id": POST_CLIENT_ID,
                "client_secret": POST_CLIENT_SECRET,
                "redirect_uris": [DEAD_CALLBACK],
                "token_endpoint_auth_method": "client_secret_post",
            },
        ],
        access_token_ttl=ACCESS_TOKEN_TTL,
    )
    try:
        yield handle
    finally:
        handle.stop()
        assert handle.process.returncode == 0, handle.log()  # clean exit on SIGTERM
        assert "oidc-provider listening on " + handle.issuer in handle.log()


@pytest.fixture()
def http():
    s = requests.Session()
    s.trust_env = False
    return s


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_url(
    provider,
    *,
    client_id=CLIENT_ID,
    redirect_uri=CALLBACK,
    scope="openid email profile",
    challenge=None,
    method="S256",
    **extra,
):
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
    }
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method=method)
    params.update(extra)
    return provider.metadata["authorization_endpoint"] + "?" + urlencode(params), params


def query(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}


def token(http, provider, data, auth=(CLIENT_ID, CLIENT_SECRET)):
    return http.post(provider.metadata["token_endpoint"], data=data, auth=auth, timeout=10)


def login_and_exchange(http, provider, login="alice", scope="openid email profile"):
    verifier, challenge = pkce_pair()
    url, params = authorize_url(provider, challenge=challenge, scope=scope)
    callback = complete_consent(url, login=login, stop_at_prefix=CALLBACK)
    q = query(callback)
    r = token(
        http,
        provider,
        {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CALLBACK, "code_verifier": verifier},
    )
    assert r.status_code == 200, r.text
    return r.json(), params


def userinfo(http, provider, access_token):
    return http.get(
        provider.metadata["userinfo_endpoint"], headers={"Authorization": f"Bearer {access_token}"}, timeout=10
    )


def test_discovery(provider):
    md = provider.metadata
    assert md["issuer"] == provider.issuer == f"http://127.0.0.1:{provider.port}"
    assert md["code_challenge_methods_supported"] == ["S256"]
    assert md["authorization_response_iss_parameter_supported"] is True
    assert md["revocation_endpoint"] == provider.issuer + "/token/revocation"
    assert md["userinfo_endpoint"] == provider.issuer + "/me"
    assert "RS256" in md["id_token_signing_alg_values_supported"]
    assert "refresh_token" in md["grant_types_supported"]
    assert md["response_types_supported"] == ["code"]


def test_code_flow_userinfo_refresh_rotation_and_reuse_detection(provider, http):
    verifier, challenge = pkce_pair()
    url, params = authorize_url(provider, challenge=challenge)
    callback = complete_consent(url, login="alice", stop_at_prefix=CALLBACK)

    assert callback.startswith(CALLBACK + "?")
    q = query(callback)
    assert q["state"] == params["state"]
    assert q["iss"] == provider.issuer  # RFC 9207
    assert q["code"]

    r = token(
        http,
        provider,
        {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CALLBACK, "code_verifier": verifier},
    )
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == ACCESS_TOKEN_TTL
    assert tokens["scope"] == "openid email profile"
    assert tokens["access_token"] and tokens["refresh_token"]  # no offline_access asked

    jwks = jwt.PyJWKClient(provider.metadata["jwks_uri"])
    key = jwks.get_signing_key_from_jwt(tokens["id_token"]).key
    claims = jwt.decode(tokens["id_token"], key, algorithms=["RS256"], audience=CLIENT_ID, issuer=provider.issuer)
    assert jwt.get_unverified_header(tokens["id_token"])["alg"] == "RS256"
    assert claims["nonce"] == params["nonce"]
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.test" and claims["email_verified"] is True
    assert claims["name"] == "Alice"

    r = userinfo(http, provider, tokens["access_token"])
    assert r.status_code == 200, r.text
    assert r.json() == {"sub": "alice", "email": "alice@example.test", "email_verified": True, "name": "Alice"}

    # Refresh: rotation gives a new refresh token and a new access token.
    old_rt = tokens["refresh_token"]
    r = token(http, provider, {"grant_type": "refresh_token", "refresh_token": old_rt})
    assert r.status_code == 200, r.text
    refreshed = r.json()
    new_rt = refreshed["refresh_token"]
    assert new_rt != old_rt
    assert refreshed["access_token"] != tokens["access_token"]
    assert refreshed["expires_in"] == ACCESS_TOKEN_TTL
    assert userinfo(http, provider, refreshed["access_token"]).status_code == 200

    # Reuse of the rotated (old) refresh token: invalid_grant ...
    r = token(http, provider, {"grant_type": "refresh_token", "refresh_token": old_rt})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"

    # ... and the whole grant is revoked: the new refresh token and every
    # access token of the grant stop working too.
    r = token(http, provider, {"grant_type": "refresh_token", "refresh_token": new_rt})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert userinfo(http, provider, refreshed["access_token"]).status_code == 401
    assert userinfo(http, provider, tokens["access_token"]).status_code == 401


def test_code_replay_is_invalid_grant_and_revokes_the_grant(provider, http):
    verifier, challenge = pkce_pair()
    url, _ = authorize_url(provider, challenge=challenge)
    q = query(complete_consent(url, stop_at_prefix=CALLBACK))
    exchange = {
        "grant_type": "authorization_code",
        "code": q["code"],
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
    }
    r = token(http, provider, exchange)
    assert r.status_code == 200, r.text
    tokens = r.json()

    r = token(http, provider, exchange)  # the code is single-use ...
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # ... and replaying it revokes what it gave (RFC 6749 section 4.1.2).
    assert userinfo(http, provider, tokens["access_token"]).status_code == 401
    r = token(http, provider, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_refresh_token_also_with_offline_access(provider, http):
    # Without prompt=consent the provider drops offline_access (OIDC Core 11)
    # but still issues a refresh token.
    tokens, _ = login_and_exchange(http, provider, scope="openid email profile offline_access")
    assert tokens["scope"] == "openid email profile"
    assert tokens["refresh_token"]

    verifier, challenge = pkce_pair()
    url, _ = authorize_url(provider, challenge=challenge, prompt="consent", scope="openid email profile offline_access")
    q = query(complete_consent(url, stop_at_prefix=CALLBACK))
    r = token(
        http,
        provider,
        {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CALLBACK, "code_verifier": verifier},
    )
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "openid email profile offline_access"
    assert r.json()["refresh_token"]


def test_sub_is_the_login_name(provider, http):
    tokens, _ = login_and_exchange(http, provider, login="bob")
    assert userinfo(http, provider, tokens["access_token"]).json()["sub"] == "bob"


def test_revocation(provider, http):
    revoke = provider.metadata["revocation_endpoint"]
    auth = (CLIENT_ID, CLIENT_SECRET)

    # Revoking the refresh token kills the refresh token and the access tokens.
    tokens, _ = login_and_exchange(http, provider)
    r = http.post(
        revoke, data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"}, auth=auth, timeout=10
    )
    assert r.status_code == 200
    r = token(http, provider, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert userinfo(http, provider, tokens["access_token"]).status_code == 401

    # Revoking an access token kills every token of its grant, the refresh
    # token included (oidc-provider revokes by grantId).
    tokens, _ = login_and_exchange(http, provider)
    r = http.post(
        revoke, data={"token": tokens["access_token"], "token_type_hint": "access_token"}, auth=auth, timeout=10
    )
    assert r.status_code == 200
    assert userinfo(http, provider, tokens["access_token"]).status_code == 401
    r = token(http, provider, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"

    # An unknown token is also answered 200 (RFC 7009 section 2.2) ...
    r = http.post(revoke, data={"token": "not-a-token"}, auth=auth, timeout=10)
    assert r.status_code == 200
    # ... but the client must authenticate.
    r = http.post(revoke, data={"token": "not-a-token"}, auth=(CLIENT_ID, "wrong"), timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_deny_gives_access_denied(provider):
    _, challenge = pkce_pair()
    url, params = authorize_url(provider, challenge=challenge)
    callback = complete_consent(url, deny=True, stop_at_prefix=CALLBACK)
    q = query(callback)
    assert q["error"] == "access_denied"
    assert q["state"] == params["state"]
    assert q["iss"] == provider.issuer
    assert "code" not in q


def test_pkce_is_required(provider, http):
    url, params = authorize_url(provider)  # no code_challenge
    q = query(complete_consent(url, stop_at_prefix=CALLBACK))
    assert q["error"] == "invalid_request"
    assert "PKCE" in q["error_description"]

    _, challenge = pkce_pair()
    url, _ = authorize_url(provider, challenge=challenge, method="plain")
    q = query(complete_consent(url, stop_at_prefix=CALLBACK))
    assert q["error"] == "invalid_request"


def test_wrong_code_verifier_is_invalid_grant(provider, http):
    _, challenge = pkce_pair()
    url, _ = authorize_url(provider, challenge=challenge)
    q = query(complete_consent(url, stop_at_prefix=CALLBACK))
    r = token(
        http,
        provider,
        {
            "grant_type": "authorization_code",
            "code": q["code"],
            "redirect_uri": CALLBACK,
            "code_verifier": pkce_pair()[0],
        },
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_client_secret_post_client_and_refused_redirect(provider, http):
    verifier, challenge = pkce_pair()
    url, params = authorize_url(provider, client_id=POST_CLIENT_ID, redirect_uri=DEAD_CALLBACK, challenge=challenge)
    # No stop_at_prefix: the redirect to the dead port is refused, so it is the end.
    callback = complete_consent(url)
    assert callback.startswith(DEAD_CALLBACK + "?")
    q = query(callback)
    r = http.post(
        provider.metadata["token_endpoint"],
        timeout=10,
        data={
            "grant_type": "authorization_code",
            "code": q["code"],
            "redirect_uri": DEAD_CALLBACK,
            "code_verifier": verifier,
            "client_id": POST_CLIENT_ID,
            "client_secret": POST_CLIENT_SECRET,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["refresh_token"]


class _FakeBroker(BaseHTTPRequestHandler):
    """Stands in for a broker: /start -> provider, /auth/callback -> the app's return_url."""

    auth_url = ""
    return_url = ""

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/start"):
            location = self.auth_url
        elif self.path.startswith("/auth/callback"):
            q = query(self.path)
            outcome = "ok" if "code" in q else q.get("error", "unknown")
            location = f"{self.return_url}?result={outcome}"
        else:
            self.send_error(404)
            return
        self.send_response(302)
        self.send_header("Location", location)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_broker():
    """A broker on a free port with its own client registered at a fresh provider."""
    port = free_port()
    callback = f"http://127.0.0.1:{port}/auth/callback"
    server = ThreadingHTTPServer(("127.0.0.1", port), type("Broker", (_FakeBroker,), {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    own = start_oidc_provider(
        free_port(), [{"client_id": "broker", "client_secret": "broker-secret", "redirect_uris": [callback]}]
    )
    try:
        yield server, own, callback, port
    finally:
        own.stop()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("deny", [False, True])
def test_follows_through_broker_callback_to_return_url(fake_broker, deny):
    server, own, callback, port = fake_broker
    return_url = f"http://127.0.0.1:{DEAD_PORT}/app/done"  # the fake app does not answer
    _, challenge = pkce_pair()
    url, _ = authorize_url(own, client_id="broker", redirect_uri=callback, challenge=challenge)
    server.RequestHandlerClass.auth_url = url
    server.RequestHandlerClass.return_url = return_url

    start = f"http://127.0.0.1:{port}/start"
    expected = return_url + ("?result=access_denied" if deny else "?result=ok")
    assert complete_consent(start, deny=deny) == expected
    url2, _ = authorize_url(own, client_id="broker", redirect_uri=callback, challenge=challenge)
    server.RequestHandlerClass.auth_url = url2
    assert complete_consent(start, deny=deny, stop_at_prefix=return_url) == expected


def test_cli(provider):
    script = str(DEVTOOLS / "oidc_consent.py")
    _, challenge = pkce_pair()
    url, params = authorize_url(provider, challenge=challenge)
    done = subprocess.run(
        [sys.executable, script, url, "--login", "carol", "--stop-at", CALLBACK],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    q = query(done.stdout.strip())
    assert q["code"] and q["state"] == params["state"]

    url, params = authorize_url(provider, challenge=challenge)
    done = subprocess.run(
        [sys.executable, script, url, "--deny", "--stop-at", CALLBACK], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert query(done.stdout.strip())["error"] == "access_denied"

    # An unknown client: the provider shows its error page -> exit 1.
    url, _ = authorize_url(provider, client_id="nobody", challenge=challenge)
    done = subprocess.run([sys.executable, script, url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "400" in done.stderr and "invalid_client" in done.stderr


def test_provider_error_page_raises(provider):
    _, challenge = pkce_pair()
    url, _ = authorize_url(provider, redirect_uri="http://127.0.0.1:1/not-registered", challenge=challenge)
    with pytest.raises(ConsentError) as info:
        complete_consent(url)
    assert info.value.status == 400
    assert "redirect_uri" in str(info.value)


def test_start_fails_clearly_when_port_taken(provider):
    with pytest.raises(OidcProviderError) as info:
        start_oidc_provider(provider.port, timeout=10)
    assert f"port {provider.port} is already in use" in str(info.value)
    assert provider.running()


def test_start_fails_clearly_without_node_modules(tmp_path, monkeypatch):
    (tmp_path / "server.js").write_text("")
    monkeypatch.setattr(oidc_server, "PROVIDER_DIR", tmp_path)
    with pytest.raises(OidcProviderError, match="npm ci --prefix devtools/oidc-provider"):
        start_oidc_provider(free_port())


def test_a_start_that_never_listens_is_retried_once_then_reported_with_the_process_state(tmp_path, monkeypatch, capfd):
    (tmp_path / "node_modules" / "oidc-provider").mkdir(parents=True)
    (tmp_path / "server.js").write_text("console.log('stuck'); setInterval(() => {}, 1000);\n")
    monkeypatch.setattr(oidc_server, "PROVIDER_DIR", tmp_path)
    with pytest.raises(OidcProviderError, match=r"did not answer .* within 1s .*process state [A-Z]") as info:
        start_oidc_provider(free_port(), timeout=1)
    assert "stuck" in str(info.value)
    assert "oidc-provider: retrying once after" in capfd.readouterr().err


def test_jwks_from_env_and_default_client(http):
    import json

    from cryptography.hazmat.primitives.asymmetric import rsa

    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key))
    jwk.update(kid="fixed-test-key", use="sig", alg="RS256")
    with start_oidc_provider(free_port(), None, jwks={"keys": [jwk]}) as own:
        published = http.get(own.metadata["jwks_uri"], timeout=10).json()["keys"]
        assert [k["kid"] for k in published] == ["fixed-test-key"]
        assert "d" not in published[0]  # only the public part is published

        # clients=None: the server's default dromos-demo client.
        assert own.clients[0]["client_id"] == CLIENT_ID
        tokens, params = login_and_exchange(http, own)
        claims = jwt.decode(
            tokens["id_token"], private_key.public_key(), algorithms=["RS256"], audience=CLIENT_ID, issuer=own.issuer
        )
        assert claims["nonce"] == params["nonce"]
        assert tokens["expires_in"] == 3600  # default ACCESS_TOKEN_TTL


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN = {
    "error": "slow_down",
    "error_description": "you are polling too quickly and should back off at a reasonable rate",
}


def test_device_flow_has_no_slow_down_and_no_interval_by_default(http):
    client = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [CALLBACK]}
    client["grant_types"] = ["authorization_code", "refresh_token", DEVICE_GRANT]
    with start_oidc_provider(free_port(), [client]) as own:
        started = http.post(
            own.metadata["device_authorization_endpoint"],
            data={"scope": "openid"},
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=10,
        )
        assert started.status_code == 200, started.text
        assert "interval" not in started.json()  # RFC 8628's default (5 s) applies
        assert started.json()["expires_in"] == 600  # DEVICE_CODE_TTL's default
        for _ in range(3):
            r = token(http, own, {"grant_type": DEVICE_GRANT, "device_code": started.json()["device_code"]})
            assert r.status_code == 400 and r.json()["error"] == "authorization_pending"
        assert "device poll" not in own.log()


def test_device_slow_down_switch(http):
    """DEVICE_SLOW_DOWN_POLLS=2: the first two polls of each device code answer slow_down, then
    oidc-provider answers as usual; every other token request (code flow, refresh, a
    client_secret_post client, a body with a charset) is oidc-provider's, body intact."""
    device_client = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [CALLBACK],
        "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
    }
    post_client = {
        "client_id": POST_CLIENT_ID,
        "client_secret": POST_CLIENT_SECRET,
        "redirect_uris": [DEAD_CALLBACK],
        "token_endpoint_auth_method": "client_secret_post",
        "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
    }
    env = {"DEVICE_SLOW_DOWN_POLLS": "2", "DEVICE_POLL_INTERVAL": "1"}
    with start_oidc_provider(free_port(), [device_client, post_client], extra_env=env) as own:

        def device_auth(**kwargs):
            r = http.post(own.metadata["device_authorization_endpoint"], timeout=10, **kwargs)
            assert r.status_code == 200, r.text
            assert r.json()["interval"] == 1  # DEVICE_POLL_INTERVAL
            return r.json()

        def poll(device_code, auth=(CLIENT_ID, CLIENT_SECRET), **extra):
            return token(http, own, {"grant_type": DEVICE_GRANT, "device_code": device_code, **extra}, auth=auth)

        first = device_auth(data={"scope": "openid email"}, auth=(CLIENT_ID, CLIENT_SECRET))
        # Confirmed before the first poll: the first two polls still answer slow_down.
        confirm_device_code(first["verification_uri"], first["user_code"], login="carol")
        for _ in range(2):
            r = poll(first["device_code"])
            assert (r.status_code, r.json()) == (400, SLOW_DOWN)
            assert r.headers["Cache-Control"] == "no-store"
        r = poll(first["device_code"])
        assert r.status_code == 200, r.text
        assert r.json()["access_token"] and r.json()["id_token"]
        assert userinfo(http, own, r.json()["access_token"]).json()["sub"] == "carol"
        assert poll(first["device_code"]).json()["error"] == "invalid_grant"  # consumed: oidc-provider's answer

        # Each device code has its own count; a client_secret_post client's polls count too.
        second = device_auth(data={"scope": "openid", "client_id": POST_CLIENT_ID, "client_secret": POST_CLIENT_SECRET})
        post_auth = {"auth": None, "client_id": POST_CLIENT_ID, "client_secret": POST_CLIENT_SECRET}
        assert [poll(second["device_code"], **post_auth).json()["error"] for _ in range(3)] == [
            "slow_down",
            "slow_down",
            "authorization_pending",
        ]
        # A wrong secret after the slow_downs: oidc-provider authenticates the client as usual.
        wrong = poll(second["device_code"], auth=None, client_id=POST_CLIENT_ID, client_secret="wrong")
        assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
        # Not slow_down: an unknown device code, or one presented by another client.
        assert poll("no-such-device-code").json()["error"] == "invalid_grant"
        third = device_auth(data={"scope": "openid"}, auth=(CLIENT_ID, CLIENT_SECRET))
        r = poll(third["device_code"], **post_auth)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")
        assert poll(third["device_code"]).json()["error"] == "slow_down"  # its own client: count starts
        # The N slow_down answers name the client but do not check its secret (README).
        assert poll(third["device_code"], auth=(CLIENT_ID, "wrong")).json()["error"] == "slow_down"

        # The code flow and refresh (client_secret_basic), a client_secret_post exchange and a
        # body that names its charset: oidc-provider parses the body the middleware read.
        tokens, _params = login_and_exchange(http, own, login="dave")
        assert userinfo(http, own, tokens["access_token"]).json()["sub"] == "dave"
        r = http.post(
            own.metadata["token_endpoint"],
            data=urlencode({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}),
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert r.json()["refresh_token"] != tokens["refresh_token"]
        verifier, challenge = pkce_pair()
        url, _ = authorize_url(own, client_id=POST_CLIENT_ID, redirect_uri=DEAD_CALLBACK, challenge=challenge)
        code = query(complete_consent(url))["code"]
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": DEAD_CALLBACK}
        r = token(http, own, {**data, "code_verifier": verifier, **post_auth}, auth=None)
        assert r.status_code == 200, r.text

        log = own.log()
        polls = [line.split(": ", 1) for line in log.splitlines() if line.startswith("device poll ")]
        assert [(head.split(" at ")[0], outcome) for head, outcome in polls] == [
            ("device poll 1 of device code #1", "slow_down"),
            ("device poll 2 of device code #1", "slow_down"),
            ("device poll 3 of device code #1", "tokens"),
            ("device poll 4 of device code #1", "invalid_grant"),
            ("device poll 1 of device code #2", "slow_down"),
            ("device poll 2 of device code #2", "slow_down"),
            ("device poll 3 of device code #2", "authorization_pending"),
            ("device poll 4 of device code #2", "invalid_client"),
            ("device poll 1 of device code #3", "slow_down"),
            ("device poll 2 of device code #3", "slow_down"),
        ]
        for secret in (first["device_code"], second["device_code"], third["device_code"]):
            assert secret not in log


def test_device_slow_down_switch_leaves_an_expired_code_to_oidc_provider(http):
    client = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [CALLBACK],
        "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
    }
    env = {"DEVICE_SLOW_DOWN_POLLS": "2", "DEVICE_CODE_TTL": "1"}
    with start_oidc_provider(free_port(), [client], extra_env=env) as own:
        started = http.post(
            own.metadata["device_authorization_endpoint"],
            data={"scope": "openid"},
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=10,
        ).json()
        assert started["expires_in"] == 1 and "interval" not in started
        time.sleep(2.2)
        r = token(http, own, {"grant_type": DEVICE_GRANT, "device_code": started["device_code"]})
        assert (r.status_code, r.json()["error"]) == (400, "expired_token")  # not slow_down
        assert "device poll" not in own.log()
