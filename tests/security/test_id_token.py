"""id_token verification, in the shape of the OpenID RP conformance tests: every malformed,
mis-signed or mis-addressed token is refused, each case on its own. The keys come from the
fake provider's real JWKS endpoint over HTTP, through the broker's cache (process memory,
then PostgreSQL); the replayed-nonce case runs the whole consent flow over HTTP.

The JWKS half (unknown kid, kid floods, unusable keys, an endpoint that is down) lives in
test_jwks_cache.py."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fake_provider import CLIENT_ID, DROP, _rsa_jwk

from broker_app.crypto import digest
from broker_app.models import Connection
from broker_app.oauth import oidc
from broker_app.oauth.errors import IdTokenError
from broker_app.providers.hooks import ProviderHooks
from tests.conftest import auth_params, connect, start_connection
from tests.security.conftest import claims, forge

pytestmark = pytest.mark.django_db

NONCE = "n-0"
HOOKS = ProviderHooks()
LEEWAY = 60  # dromos.settings: ID_TOKEN_LEEWAY_SECONDS default


def verify(spec, token: str, *, nonce: str | None = NONCE) -> dict:
    return oidc.verify_id_token(spec, HOOKS, token, nonce_digest=digest(nonce) if nonce else None)


def refused(spec, token: str, match: str) -> None:
    with pytest.raises(IdTokenError, match=match) as caught:
        verify(spec, token)
    # The message names the check, never the token or a part of it.
    for part in token.split("."):
        if len(part) > 8:
            assert part not in str(caught.value)


@pytest.fixture
def spec(oidc_spec):
    return oidc_spec()


# -- the control: a correctly formed token passes -------------------------------------------------


def test_a_correct_token_is_accepted(spec, fake_provider):
    verified = verify(spec, fake_provider.id_token(nonce=NONCE))
    assert verified["sub"] == "user-1" and verified["aud"] == CLIENT_ID


def test_settings_leeway_is_the_one_the_battery_assumes(settings):
    assert settings.ID_TOKEN_LEEWAY_SECONDS == LEEWAY


# -- signature and algorithm ------------------------------------------------------------------------


def test_correct_token_signed_with_another_key_is_rejected(spec, fake_provider):
    impostor, _ = _rsa_jwk("key-1")  # same kid, another key
    refused(spec, fake_provider.id_token(nonce=NONCE, key=impostor), "signature")


def test_token_with_the_right_claims_and_a_tampered_payload_is_rejected(spec, fake_provider):
    header, _, signature = fake_provider.id_token(nonce=NONCE).split(".")
    forged_payload = forge({}, claims(fake_provider, sub="admin")).split(".")[1]
    refused(spec, f"{header}.{forged_payload}.{signature}", "signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_rejected(oidc_spec, fake_provider, alg):
    # Even a provider that (wrongly) advertises "none" does not make it acceptable.
    spec = oidc_spec(id_token_algs=("RS256", alg))
    refused(spec, forge({"alg": alg, "kid": "key-1"}, claims(fake_provider)), "algorithm .* is not accepted")


def _public_pem(fake_provider) -> bytes:
    return fake_provider.signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("secret", ["pem", "pem-without-newline", "der", "jwk-json", "modulus"])
def test_hs256_signed_with_the_providers_public_key_is_rejected(oidc_spec, fake_provider, secret):
    """The classic key-confusion attack: the public key is public, so an HMAC made with it
    would let anyone mint tokens. Refused even when the provider advertises HS256."""
    public = fake_provider.signing_key.public_key()
    secrets = {
        "pem": _public_pem(fake_provider),
        "pem-without-newline": _public_pem(fake_provider).rstrip(b"\n"),
        "der": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwk-json": json.dumps(fake_provider.public_jwk).encode(),
        "modulus": fake_provider.public_jwk["n"].encode(),
    }
    spec = oidc_spec(id_token_algs=("RS256", "HS256"))
    token = forge({"alg": "HS256", "kid": "key-1", "typ": "JWT"}, claims(fake_provider), hmac_key=secrets[secret])
    refused(spec, token, "algorithm .* is not accepted")


def test_an_rsa_key_never_serves_an_hmac_algorithm(fake_provider):
    """The second lock on the same door: even asked directly, the key lookup finds no key
    of the provider's JWKS usable for HS256 (or for another family's algorithm)."""
    url = f"{fake_provider.url}/jwks"
    assert oidc.signing_key(url, "key-1", "RS256")
    for alg in ("HS256", "HS512", "ES256", "EdDSA", "none"):
        with pytest.raises(IdTokenError, match="no signing key"):
            oidc.signing_key(url, "key-1", alg)


def test_only_asymmetric_signing_keys_are_candidates():
    rsa = {"kty": "RSA", "kid": "a", "n": "AQAB", "e": "AQAB"}
    jwks = {"keys": [{"kty": "oct", "kid": "b", "k": "c2VjcmV0"}, {**rsa, "use": "enc"}, rsa, "junk"]}
    assert oidc._usable_entries(jwks) == [rsa]


def test_algorithm_outside_the_advertised_list_is_rejected(oidc_spec, fake_provider):
    """RS384 with a published key that names no alg: only the advertised list decides."""
    private = fake_provider.add_signing_key("key-2")
    fake_provider.extra_jwks[-1].pop("alg")
    token = fake_provider.id_token(nonce=NONCE, key=private, algorithm="RS384", headers={"kid": "key-2"})
    refused(oidc_spec(id_token_algs=("RS256",)), token, "algorithm .* is not accepted")
    # The same token passes once the provider advertises RS384: the list is what refused it.
    assert verify(oidc_spec(id_token_algs=("RS256", "RS384")), token)["sub"] == "user-1"


def test_alg_of_another_key_family_is_rejected(oidc_spec, fake_provider):
    """ES256 in the header, RSA key in the JWKS under that kid: no key of that family."""
    spec = oidc_spec(id_token_algs=("RS256", "ES256"))
    token = forge({"alg": "ES256", "kid": "key-1"}, claims(fake_provider))
    refused(spec, token, "no signing key")


def test_key_embedded_in_the_header_is_ignored(spec, fake_provider):
    """`jwk` / `jku` / `x5u` headers name the attacker's own key: never trusted."""
    attacker, attacker_jwk = _rsa_jwk("key-1")
    token = fake_provider.id_token(
        nonce=NONCE,
        key=attacker,
        headers={"jwk": attacker_jwk, "jku": "https://evil.test/jwks", "x5u": "https://evil.test/cert"},
    )
    refused(spec, token, "signature")


