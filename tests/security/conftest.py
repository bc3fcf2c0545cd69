"""Helpers of the security suite: forged JWTs (alg none, HS256 with a public key …) and a
ProviderSpec pointed at the fake provider, for id_token checks below the HTTP layer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from fake_provider import CLIENT_ID


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def forge(header: dict[str, Any], payload: dict[str, Any], *, hmac_key: bytes | None = None) -> str:
    """A JWT built by hand: PyJWT refuses to make the malicious ones we need."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims(fake, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload = {"iss": fake.issuer, "sub": "user-1", "aud": CLIENT_ID, "iat": now, "exp": now + 600, "nonce": "n-0"}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


@pytest.fixture
def oidc_spec(fake_provider):
    """A resolved provider spec for the fake provider, and the module under test."""
    from broker_app.providers.spec import ProviderSpec

    def build(**overrides: Any) -> ProviderSpec:
        values = dict(
            key="oidc",
            name="fake",
            provider_id="p",
            display_name="Fake",
            client_id=CLIENT_ID,
            client_secret=None,
            authorize_url=f"{fake_provider.url}/authorize",
            token_url=f"{fake_provider.url}/token",
            issuer=fake_provider.issuer,
            jwks_uri=f"{fake_provider.url}/jwks",
            oidc=True,
            id_token_algs=("RS256",),
        )
        values.update(overrides)
        return ProviderSpec(**values)

    return build
