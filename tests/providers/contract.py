"""The shared provider contract: the tests every catalog provider runs.

Each provider's answers are data, recorded from its documentation in
`tests/providers/recorded/<template>.json` (the file names its sources). The contract
resolves the catalog entry exactly as the broker does (a Provider row, operator settings,
an agent's per-connection params), then points the resolved endpoints' *paths* at the
replay server, so the real protocol client and hooks talk real HTTP, and checks both
directions: what the broker sent (parameters, client authentication, body encoding,
headers) and what it made of the provider's answer (tokens, expiry, scopes, account,
metadata, error classification).

Recorded file keys (see docs/providers.md, "Adding a provider"):
  docs            where the shapes come from
  settings        operator `--setting` values; params: an agent's per-connection params
  scopes          scopes requested (default: the catalog's default_scopes)
  endpoints       the URLs the catalog must resolve to (null: none)
  authorize       {scope_param?, scope (the literal parameter value, null: not sent), pkce,
                   nonce, params (extra parameters)}
  exchange        {request {auth basic|post, format form|json, headers}, status?, body,
                   content_type?, expect {access_token?, token_type, expires_in, refresh_token,
                   refresh_expires_in?, scope, id_token?, account?, metadata?}}
  refresh         same shape (request defaults to the exchange's), or null: no refresh tokens
  errors          [{when exchange|refresh, status, body, expect (error code), transient?}]
  revocation      {revokes_with, status, body, request {method, auth, format, fields,
                   headers?}} or null: the provider has no revocation endpoint
  id_token        (OIDC templates) {issuer, claims, account?}
  discovery       (generic OIDC) the discovery document; "{replay}" is the replay server
  account_id      the account id the catalog's account_id_field reads (absent: the field is "")
                  from: the exchange body (token.), the id_token claims (id_token.), a documented
                  `userinfo` answer (userinfo.), `callback` query parameters (callback.) or the
                  template values (param.)
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.utils import timezone

from broker_app import crypto
from broker_app.models import Connection, Provider
from broker_app.oauth import client, oidc
from broker_app.oauth.errors import IdTokenError, PermanentOAuthError, TransientOAuthError
from broker_app.providers.account_id import account_id
from broker_app.providers.registry import resolve, set_client_secret
from broker_app.providers.spec import catalog, entry_problems
from broker_app.services.lifecycle import store_tokens

CLIENT_ID = "dromos-client-id"
CLIENT_SECRET = "dromos-client-secret"
REDIRECT_URI = "https://broker.example.com/auth/callback"
VERIFIER = "v" * 64
RECORDED = Path(__file__).with_name("recorded")
CONTENT_TYPES = {"form": "application/x-www-form-urlencoded", "json": "application/json"}


def recorded_keys() -> list[str]:
    return sorted(path.stem for path in RECORDED.glob("*.json"))


def load(key: str, replay_base: str = "") -> dict[str, Any]:
    text = (RECORDED / f"{key}.json").read_text()
    if replay_base:
        text = text.replace("{replay}", replay_base)
    return json.loads(text)


@cache
def signing_key():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    public.update({"kid": "contract-key", "use": "sig", "alg": "RS256"})
    return private, public


def provider_row(key: str, case: dict[str, Any], **fields) -> Provider:
    """An unsaved Provider row as `manage.py provider upsert --template KEY` makes it."""
    provider = Provider(
        name=key.replace("_", "-"), template=key, client_id=CLIENT_ID, settings=dict(case.get("settings", {})), **fields
    )
    set_client_secret(provider, CLIENT_SECRET)
    return provider


def at_replay(spec, replay):
    """The spec with every endpoint the broker *calls* moved to the replay server, path and
    query kept (the authorize URL is only ever handed to a browser, so it stays)."""
    netloc = urlsplit(replay.base).netloc
    changes = {}
    for name in ("token_url", "refresh_url", "revocation_url", "userinfo_url", "jwks_uri", "discovery_url"):
        url = getattr(spec, name)
        if url:
            parts = urlsplit(url)
            changes[name] = urlunsplit(("http", netloc, parts.path, parts.query, ""))
    return dataclasses.replace(spec, **changes)


def fill_values(url: str, spec) -> str:
    """A catalog URL with the connection's template values filled in ("" for a metadata base)."""
    if url.startswith("{metadata."):
        return ""
    for name, value in spec.values.items():
        url = url.replace(f"{{{name}}}", value)
    return url