def test_malformed_token_is_rejected(spec):
    for token in ("", "a.b", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30", "x" * 5000):
        with pytest.raises(IdTokenError):
            verify(spec, token)


# -- issuer -----------------------------------------------------------------------------------------


def test_issuer_with_a_trailing_slash_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce=NONCE, iss=fake_provider.issuer + "/"), "issuer")


def test_issuer_without_the_configured_trailing_slash_is_rejected(oidc_spec, fake_provider):
    spec = oidc_spec(issuer=fake_provider.issuer + "/")
    refused(spec, fake_provider.id_token(nonce=NONCE), "issuer")


@pytest.mark.parametrize("iss", ["https://evil.test", "HTTP://127.0.0.1", None])
def test_other_or_missing_issuer_is_rejected(spec, fake_provider, iss):
    token = fake_provider.id_token(nonce=NONCE, iss=DROP if iss is None else iss)
    refused(spec, token, "issuer|iss")


# -- audience and authorized party ------------------------------------------------------------------


def test_missing_aud_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce=NONCE, aud=DROP), "aud")


def test_wrong_aud_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce=NONCE, aud="another-client"), "audience")


def test_aud_array_with_an_extra_untrusted_audience_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce=NONCE, aud=[CLIENT_ID, "another-client"]), "untrusted audience")


def test_aud_array_of_only_us_is_accepted(spec, fake_provider):
    assert verify(spec, fake_provider.id_token(nonce=NONCE, aud=[CLIENT_ID]))["aud"] == [CLIENT_ID]


def test_azp_naming_another_client_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce=NONCE, azp="another-client"), "azp")


def test_azp_naming_us_is_accepted(spec, fake_provider):
    assert verify(spec, fake_provider.id_token(nonce=NONCE, aud=[CLIENT_ID], azp=CLIENT_ID))["azp"] == CLIENT_ID


# -- time -------------------------------------------------------------------------------------------


def test_exp_past_the_leeway_is_rejected(spec, fake_provider):
    now = int(time.time())
    refused(spec, fake_provider.id_token(nonce=NONCE, iat=now - 600, exp=now - LEEWAY - 5), "expired")


def test_exp_within_the_leeway_is_accepted(spec, fake_provider):
    now = int(time.time())
    assert verify(spec, fake_provider.id_token(nonce=NONCE, iat=now - 600, exp=now - LEEWAY + 10))


def test_missing_exp_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce=NONCE, exp=DROP), "exp")


def test_missing_iat_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce=NONCE, iat=DROP), "iat")


@pytest.mark.parametrize("ahead", [LEEWAY + 10, 3600, 10**9])
def test_iat_far_in_the_future_is_rejected(spec, fake_provider, ahead):
    now = int(time.time())
    refused(spec, fake_provider.id_token(nonce=NONCE, iat=now + ahead, exp=now + ahead + 600), "iat|not valid yet")


def test_iat_that_is_not_a_number_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce=NONCE, iat="yesterday"), "iat|rejected")


def test_nbf_in_the_future_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce=NONCE, nbf=int(time.time()) + 3600), "not valid yet")


def test_missing_sub_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce=NONCE, sub=DROP), "sub")


# -- nonce ------------------------------------------------------------------------------------------


def test_missing_nonce_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce=None), "nonce")


def test_wrong_nonce_is_rejected(spec, fake_provider):
    refused(spec, fake_provider.id_token(nonce="n-1"), "nonce")


@pytest.mark.parametrize("nonce", [0, ["n-0"], {"n": "n-0"}])
def test_nonce_of_the_wrong_type_is_rejected(spec, fake_provider, nonce):
    refused(spec, fake_provider.id_token(nonce=nonce), "nonce")


