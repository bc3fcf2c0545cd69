"""OIDC discovery and JWKS with a two-level cache (process memory, then a persistent
DocumentStore the application installs with `use_store`: the broker's keeps them in the
database), and id_token verification. Framework-free: it reads only the settings named here.

The cache honours Cache-Control max-age (clamped to [60 s, 24 h], one hour when absent).
When a refetch fails, the last good document keeps being used: verification never
fails open, and never fails merely because the provider's JWKS endpoint blinked.
An unknown `kid` triggers one JWKS refetch, at most once per cooldown per URL, so a
flood of random kids cannot hammer the provider or evict good keys.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import jwt
import requests
from django.conf import settings

from broker_app.crypto import digest
from broker_app.oauth.client import http
from broker_app.oauth.errors import IdTokenError

logger = logging.getLogger(__name__)

DEFAULT_TTL = 3600
MIN_TTL, MAX_TTL = 60, 86400
KID_REFETCH_COOLDOWN = 60.0
ASYMMETRIC_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

_memory: dict[str, tuple[float, dict[str, Any]]] = {}
_last_forced: dict[str, float] = {}
_lock = threading.Lock()


class DocumentUnavailable(Exception):
    """The document could not be fetched and no cached copy exists."""


class DocumentStore(Protocol):
    """Where fetched documents outlive the process (shared by every process of the app)."""

    def load(self, url: str) -> tuple[dict[str, Any], datetime] | None:
        """(body, expires_at) of the stored copy, or None."""

    def save(self, url: str, body: dict[str, Any], *, fetched_at: datetime, expires_at: datetime) -> None: ...


_persistent: DocumentStore | None = None


def use_store(store: DocumentStore | None) -> None:
    """Install the persistent store (None: process memory only)."""
    global _persistent
    _persistent = store


def _load(url: str) -> tuple[dict[str, Any], datetime] | None:
    return _persistent.load(url) if _persistent is not None else None


def _max_age(response: requests.Response) -> int:
    header = response.headers.get("Cache-Control", "")
    if "no-store" in header or "no-cache" in header:
        return MIN_TTL
    match = re.search(r"max-age=(\d+)", header)
    ttl = int(match.group(1)) if match else DEFAULT_TTL
    return max(MIN_TTL, min(MAX_TTL, ttl))


def _store(url: str, body: dict[str, Any], ttl: int) -> None:
    now = datetime.now(UTC)
    with _lock:
        _memory[url] = (time.monotonic() + ttl, body)
    if _persistent is not None:
        _persistent.save(url, body, fetched_at=now, expires_at=now + timedelta(seconds=ttl))


def _fetch(url: str, require_list: str | None = None) -> tuple[dict[str, Any], int]:
    try:
        response = http().get(
            url,
            timeout=(3, settings.PROVIDER_HTTP_TIMEOUT),
            headers={"Accept": "application/json"},
            allow_redirects=False,
        )
        response.raise_for_status()
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise DocumentUnavailable(f"could not fetch {url}: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise DocumentUnavailable(f"{url} did not return a JSON object")
    if require_list and not isinstance(body.get(require_list), list):
        # A broken answer ({"keys": null}) must not replace the good copy we hold.
        raise DocumentUnavailable(f"{url} did not return a list of {require_list}")
    return body, _max_age(response)


def get_document(url: str, *, force: bool = False, require_list: str | None = None) -> dict[str, Any]:
    """The JSON document at `url`, from cache when fresh; stale cache when the fetch fails
    (or answers a document without the `require_list` list: a JWKS without `keys`)."""
    now_mono = time.monotonic()
    cached = _memory.get(url)
    if cached and not force and cached[0] > now_mono:
        return cached[1]
    stale: dict[str, Any] | None = cached[1] if cached else None
    if not force:
        stored = _load(url)
        if stored is not None:
            body, expires_at = stored
            remaining = (expires_at - datetime.now(UTC)).total_seconds()
            if remaining > 0:
                with _lock:
                    _memory[url] = (now_mono + remaining, body)
                return body
            stale = body
    elif stale is None:
        stored = _load(url)
        stale = stored[0] if stored else None
    try:
        body, ttl = _fetch(url, require_list)
    except DocumentUnavailable:
        if stale is not None:
            logger.warning("using cached copy, refetch failed", extra={"url": url})
            with _lock:
                _memory[url] = (now_mono + MIN_TTL, stale)
            return stale
        raise
    _store(url, body, ttl)
    return body


def discovery(url: str) -> dict[str, Any]:
    return get_document(url)


def callback_iss_required(spec) -> bool:
    """RFC 9207 §2.4: whether an authorization response without `iss` must be rejected:
    the provider's discovery document advertises `authorization_response_iss_parameter_supported`
    and its catalog template does not mark it `callback_iss_unsent`. A discovery document
    that cannot be read (no cached copy either) does not make `iss` required: an `iss` that
    is present is still checked."""
    if not spec.discovery_url or spec.callback_iss_unsent:
        return False
    try:
        document = discovery(spec.discovery_url)
    except DocumentUnavailable:
        logger.warning("discovery unavailable: RFC 9207 iss requirement unknown", extra={"provider": spec.name})
        return False
    return document.get("authorization_response_iss_parameter_supported") is True


# Which key type (and curve) may verify which JWS algorithm: a key is only ever used with
# an algorithm of its own family, so an RSA key can never act as an HMAC secret.
_KTY_FOR_ALG_PREFIX = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_CRV_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "EdDSA": ("Ed25519", "Ed448")}


def _usable_entries(jwks: dict[str, Any]) -> list[dict[str, Any]]:
    """The JWKS entries that may verify signatures: asymmetric (never `oct`), meant for
    signing. Entries PyJWT cannot use (unknown kty, alg, crv) are dropped later, one by one."""
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(entries, list):
        return []
    return [
        entry
        for entry in entries
        if isinstance(entry, dict) and entry.get("kty") in ("RSA", "EC", "OKP") and entry.get("use", "sig") == "sig"
    ]


def _key_for(entry: dict[str, Any], alg: str) -> jwt.PyJWK | None:
    """The entry as a verification key for `alg`, or None when it cannot serve that alg."""
    if entry.get("alg") not in (None, alg):
        return None
    if _KTY_FOR_ALG_PREFIX.get(alg[:2]) != entry.get("kty"):
        return None
    curves = _CRV_FOR_ALG.get(alg)
    if curves is not None and entry.get("crv") not in (curves if isinstance(curves, tuple) else (curves,)):
        return None
    try:
        return jwt.PyJWK(entry, algorithm=alg)
    except (jwt.exceptions.PyJWKError, jwt.exceptions.InvalidKeyError, ValueError, TypeError, KeyError):
        return None  # unknown kty / alg / crv, or a broken key: skip it, keep the rest


def _matching_keys(jwks: dict[str, Any], kid: str, alg: str) -> list[jwt.PyJWK]:
    entries = _usable_entries(jwks)
    if kid:
        entries = [entry for entry in entries if entry.get("kid") == kid]
    keys = [key for key in (_key_for(entry, alg) for entry in entries) if key is not None]
    # Without a kid the choice must be unambiguous.
    return keys if kid or len(keys) == 1 else []


def signing_key(jwks_uri: str, kid: str, alg: str) -> jwt.PyJWK:
    """The provider's key for this kid and alg. An unknown kid causes one forced JWKS refetch,
    at most once per KID_REFETCH_COOLDOWN per URL in this process: a flood of random kids
    costs the provider one request and evicts nothing (the cached set is only replaced by
    a successful fetch, which is the provider's current truth)."""
    keys = _matching_keys(get_document(jwks_uri, require_list="keys"), kid, alg)
    if not keys:
        now = time.monotonic()
        with _lock:
            last = _last_forced.get(jwks_uri)
            allowed = last is None or now - last >= KID_REFETCH_COOLDOWN
            if allowed:
                _last_forced[jwks_uri] = now
        if allowed:
            keys = _matching_keys(get_document(jwks_uri, force=True, require_list="keys"), kid, alg)
    if not keys:
        raise IdTokenError("no signing key matches the token's kid and algorithm")
    return keys[0]


def verify_id_token(
    spec, hooks, id_token: str, *, nonce_digest: str | None, expected: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Verify signature (JWKS), alg, iss, aud, azp, exp, iat and nonce; return the claims.

    `expected` pins claims that must not change (a refreshed id_token keeps iss, sub, aud).
    """
    try:
        header = jwt.get_unverified_header(id_token)
        unverified = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise IdTokenError("id_token is malformed") from None
    alg = header.get("alg")
    # Only asymmetric algorithms the provider advertises: never `none`, never HS256 (which
    # would let anyone holding the provider's public key mint tokens).
    allowed_algs = set(spec.id_token_algs) & ASYMMETRIC_ALGS
    if not isinstance(alg, str) or alg not in allowed_algs:
        raise IdTokenError(f"id_token algorithm {str(alg)[:16]!r} is not accepted")
    issuer = hooks.expected_issuer(spec, unverified)
    if not issuer or "{" in issuer:
        raise IdTokenError("provider has no usable issuer to check the id_token against")
    if not spec.jwks_uri:
        raise IdTokenError("provider has no JWKS URI")
    kid = header.get("kid") or ""
    if not isinstance(kid, str):
        raise IdTokenError("id_token kid is malformed")
    key = signing_key(spec.jwks_uri, kid, alg)
    leeway = settings.ID_TOKEN_LEEWAY_SECONDS
    try:
        claims = jwt.decode(
            id_token,
            key.key,
            algorithms=[alg],
            audience=spec.client_id,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise IdTokenError("id_token has expired") from None
    except jwt.InvalidAudienceError:
        raise IdTokenError("id_token audience is not this client") from None
    except jwt.InvalidIssuerError:
        raise IdTokenError("id_token issuer does not match the provider") from None
    except jwt.MissingRequiredClaimError as exc:
        raise IdTokenError(f"id_token lacks the {exc.claim} claim") from None
    except jwt.ImmatureSignatureError:
        raise IdTokenError("id_token is not valid yet") from None
    except jwt.InvalidSignatureError:
        raise IdTokenError("id_token signature is invalid") from None
    except jwt.PyJWTError as exc:
        raise IdTokenError(f"id_token rejected ({type(exc).__name__})") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if any(aud != spec.client_id for aud in audiences):
        raise IdTokenError("id_token carries an untrusted audience")
    if "azp" in claims and claims["azp"] != spec.client_id:
        raise IdTokenError("id_token azp is not this client")
    if not isinstance(claims["iat"], (int, float)) or claims["iat"] > time.time() + leeway:
        raise IdTokenError("id_token iat is in the future")
    if nonce_digest is not None:
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(digest(nonce), nonce_digest):
            raise IdTokenError("id_token nonce does not match")
    if expected:
        for claim, value in expected.items():
            if value is None:
                continue
            if claim == "aud":  # "a" and ["a"] name the same audience
                same = set(audiences) == set(value if isinstance(value, list) else [value])
            else:
                same = claims.get(claim) == value
            if not same:
                raise IdTokenError(f"refreshed id_token changed its {claim}")
    return claims


def cache_clear() -> None:
    """Forget the in-process cache (tests, and `manage.py` after editing providers)."""
    with _lock:
        _memory.clear()
        _last_forced.clear()
