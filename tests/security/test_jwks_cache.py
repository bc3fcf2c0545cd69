"""The provider's keys and discovery document: fetched over HTTP from the fake provider,
cached in process memory and persistently in PostgreSQL (CachedDocument), for as long as
Cache-Control allows. Key rotation costs one refetch; a flood of random kids cannot hammer
the provider or evict good keys; junk entries in a JWKS are skipped; a JWKS endpoint that is
down never turns verification off (fail closed, but keep using the keys we have)."""

from __future__ import annotations

import secrets
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from fake_provider import _rsa_jwk

from broker_app.crypto import digest
from broker_app.models import CachedDocument
from broker_app.oauth import oidc
from broker_app.oauth.errors import IdTokenError
from broker_app.providers.hooks import ProviderHooks
from broker_app.providers.registry import resolve
from tests.security.conftest import claims, forge

pytestmark = pytest.mark.django_db

NONCE = "n-0"


def verify(spec, token: str) -> dict:
    return oidc.verify_id_token(spec, ProviderHooks(), token, nonce_digest=digest(NONCE))


@pytest.fixture
def spec(oidc_spec):
    return oidc_spec()


def jwks_url(fake) -> str:
    return f"{fake.url}/jwks"


def restart_process(expire: bool = False) -> None:
    """What a new worker process sees: an empty memory cache; `expire` also lets the
    persistent copy's Cache-Control lifetime run out."""
    oidc.cache_clear()
    if expire:
        CachedDocument.objects.update(expires_at=timezone.now() - timedelta(seconds=1))


# -- key rotation and kid floods ---------------------------------------------------------------


def test_unknown_kid_triggers_exactly_one_refetch_then_succeeds(spec, fake_provider):
    assert verify(spec, fake_provider.id_token(nonce=NONCE))
    assert fake_provider.jwks_calls == 1
    rotated = fake_provider.add_signing_key("key-2")  # the provider rotates its keys
    token = fake_provider.id_token(nonce=NONCE, key=rotated, headers={"kid": "key-2"})
    assert verify(spec, token)["sub"] == "user-1"
    assert fake_provider.jwks_calls == 2
    # The refetched set is cached: more key-2 and key-1 tokens cost nothing.
    assert verify(spec, token) and verify(spec, fake_provider.id_token(nonce=NONCE))
    assert fake_provider.jwks_calls == 2


def test_flood_of_random_kids_hits_the_cooldown_and_keeps_the_cached_keys(spec, fake_provider, monkeypatch):
    assert verify(spec, fake_provider.id_token(nonce=NONCE))
    for _ in range(50):
        token = fake_provider.id_token(nonce=NONCE, headers={"kid": secrets.token_hex(8)})
        with pytest.raises(IdTokenError, match="no signing key"):
            verify(spec, token)
    # One refetch for the whole flood (the first unknown kid), then the cooldown holds.
    assert fake_provider.jwks_calls == 2
    # The good key is still cached and still works, without another request.
    assert verify(spec, fake_provider.id_token(nonce=NONCE))["sub"] == "user-1"
    assert fake_provider.jwks_calls == 2
    # Once the cooldown has passed an unknown kid may refetch again: once.
    monkeypatch.setattr(oidc, "KID_REFETCH_COOLDOWN", 0.2)
    time.sleep(0.25)
    for _ in range(5):
        with pytest.raises(IdTokenError):
            verify(spec, fake_provider.id_token(nonce=NONCE, headers={"kid": secrets.token_hex(8)}))
    assert fake_provider.jwks_calls == 3


def test_kid_flood_while_the_jwks_endpoint_fails_keeps_the_cached_keys(spec, fake_provider):
    assert verify(spec, fake_provider.id_token(nonce=NONCE))
    fake_provider.jwks_status = 500
    for _ in range(20):
        with pytest.raises(IdTokenError):
            verify(spec, fake_provider.id_token(nonce=NONCE, headers={"kid": secrets.token_hex(8)}))
    assert fake_provider.jwks_calls == 2
    assert verify(spec, fake_provider.id_token(nonce=NONCE))["sub"] == "user-1"
    # The persistent copy still holds the provider's key.
    stored = CachedDocument.objects.get(url=jwks_url(fake_provider)).body
    assert [key["kid"] for key in stored["keys"]] == ["key-1"]