def path_of(url: str) -> str:
    return urlsplit(url).path


def secrets_in(body: Any) -> set[str]:
    """Every string a token response holds under a key naming a token or secret."""
    found: set[str] = set()
    if isinstance(body, dict):
        for name, value in body.items():
            if isinstance(value, str) and ("token" in name or "secret" in name) and value:
                found.add(value)
            else:
                found |= secrets_in(value)
    elif isinstance(body, list):
        for item in body:
            found |= secrets_in(item)
    return found


def check_client_auth(request, fields: dict[str, Any], auth: str, *, token: str = "TOKEN") -> None:  # noqa: S107
    header = request.headers.get("authorization")
    if auth == "basic":
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        assert header == f"Basic {expected}"
        assert "client_secret" not in fields
    elif auth == "post":
        assert header is None
        assert fields.get("client_id") == CLIENT_ID and fields.get("client_secret") == CLIENT_SECRET
    elif auth == "bearer":
        assert header == f"Bearer {token}"
        assert "client_secret" not in fields
    else:
        assert auth == "none"
        assert header is None and "client_secret" not in fields


def check_format(request, fmt: str) -> None:
    if fmt == "none":
        assert request.body == b""
    else:
        assert request.content_type == CONTENT_TYPES[fmt]


def check_headers(request, expected: dict[str, str]) -> None:
    for name, value in expected.items():
        assert request.headers.get(name.lower()) == value, name


def check_tokens(tokens, expect: dict[str, Any], body: dict[str, Any]) -> None:
    assert tokens.access_token == expect.get("access_token", body.get("access_token"))
    assert tokens.token_type == expect["token_type"]
    assert tokens.refresh_token == expect["refresh_token"]
    assert tokens.expires_in == expect["expires_in"]
    assert tokens.refresh_expires_in == expect.get("refresh_expires_in")
    assert (None if tokens.scope is None else list(tokens.scope)) == expect["scope"]
    assert bool(tokens.id_token) == expect.get("id_token", False)
    assert tokens.metadata == expect.get("metadata", {})
    assert tokens.account == expect.get("account", {})
    kept = [v for v in (*tokens.metadata.values(), *tokens.account.values()) if isinstance(v, str)]
    assert not set(kept) & secrets_in(body), "a token ended up in metadata or account"


