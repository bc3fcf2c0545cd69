"""Hand-written GitHub App and Google service-account token endpoints (issue 18) that check
the app's JWT exactly as the providers document it, and answer as they do.

GitHub ("Generating a JSON Web Token (JWT) for a GitHub App"; "Authenticating as a GitHub App
installation"): `POST /app/installations/{id}/access_tokens` with `Authorization: Bearer
<JWT>`; the JWT is RS256 (header `alg`), signed by the app's private key (checked against
the registered public key), `iss` = the app's client id or app id, `iat` in the past
(at most 60 s back is what GitHub recommends: we accept ≤ 120 s), `exp` at most 10 minutes
after now and after `iat`. Answer 201 `{"token", "expires_at"}` (one hour);
401 `{"message": "A JSON web token could not be decoded"}` for a bad JWT; 404 for an unknown
installation.

Google ("Using OAuth 2.0 for Server to Server Applications", HTTP/REST): `POST /token` with
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`, no client
authentication; the JWT is `{"alg":"RS256","typ":"JWT"}`, `iss` = the service account's email,
`scope` space-separated, `aud` = the token endpoint's URL exactly, `iat` = now, `exp` at most
one hour after `iat`, optional `sub` (a user to impersonate). Answer `{"access_token",
"expires_in": 3599, "token_type": "Bearer"}`, or 400 `invalid_grant` ("Invalid JWT
Signature.", "Invalid JWT: Token must be a short-lived token …") / `unauthorized_client`
(a subject the account may not impersonate)."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_INSTALLATION_PATH = re.compile(r"^/app/installations/([0-9]+)/access_tokens$")


def new_key_pem(bits: int = 2048) -> tuple[str, Any]:
    """A fresh RSA private key as PKCS#1 PEM (what GitHub downloads) and its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    return pem, key.public_key()


@dataclass
class Seen:
    """One request as the fake saw it: the decoded JWT header and claims, and the verdict."""

    header: dict
    claims: dict
    verdict: str
    headers: dict = field(default_factory=dict)
    form: dict = field(default_factory=dict)
    raw: str = ""  # the JWT itself (the no-leak sweep searches for it)


class FakeAppProviders:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.app_keys: dict[str, Any] = {}  # GitHub: iss (client id or app id) -> public key
        self.installations: set[str] = set()
        self.service_accounts: dict[str, Any] = {}  # Google: client_email -> public key
        self.delegation: dict[str, set[str]] = {}  # client_email -> subjects it may impersonate
        self.seen: list[Seen] = []
        self.issued: list[str] = []
        self.status_override: int | None = None  # e.g. 503: the provider is down
        self.installation_lifetime = 3600
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def google_token_url(self) -> str:
        return f"{self.url}/token"

    def start(self) -> FakeAppProviders:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.app_keys.clear()
            self.installations.clear()
            self.service_accounts.clear()
            self.delegation.clear()
            self.seen.clear()
            self.issued.clear()
            self.status_override = None
            self.installation_lifetime = 3600

    # -- the checks ------------------------------------------------------------------------
    def _decode(self, token: str, keys: dict[str, Any], *, audience: str | None) -> tuple[dict, dict, str]:
        """(header, claims, verdict): "ok" or what is wrong, checked as the provider documents."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return {}, {}, "not_a_jwt"
        if header.get("alg") != "RS256":
            return header, claims, "alg"
        key = keys.get(str(claims.get("iss")))
        if key is None:
            return header, claims, "unknown_issuer"
        try:
            jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=audience,
                options={"require": ["iat", "exp", "iss"], "verify_aud": audience is not None, "verify_iat": False},
                leeway=0,
            )
        except jwt.InvalidSignatureError:
            return header, claims, "signature"
        except jwt.ExpiredSignatureError:
            return header, claims, "expired"
        except jwt.InvalidAudienceError:
            return header, claims, "aud"
        except jwt.PyJWTError as exc:
            return header, claims, type(exc).__name__
        return header, claims, "ok"

    def _github(self, handler, installation: str) -> tuple[int, dict]:
        auth = handler.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self.lock:
            keys = dict(self.app_keys)
        header, claims, verdict = self._decode(token, keys, audience=None)
        now = time.time()
        if verdict == "ok":
            iat, exp = claims.get("iat"), claims.get("exp")
            if not isinstance(iat, int) or not isinstance(exp, int):
                verdict = "claim_types"
            elif iat > now + 1 or iat < now - 120:
                verdict = "iat"
            elif exp > now + 600 or exp <= iat:
                verdict = "exp_too_far"  # GitHub: "no more than 10 minutes into the future"
            elif not isinstance(claims.get("iss"), str):
                verdict = "iss_type"
        if verdict == "ok" and handler.headers.get("X-GitHub-Api-Version") != "2022-11-28":
            verdict = "api_version"
        self.seen.append(Seen(header, claims, verdict, headers=dict(handler.headers), raw=token))
        if verdict != "ok":
            return 401, {
                "message": "A JSON web token could not be decoded",
                "documentation_url": "https://docs.github.com/rest",
                "status": "401",
            }
        if installation not in self.installations:
            return 404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}
        token = "ghs_" + secrets.token_urlsafe(27)
        self.issued.append(token)
        ends = datetime.fromtimestamp(int(now) + self.installation_lifetime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 201, {
            "token": token,
            "expires_at": ends,
            "permissions": {"contents": "read", "metadata": "read"},
            "repository_selection": "selected",
        }

    def _google(self, handler, form: dict[str, str]) -> tuple[int, dict]:
        if form.get("grant_type") != JWT_BEARER:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "}
        with self.lock:
            keys = dict(self.service_accounts)
        assertion = form.get("assertion", "")
        header, claims, verdict = self._decode(assertion, keys, audience=self.google_token_url)
        now = time.time()
        if verdict == "ok":
            iat, exp = claims["iat"], claims["exp"]
            if header.get("typ") != "JWT":
                verdict = "typ"
            elif abs(iat - now) > 60:
                verdict = "iat"
            elif exp - iat > 3600 or exp <= iat:
                verdict = "lifetime"  # "Token must be a short-lived token (60 minutes)"
            elif not isinstance(claims.get("scope"), str) or not claims["scope"]:
                verdict = "scope"
            elif handler.headers.get("Authorization"):
                verdict = "client_auth"  # the assertion is the only credential
        self.seen.append(Seen(header, claims, verdict, headers=dict(handler.headers), form=dict(form), raw=assertion))
        if verdict == "signature":
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if verdict == "lifetime":
            return 400, {
                "error": "invalid_grant",
                "error_description": "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            }
        if verdict != "ok":
            return 400, {"error": "invalid_grant", "error_description": f"Invalid JWT ({verdict})."}
        subject = claims.get("sub")
        if subject and subject not in self.delegation.get(claims["iss"], set()):
            return 401, {
                "error": "unauthorized_client",
                "error_description": "Client is unauthorized to retrieve access tokens using this method, or "
                "client not authorized for any of the scopes requested.",
            }
        token = "ya29." + secrets.token_urlsafe(40)
        self.issued.append(token)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length).decode()
                path = self.path.split("?")[0]
                if fake.status_override:
                    self._send(fake.status_override, {"message": "unavailable"})
                    return
                match = _INSTALLATION_PATH.match(path)
                if match:
                    self._send(*fake._github(self, match.group(1)))
                elif path == "/token":
                    form = {k: v[0] for k, v in parse_qs(raw).items()}
                    self._send(*fake._google(self, form))
                else:
                    self._send(404, {"message": "Not Found"})

        return Handler
