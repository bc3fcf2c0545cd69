"""Signed JWTs an app presents instead of a user's grant (issue 18).

- GitHub App: a JWT (RS256; iss = the app's client id or app id, iat = now - 60 s against
  clock drift, exp at most 10 minutes after now) presented as `Authorization: Bearer` to
  `POST /app/installations/{id}/access_tokens` for a one-hour installation token.
  https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app
- RFC 7523 JWT bearer grant, as Google service accounts use it: iss = the service account's
  email, scope (space-separated), aud = the token endpoint, iat = now, exp = iat + 1 hour at
  most, sub = a user to impersonate (optional), signed RS256.
  https://developers.google.com/identity/protocols/oauth2/service-account#authorizingrequests

Private keys are PEM RSA keys of at least 2048 bits. Errors name the problem, never the key.
"""

from __future__ import annotations

import time

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ALGORITHM = "RS256"
MAX_KEY_CHARS = 16384
MIN_KEY_BITS = 2048
GITHUB_BACKDATE_SECONDS = 60  # GitHub: "set this 60 seconds in the past to allow for clock drift"
GITHUB_LIFETIME_SECONDS = 540  # exp - now; GitHub refuses more than 10 minutes
JWT_BEARER_LIFETIME_SECONDS = 3600  # Google: "a maximum of 1 hour after the issued time"


class PrivateKeyError(ValueError):
    """The private key cannot be used. The message says why, never what the key is."""


def load_private_key(pem: object) -> rsa.RSAPrivateKey:
    """Parse a PEM RSA private key (PKCS#1 or PKCS#8, unencrypted, ≥ 2048 bits). A key
    copied from a JSON file with its newlines escaped (`\\n`) is accepted too."""
    if not isinstance(pem, str) or not pem.strip():
        raise PrivateKeyError("the private key is empty")
    if len(pem) > MAX_KEY_CHARS:
        raise PrivateKeyError(f"the private key is longer than {MAX_KEY_CHARS} characters")
    text = pem.strip()
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    if "-----BEGIN" not in text or "PRIVATE KEY-----" not in text:
        raise PrivateKeyError("the private key is not a PEM private key (-----BEGIN … PRIVATE KEY-----)")
    try:
        key = serialization.load_pem_private_key(text.encode("ascii", "strict"), password=None)
    except TypeError:
        raise PrivateKeyError("the private key is encrypted with a passphrase; give it unencrypted") from None
    except (ValueError, UnicodeError, UnsupportedAlgorithm):
        raise PrivateKeyError("the private key is not a valid PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PrivateKeyError("the private key is not an RSA key (RS256 needs one)")
    if key.key_size < MIN_KEY_BITS:
        raise PrivateKeyError(f"the private key has {key.key_size} bits; at least {MIN_KEY_BITS} are needed")
    return key


def normalised_pem(pem: str) -> str:
    """The key as stored: PKCS#8 PEM, whatever form it was given in (validated)."""
    key = load_private_key(pem)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def github_app_jwt(*, private_key_pem: str, issuer: str, now: float | None = None) -> str:
    """The app's JWT for GitHub's REST API (valid 10 minutes at most)."""
    issued = int(now if now is not None else time.time())
    claims = {"iat": issued - GITHUB_BACKDATE_SECONDS, "exp": issued + GITHUB_LIFETIME_SECONDS, "iss": issuer}
    return jwt.encode(claims, load_private_key(private_key_pem), algorithm=ALGORITHM, headers={"typ": "JWT"})


def jwt_bearer_assertion(
    *,
    private_key_pem: str,
    issuer: str,
    audience: str,
    scopes: list[str] | tuple[str, ...],
    subject: str | None = None,
    now: float | None = None,
) -> str:
    """An RFC 7523 §2.1 assertion, with Google's `scope` claim."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, object] = {
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "exp": issued + JWT_BEARER_LIFETIME_SECONDS,
    }
    if scopes:
        claims["scope"] = " ".join(scopes)
    if subject:
        claims["sub"] = subject
    return jwt.encode(claims, load_private_key(private_key_pem), algorithm=ALGORITHM, headers={"typ": "JWT"})