class ProviderContract:
    """Mixed into one test class per catalog template (tests/providers/test_catalog.py)."""

    key: str

    # -- fixtures ---------------------------------------------------------------------------
    @pytest.fixture
    def entry(self) -> dict[str, Any]:
        return catalog()[self.key]

    @pytest.fixture
    def case(self, replay) -> dict[str, Any]:
        return load(self.key, replay.base)

    @pytest.fixture
    def resolved(self, case, replay, request):
        """(spec, hooks) exactly as the broker resolves them for one connection."""
        fields = {}
        if "discovery" in case:
            request.getfixturevalue("db")  # the discovery document is cached in the database
            replay.answer("GET", "/.well-known/openid-configuration", 200, case["discovery"])
            fields["discovery_url"] = replay.url("/.well-known/openid-configuration")
        return resolve(provider_row(self.key, case, **fields), case.get("params"))

    @pytest.fixture
    def live(self, resolved, replay):
        spec, hooks = resolved
        replay.reset()
        return at_replay(spec, replay), hooks

    def answer(self, replay, url: str, section: dict[str, Any], method: str = "POST") -> None:
        body = section.get("body")
        content_type = section.get("content_type", "application/json")
        replay.answer(method, path_of(url), section.get("status", 200), body, content_type=content_type)

    # -- the catalog entry ------------------------------------------------------------------
    def test_catalog_entry_is_well_formed(self, entry):
        assert entry_problems(self.key, entry) == []
        assert entry["docs_url"].startswith("https://")
        if self.key != "oidc":
            assert entry["setup_url"].startswith("https://"), "docs/providers.md links where to register the app"

    def test_recorded_shapes_name_their_sources(self, case, entry):
        assert case["docs"] and all(url.startswith("https://") for url in case["docs"])
        assert (case["refresh"] is None) == (not entry.get("refresh", True))
        assert ("id_token" in case) == bool(entry.get("oidc")), "OIDC templates verify an id_token"

    def test_endpoints_resolve_to_the_documented_urls(self, resolved, case):
        spec, _hooks = resolved
        for name, url in case["endpoints"].items():
            assert getattr(spec, name) == (url or ""), name

    # -- reconnect and proxy data (issue 22) --------------------------------------------------
    def test_account_id_field_names_the_account(self, entry, case):
        """Reconnect compares this id before it replaces a grant: the documented answers must
        hold it where the catalog says, as a non-empty string."""
        field = entry["account_id_field"]
        if not field:
            assert "account_id" not in case
            return
        claims = {"sub": "user-1", **case["id_token"]["claims"]} if "id_token" in case else None
        found = account_id(
            field,
            claims=claims,
            token=case["exchange"]["body"],
            userinfo=case.get("userinfo"),
            callback=case.get("callback"),
            params={**case.get("settings", {}), **case.get("params", {})},
        )
        assert found == case["account_id"] and found

    def test_api_base_url_is_usable_after_the_exchange(self, resolved, case, entry):
        """The proxy's upstream: an https URL with every template value filled in, or one the
        connection's metadata supplies on a host api_hosts allows."""
        spec, hooks = resolved
        base = spec.api_base_url
        if not entry["api_base_url"]:  # the operator's own API (generic OIDC, Entra B2C)
            assert base == "" and self.key in ("oidc", "entra_b2c")
            return
        if base.startswith("{metadata."):
            name = base[len("{metadata.") : base.index("}")]
            tokens = hooks.parse_token_response(spec, case["exchange"]["body"])
            base = base.replace(f"{{metadata.{name}}}", str(tokens.metadata[name]))
        parts = urlsplit(base)
        assert parts.scheme == "https" and parts.hostname and "{" not in base and not base.endswith("/")
        allowed = {urlsplit(fill_values(entry["api_base_url"], spec)).hostname, *spec.api_hosts}
        assert any(
            parts.hostname == host or (host.startswith("*.") and parts.hostname.endswith(host[1:]))
            for host in allowed
            if host
        ), base

    # -- authorization request --------------------------------------------------------------
    def test_authorize_url(self, resolved, case):
        spec, _hooks = resolved
        expected = case["authorize"]
        scopes = case.get("scopes", list(spec.default_scopes))
        nonce = "nonce-123" if spec.oidc and "openid" in scopes else None  # as connection_start decides
        url = client.authorize_url(
            spec,
            redirect_uri=REDIRECT_URI,
            scopes=scopes,
            state="state-123",
            code_challenge=client.pkce_challenge(VERIFIER),
            nonce=nonce,
        )
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == case["endpoints"]["authorize_url"]
        raw = parse_qs(parts.query, keep_blank_values=True)
        assert all(len(values) == 1 for values in raw.values()), "a parameter is sent twice"
        query = {name: values[0] for name, values in raw.items()}
        assert query.pop("response_type") == "code"
        assert query.pop("client_id") == CLIENT_ID
        assert query.pop("redirect_uri") == REDIRECT_URI
        assert query.pop("state") == "state-123"
        scope_param = expected.get("scope_param", "scope")
        if expected["scope"] is None:
            assert scope_param not in query
        else:
            assert query.pop(scope_param) == expected["scope"]
            assert "+" not in parts.query, "spaces are sent as %20"
        if expected["pkce"]:
            assert query.pop("code_challenge") == client.pkce_challenge(VERIFIER)
            assert query.pop("code_challenge_method") == "S256"
        if expected["nonce"]:
            assert query.pop("nonce") == "nonce-123"
        assert query == expected.get("params", {}), "unexpected or missing authorize parameters"
        assert CLIENT_SECRET not in url

    # -- code exchange ----------------------------------------------------------------------
    def test_code_exchange(self, live, case, replay):
        spec, hooks = live
        exchange = case["exchange"]
        self.answer(replay, spec.token_url, exchange)
        tokens = client.exchange_code(spec, hooks, code="code-123", redirect_uri=REDIRECT_URI, code_verifier=VERIFIER)
        request = replay.only("POST")
        assert request.path == path_of(case["endpoints"]["token_url"])
        fields = request.fields()
        assert fields["grant_type"] == "authorization_code"
        assert fields["code"] == "code-123" and fields["redirect_uri"] == REDIRECT_URI
        assert fields.get("code_verifier") == (VERIFIER if case["authorize"]["pkce"] else None)
        check_client_auth(request, fields, exchange["request"]["auth"])
        check_format(request, exchange["request"]["format"])
        check_headers(request, exchange["request"].get("headers", {}))
        check_tokens(tokens, exchange["expect"], exchange["body"])

    # -- refresh ----------------------------------------------------------------------------
    def test_refresh(self, live, case, entry, replay):
        spec, hooks = live
        refresh = case["refresh"]
        if refresh is None:
            assert spec.refresh is False
            return
        url = spec.refresh_url or spec.token_url
        self.answer(replay, url, refresh)
        tokens = client.refresh(spec, hooks, refresh_token="RT-OLD")
        request = replay.only("POST")
        documented = case["endpoints"].get("refresh_url") or case["endpoints"]["token_url"]
        assert request.path == path_of(documented)
        fields = request.fields()
        assert fields["grant_type"] == "refresh_token" and fields["refresh_token"] == "RT-OLD"
        shape = {**case["exchange"]["request"], **refresh.get("request", {})}
        check_client_auth(request, fields, shape["auth"])
        check_format(request, shape["format"])
        check_headers(request, shape.get("headers", {}))
        check_tokens(tokens, refresh["expect"], refresh["body"])
        if entry.get("refresh_token_rotation"):
            assert refresh["expect"]["refresh_token"] not in (None, "RT-OLD"), "a rotating provider's answer"

    def test_refresh_result_is_stored_as_the_refresh_service_stores_it(self, live, case):
        """What `_refresh_locked` writes (store_tokens with keep_refresh_token): a rotated
        refresh token replaces the old one, an answer without one keeps it, no expires_in
        means no expiry, and earlier metadata (Salesforce's instance_url) survives."""
        refresh = case["refresh"]
        if refresh is None:
            return
        spec, hooks = live
        tokens = hooks.parse_token_response(spec, refresh["body"])
        connection = Connection(
            id="c_contract", metadata={"earlier": "kept"}, granted_scopes=["before"], token_version=1
        )
        connection.refresh_token_enc = crypto.encrypt("RT-OLD", aad=connection.aad("refresh_token"))
        before = timezone.now()
        store_tokens(connection, tokens, keep_refresh_token=True)
        stored = crypto.decrypt(connection.refresh_token_enc, aad=connection.aad("refresh_token"))
        assert stored == (refresh["expect"]["refresh_token"] or "RT-OLD")
        expires_in = refresh["expect"]["expires_in"]
        if expires_in is None:
            assert connection.expires_at is None
        else:
            assert before + timedelta(seconds=expires_in - 5) <= connection.expires_at
        lifetime = refresh["expect"].get("refresh_expires_in")
        if lifetime and refresh["expect"]["refresh_token"]:
            assert before + timedelta(seconds=lifetime - 5) <= connection.refresh_expires_at
        assert connection.metadata == {"earlier": "kept", **refresh["expect"].get("metadata", {})}
        scope = refresh["expect"]["scope"]
        assert connection.granted_scopes == (["before"] if scope is None else scope)
        assert connection.token_version == 2

    # -- errors -----------------------------------------------------------------------------
    def test_error_shapes_are_classified(self, live, case, entry, replay):
        spec, hooks = live
        errors = case["errors"]
        assert errors, "record at least the provider's answer to a bad code or refresh token"
        if entry.get("refresh", True) and case.get("dead_refresh_token") != "undocumented":
            assert any(e["when"] == "refresh" and e["expect"] == "invalid_grant" for e in errors), (
                "record how the provider answers a dead refresh token: it must read invalid_grant"
            )
        for error in errors:
            replay.reset()
            url = (spec.refresh_url or spec.token_url) if error["when"] == "refresh" else spec.token_url
            self.answer(replay, url, error)
            kind = TransientOAuthError if error.get("transient") else PermanentOAuthError
            with pytest.raises(kind) as caught:
                if error["when"] == "refresh":
                    client.refresh(spec, hooks, refresh_token="RT-DEAD")
                else:
                    client.exchange_code(
                        spec, hooks, code="code-dead", redirect_uri=REDIRECT_URI, code_verifier=VERIFIER
                    )
            assert caught.value.error == error["expect"], error["body"]
            assert "RT-DEAD" not in str(caught.value) and "code-dead" not in str(caught.value)
            assert CLIENT_SECRET not in str(caught.value)

    def test_outage_and_throttling_are_transient(self, live, replay):
        spec, hooks = live
        replay.answer("POST", path_of(spec.token_url), 503, "<html>down</html>", content_type="text/html")
        replay.answer("POST", path_of(spec.token_url), 429, {"error": "rate_limited"}, headers={"Retry-After": "7"})
        with pytest.raises(TransientOAuthError) as outage:
            client.exchange_code(spec, hooks, code="c", redirect_uri=REDIRECT_URI, code_verifier=VERIFIER)
        assert outage.value.error == "server_error"
        with pytest.raises(TransientOAuthError) as throttled:
            client.exchange_code(spec, hooks, code="c", redirect_uri=REDIRECT_URI, code_verifier=VERIFIER)
        assert throttled.value.retry_after == 7

    # -- revocation -------------------------------------------------------------------------
    def test_revocation_request(self, live, case, replay):
        spec, _hooks = live
        revocation = case["revocation"]
        if revocation is None:
            assert spec.revocation_url == ""
            assert client.revoke(spec, token="TOKEN", token_type_hint="refresh_token") is False
            return
        assert spec.revocation_token == revocation["revokes_with"]
        shape = revocation["request"]
        self.answer(replay, spec.revocation_url, revocation, method=shape["method"])
        assert client.revoke(spec, token="TOKEN", token_type_hint=spec.revocation_token) is True
        request = replay.only(shape["method"])
        assert request.path == path_of(case["endpoints"]["revocation_url"])
        fields = request.fields()
        check_client_auth(request, fields, shape["auth"])
        check_format(request, shape["format"])
        check_headers(request, shape.get("headers", {}))
        assert fields == shape["fields"]

    def test_revocation_outage_is_retried_later(self, live, case, replay):
        spec, _hooks = live
        if case["revocation"] is None:
            return
        replay.answer(case["revocation"]["request"]["method"], path_of(spec.revocation_url), 503, "")
        with pytest.raises(TransientOAuthError):
            client.revoke(spec, token="TOKEN", token_type_hint=spec.revocation_token)

    # -- OIDC -------------------------------------------------------------------------------
    def test_id_token_is_verified_against_the_documented_issuer(self, live, case, replay, request):
        if "id_token" not in case:
            return
        request.getfixturevalue("db")  # JWKS are cached in the database
        spec, hooks = live
        private, public = signing_key()
        replay.answer("GET", path_of(spec.jwks_uri), 200, {"keys": [public]})
        documented = case["id_token"]
        now = int(time.time())

        def signed(**claims) -> str:
            payload = {
                "iss": documented["issuer"],
                "sub": "user-1",
                "aud": CLIENT_ID,
                "iat": now,
                "exp": now + 600,
                "nonce": "nonce-123",
                **documented["claims"],
                **claims,
            }
            return jwt.encode(payload, private, algorithm="RS256", headers={"kid": "contract-key"})

        claims = oidc.verify_id_token(spec, hooks, signed(), nonce_digest=crypto.digest("nonce-123"))
        account = hooks.account(spec, claims)
        assert account["sub"] == "user-1" and account["iss"] == documented["issuer"]
        for name, value in documented.get("account", {}).items():
            assert account[name] == value
        for forged in ({"iss": "https://evil.example.com"}, {"aud": "someone-else"}, {"nonce": "other"}):
            with pytest.raises(IdTokenError):
                oidc.verify_id_token(spec, hooks, signed(**forged), nonce_digest=crypto.digest("nonce-123"))


__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "REDIRECT_URI",
    "VERIFIER",
    "ProviderContract",
    "at_replay",
    "load",
    "provider_row",
    "recorded_keys",
    "signing_key",
]