UNUSABLE = [
    "not-a-dict",
    {"kid": "no-kty"},
    {"kty": "XYZ", "kid": "unknown-kty", "n": "AQAB", "e": "AQAB"},
    {"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},
    {"kty": "EC", "kid": "unknown-crv", "crv": "P-999", "x": "AAAA", "y": "AAAA"},
    {"kty": "EC", "kid": "broken-ec", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
    {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": "AAAA"},
    {"kty": "RSA", "kid": "broken-rsa", "n": "!!!", "e": "AQAB"},
    {"kty": "RSA", "kid": "key-1", "alg": "RS999", "n": "AQAB", "e": "AQAB"},  # same kid, unknown alg
    {"kty": "RSA", "kid": "key-1", "use": "enc", "n": "AQAB", "e": "AQAB"},  # same kid, encryption key
]


def test_jwks_with_unusable_keys_still_works(oidc_spec, fake_provider):
    spec = oidc_spec(id_token_algs=("RS256", "HS256"))  # HS256 is never honoured, advertised or not
    fake_provider.publish_primary_key = False
    fake_provider.extra_jwks = [*UNUSABLE, fake_provider.public_jwk]
    assert verify(spec, fake_provider.id_token(nonce=NONCE))["sub"] == "user-1"
    # Tokens pointing at the junk entries are refused cleanly (never a crash, never accepted).
    for entry in UNUSABLE:
        if isinstance(entry, dict) and entry.get("kid") not in (None, "key-1"):
            with pytest.raises(IdTokenError):
                verify(spec, fake_provider.id_token(nonce=NONCE, headers={"kid": entry["kid"]}))
    # The symmetric entry's secret does not make an HS256 token valid.
    token = forge({"alg": "HS256", "kid": "symmetric"}, claims(fake_provider), hmac_key=b"secret-secret-secret-secret")
    with pytest.raises(IdTokenError, match="algorithm"):
        verify(spec, token)


@pytest.mark.parametrize("body", [{"keys": "nope"}, {"keys": None}, {"keys": {"kid": "key-1"}}, {}])
def test_jwks_that_is_not_a_key_set_is_refused_not_crashed(spec, fake_provider, monkeypatch, body):
    monkeypatch.setattr(fake_provider, "jwks", lambda: body)
    with pytest.raises((IdTokenError, oidc.DocumentUnavailable)):
        verify(spec, fake_provider.id_token(nonce=NONCE))
    assert not CachedDocument.objects.exists()  # nothing broken is cached


@pytest.mark.parametrize("body", [{"keys": None}, {"error": "oops"}, {"keys": "x"}])
def test_broken_jwks_answer_does_not_replace_the_cached_keys(spec, fake_provider, monkeypatch, body):
    assert verify(spec, fake_provider.id_token(nonce=NONCE))
    monkeypatch.setattr(fake_provider, "jwks", lambda: body)
    with pytest.raises(IdTokenError):  # an unknown kid forces a refetch, which answers junk
        verify(spec, fake_provider.id_token(nonce=NONCE, headers={"kid": "key-9"}))
    assert fake_provider.jwks_calls == 2
    restart_process()
    assert verify(spec, fake_provider.id_token(nonce=NONCE))["sub"] == "user-1"
    assert CachedDocument.objects.get(url=jwks_url(fake_provider)).body["keys"][0]["kid"] == "key-1"


# -- JWKS endpoint down ------------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["500", "404", "unreachable", "not-json"])
def test_jwks_endpoint_down_uses_the_cached_keys_and_never_fails_open(
    spec, fake_provider, oidc_spec, monkeypatch, outage
):
    assert verify(spec, fake_provider.id_token(nonce=NONCE))
    restart_process(expire=True)  # the cached copy is stale: a refetch is due
    if outage == "unreachable":
        spec = oidc_spec(jwks_uri="http://127.0.0.1:9/jwks")
        CachedDocument.objects.filter(url=jwks_url(fake_provider)).update(url=spec.jwks_uri)
    elif outage == "not-json":
        monkeypatch.setattr(fake_provider, "jwks", lambda: ["not", "a", "key", "set"])
    else:
        fake_provider.jwks_status = int(outage)
    # The provider's own key still verifies (stale cache beats no cache) …
    assert verify(spec, fake_provider.id_token(nonce=NONCE))["sub"] == "user-1"
    # … and nothing else does: other keys, unknown kids, alg none.
    impostor, _ = _rsa_jwk("key-1")
    for token in (
        fake_provider.id_token(nonce=NONCE, key=impostor),
        fake_provider.id_token(nonce=NONCE, headers={"kid": "key-9"}),
    ):
        with pytest.raises(IdTokenError):
            verify(spec, token)
    # The failing endpoint is not hammered: the stale copy is reused for a while.
    calls = fake_provider.jwks_calls
    for _ in range(10):
        verify(spec, fake_provider.id_token(nonce=NONCE))
    assert fake_provider.jwks_calls == calls


def test_jwks_endpoint_down_and_nothing_cached_refuses(spec, fake_provider):
    fake_provider.jwks_status = 503
    with pytest.raises((IdTokenError, oidc.DocumentUnavailable)):
        verify(spec, fake_provider.id_token(nonce=NONCE))
    assert not CachedDocument.objects.exists()
    # Back up: works at once (a failure is not cached).
    fake_provider.jwks_status = 200
    assert verify(spec, fake_provider.id_token(nonce=NONCE))


# -- persistent cache, Cache-Control --------------------------------------------------------------


def test_jwks_cache_is_persistent_and_survives_a_process_cache_clear(spec, fake_provider):
    assert verify(spec, fake_provider.id_token(nonce=NONCE))
    row = CachedDocument.objects.get(url=jwks_url(fake_provider))
    assert row.body == fake_provider.jwks()
    restart_process()
    assert verify(spec, fake_provider.id_token(nonce=NONCE))
    assert fake_provider.jwks_calls == 1  # served from PostgreSQL, not refetched
    restart_process(expire=True)
    assert verify(spec, fake_provider.id_token(nonce=NONCE))
    assert fake_provider.jwks_calls == 2  # expired: refetched and stored again
    assert CachedDocument.objects.get(url=jwks_url(fake_provider)).expires_at > timezone.now()


def test_discovery_is_cached_persistently(fake_provider, fake_provider_row):
    spec, _ = resolve(fake_provider_row)
    assert spec.jwks_uri == jwks_url(fake_provider) and fake_provider.discovery_calls == 1
    restart_process()
    assert resolve(fake_provider_row)[0].token_url == f"{fake_provider.url}/token"
    assert fake_provider.discovery_calls == 1
    restart_process(expire=True)
    resolve(fake_provider_row)
    assert fake_provider.discovery_calls == 2


def test_discovery_outage_uses_the_cached_document(fake_provider, fake_provider_row, monkeypatch):
    resolve(fake_provider_row)
    restart_process(expire=True)

    class Down:
        def get(self, *args, **kwargs):
            raise oidc.requests.ConnectionError("down")

    monkeypatch.setattr(oidc, "http", lambda: Down())
    assert resolve(fake_provider_row)[0].issuer == fake_provider.url


@pytest.mark.parametrize(
    "header, ttl",
    [
        ("max-age=300", 300),
        ("public, max-age=120, must-revalidate", 120),
        ("s-maxage=9000, max-age=200", 200),
        ("max-age=5", oidc.MIN_TTL),  # clamped: at least a minute, or a provider could make us refetch per call
        ("max-age=99999999", oidc.MAX_TTL),  # at most a day: a rotated key is seen within a day
        ("no-store", oidc.MIN_TTL),
        ("no-cache", oidc.MIN_TTL),
        ("", oidc.DEFAULT_TTL),
        ("max-age=abc", oidc.DEFAULT_TTL),
    ],
)
def test_cache_lifetime_honours_cache_control(spec, fake_provider, header, ttl):
    fake_provider.jwks_cache_control = header
    assert verify(spec, fake_provider.id_token(nonce=NONCE))
    row = CachedDocument.objects.get(url=jwks_url(fake_provider))
    assert abs((row.expires_at - row.fetched_at).total_seconds() - ttl) < 1


def test_discovery_cache_lifetime_honours_cache_control(fake_provider, fake_provider_row):
    fake_provider.discovery_cache_control = "max-age=777"
    resolve(fake_provider_row)
    row = CachedDocument.objects.get(url=fake_provider.discovery_url)
    assert abs((row.expires_at - row.fetched_at).total_seconds() - 777) < 1


def test_memory_cache_expires_with_the_document(spec, fake_provider):
    """The in-process copy obeys the same lifetime: after max-age the next call refetches."""
    fake_provider.jwks_cache_control = "max-age=120"
    assert verify(spec, fake_provider.id_token(nonce=NONCE))
    deadline, body = oidc._memory[jwks_url(fake_provider)]
    assert 119 < deadline - time.monotonic() <= 120
    oidc._memory[jwks_url(fake_provider)] = (time.monotonic() - 1, body)  # 121 s later
    CachedDocument.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert verify(spec, fake_provider.id_token(nonce=NONCE))
    assert fake_provider.jwks_calls == 2


def test_redirects_are_not_followed_for_documents(spec, fake_provider, oidc_spec):
    """A JWKS URL that redirects elsewhere is not followed (the provider's keys come from
    the URL it published, not from wherever a redirect points)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"{fake_provider.url}/jwks")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = oidc_spec(jwks_uri=f"http://127.0.0.1:{server.server_address[1]}/jwks")
        with pytest.raises((IdTokenError, oidc.DocumentUnavailable)):
            verify(spec, fake_provider.id_token(nonce=NONCE))
        assert fake_provider.jwks_calls == 0
    finally:
        server.shutdown()
        server.server_close()