@pytest.mark.django_db(transaction=True)
def test_replayed_nonce_is_rejected_over_the_whole_flow(stack, fake_provider, fake_provider_row):
    """The id_token of a completed consent, presented again for another connection (same
    user, same provider, still unexpired, correctly signed): the nonce belongs to the
    first connection only, so the second fails with invalid_id_token and stores nothing."""
    key = stack.key()
    first = start_connection(stack, key)
    first_params = auth_params(first["authUrl"])
    first_id_token = fake_provider.id_token(nonce=first_params["nonce"])
    code = fake_provider.issue_code(
        code_challenge=first_params["code_challenge"], nonce=first_params["nonce"], id_token=first_id_token
    )
    assert (
        "status=success"
        in stack.callback(code=code, state=first_params["state"], iss=fake_provider.issuer).headers["Location"]
    )

    second = start_connection(stack, key)
    params = auth_params(second["authUrl"])
    assert params["nonce"] != first_params["nonce"]
    code = fake_provider.issue_code(
        code_challenge=params["code_challenge"], nonce=params["nonce"], id_token=first_id_token
    )
    response = stack.callback(code=code, state=params["state"], iss=fake_provider.issuer)
    assert response.status_code == 302
    assert "status=error&error=invalid_id_token" in response.headers["Location"]
    row = Connection.objects.get(pk=second["connection_id"])
    assert row.status == "failed" and row.access_token_enc == row.refresh_token_enc == row.id_token_enc == ""
    assert Connection.objects.get(pk=first["connection_id"]).status == "active"


@pytest.mark.django_db(transaction=True)
def test_each_rejection_fails_the_consent_over_http(stack, fake_provider, fake_provider_row):
    """A sample of the battery end to end: the callback refuses, the connection fails, no
    token is stored, and the agent's token call answers 409."""
    key = stack.key()
    impostor, _ = _rsa_jwk("key-1")
    now = int(time.time())
    makers = {
        "alg-none": lambda nonce: forge({"alg": "none", "kid": "key-1"}, claims(fake_provider, nonce=nonce)),
        "hs256-public-key": lambda nonce: forge(
            {"alg": "HS256", "kid": "key-1"}, claims(fake_provider, nonce=nonce), hmac_key=_public_pem(fake_provider)
        ),
        "other-key": lambda nonce: fake_provider.id_token(nonce=nonce, key=impostor),
        "iss-slash": lambda nonce: fake_provider.id_token(nonce=nonce, iss=fake_provider.issuer + "/"),
        "extra-aud": lambda nonce: fake_provider.id_token(nonce=nonce, aud=[CLIENT_ID, "x"]),
        "azp": lambda nonce: fake_provider.id_token(nonce=nonce, azp="x"),
        "expired": lambda nonce: fake_provider.id_token(nonce=nonce, iat=now - 900, exp=now - 300),
        "no-nonce": lambda nonce: fake_provider.id_token(),
    }
    for case, make in makers.items():
        started = start_connection(stack, key)
        params = auth_params(started["authUrl"])
        code = fake_provider.issue_code(
            code_challenge=params["code_challenge"], nonce=params["nonce"], id_token=make(params["nonce"])
        )
        response = stack.callback(code=code, state=params["state"], iss=fake_provider.issuer)
        assert "error=invalid_id_token" in response.headers["Location"], case
        row = Connection.objects.get(pk=started["connection_id"])
        assert row.status == "failed" and row.access_token_enc == "", case
        assert stack.call("GET", f"/v1/token/{row.id}", key).status_code == 409, case
    # The control: the same flow with an honest token succeeds.
    assert connect(stack, fake_provider, key)


def test_pyjwt_still_refuses_alg_none_on_its_own():
    """Defence in depth: even the library under the broker refuses an unsigned token when
    given a key, so a future refactor of the algorithm check cannot silently open it."""
    token = forge({"alg": "none"}, {"sub": "x"})
    with pytest.raises(jwt.PyJWTError):
        jwt.decode(token, "irrelevant", algorithms=["RS256"])


# -- a refreshed id_token: same identity, any spelling of the audience ------------------------------


def test_refreshed_id_token_may_spell_the_audience_as_an_array(spec, fake_provider):
    expected = {"iss": fake_provider.issuer, "sub": "user-1", "aud": CLIENT_ID}
    token = fake_provider.id_token(aud=[CLIENT_ID])
    assert oidc.verify_id_token(spec, HOOKS, token, nonce_digest=None, expected=expected)["sub"] == "user-1"


@pytest.mark.parametrize("claim, value", [("sub", "user-2"), ("iss", "https://other.example")])
def test_refreshed_id_token_for_another_identity_is_rejected(spec, fake_provider, claim, value):
    expected = {"iss": fake_provider.issuer, "sub": "user-1", "aud": CLIENT_ID, claim: value}
    with pytest.raises(IdTokenError, match=f"changed its {claim}"):
        oidc.verify_id_token(spec, HOOKS, fake_provider.id_token(), nonce_digest=None, expected=expected)
