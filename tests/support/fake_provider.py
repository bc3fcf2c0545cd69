"""A hand-written OAuth 2.0 / OIDC provider for the edge cases a real one cannot produce
on demand: programmable token responses (500, timeouts, 429, invalid_grant, missing
fields), rotating refresh tokens that revoke the grant on reuse, exact call counts, and
id_tokens with any claim or header we want to test rejection of.

The real-provider suite (devtools/oidc-provider, tests/e2e) is the other half."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "fake-client"
CLIENT_SECRET = "fake-client-secret-value"


def _rsa_jwk(kid: str):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return key, public


@dataclass
class Grant:
    refresh_token: str
    revoked: bool = False
    used_refresh_tokens: set = field(default_factory=set)
    sub: str = "user-1"
    rotated_at: dict = field(default_factory=dict)  # rotated-out refresh token -> time.monotonic()


class FakeProvider:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.signing_key, self.public_jwk = _rsa_jwk("key-1")
        self.extra_jwks: list[dict] = []
        self.codes: dict[str, dict[str, Any]] = {}
        self.grants: dict[str, Grant] = {}  # refresh token -> grant
        self.refresh_calls = 0
        self.token_calls = 0
        self.jwks_calls = 0
        self.revocations: list[dict[str, str]] = []
        self.revocation_status = 200
        self.scripted: deque[Callable[[dict], tuple[int, dict, dict]]] = deque()
        self.refresh_delay = 0.0
        self.access_token_ttl: int | None = 3600
        self.rotate = True
        # Crash tests: after rotating, wait this long before answering (the answer is then
        # lost when the caller dies meanwhile); a rotated-out refresh token is still accepted
        # for `reuse_grace` seconds (Okta's grace period, Auth0's reuse interval).
        self.answer_delay = 0.0
        self.reuse_grace = 0.0
        self.rotations = 0
        self.jwks_status = 200
        self.issuer_override: str | None = None
        self.last_traceparent: str | None = None
        # Security suite knobs: what discovery advertises and how long documents may be cached.
        self.advertised_algs: list[str] = ["RS256"]
        self.jwks_cache_control = "max-age=300"
        self.discovery_cache_control = "max-age=300"
        self.publish_primary_key = True
        self.discovery_calls = 0
        self.last_token_form: dict[str, str] = {}
        self.last_token_auth: str | None = None
        self.last_revocation_auth: str | None = None
        # RFC 8628: device codes -> {"state": pending|approved|denied, "sub", "polls": [times]}
        self.devices: dict[str, dict[str, Any]] = {}
        self.device_interval: int | None = 5
        self.device_expires_in = 600
        self.device_code_override: str | None = None  # answer this device code (reuse test)
        self.device_slow_down_always = False
        self.device_down = False  # the token endpoint answers 503 to device polls
        self.device_authorizations = 0
        # Client credentials (issue 18): further clients (id -> secret) and the call count.
        self.cc_clients: dict[str, str] = {}
        self.cc_calls = 0
        # Static credentials: /verify answers 200 when a header or query value is in
        # `valid_credentials`, else 401; `verify_status` forces an answer (503: down).
        self.valid_credentials: set[str] = set()
        self.verify_status: int | None = None
        self.verify_requests: list[dict] = []
        # The protected API under /api/ (the proxy's upstream, issue 15).
        self.valid_access_tokens: set[str] = set()
        self.api_calls: list[dict[str, Any]] = []
        self.api_script: deque[Callable[[Any], bool]] = deque()
        # GET /userinfo (GitHub's /user-like): the account of the access token presented,
        # {"id": <number>, "login": sub, "sub": sub}; 401 for a token it never issued.
        # `userinfo_answer(...)` queues api_* handlers for the next calls (down, 500, garbage).
        self.token_subs: dict[str, str] = {}
        self.userinfo_script: deque[Callable[[Any], bool]] = deque()
        self.userinfo_calls: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def issuer(self) -> str:
        return self.issuer_override or self.url

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    def start(self) -> FakeProvider:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.codes.clear()
            self.grants.clear()
            self.refresh_calls = self.token_calls = self.jwks_calls = 0
            self.revocations.clear()
            self.revocation_status = 200
            self.scripted.clear()
            self.refresh_delay = 0.0
            self.access_token_ttl = 3600
            self.rotate = True
            self.answer_delay = self.reuse_grace = 0.0
            self.rotations = 0
            self.jwks_status = 200
            self.issuer_override = None
            self.last_traceparent = None  # W3C trace context of the last /token call (tracing tests)
            self.extra_jwks = []
            self.advertised_algs = ["RS256"]
            self.jwks_cache_control = "max-age=300"
            self.discovery_cache_control = "max-age=300"
            self.publish_primary_key = True
            self.discovery_calls = 0
            self.devices.clear()
            self.cc_clients = {}
            self.cc_calls = 0
            self.device_interval = 5
            self.device_expires_in = 600
            self.device_code_override = None
            self.device_slow_down_always = False
            self.device_down = False
            self.device_authorizations = 0
            self.valid_credentials = set()
            self.verify_status = None
            self.verify_requests = []
            self.valid_access_tokens.clear()
            self.api_calls.clear()
            self.api_script.clear()
            self.token_subs.clear()
            self.userinfo_script.clear()
            self.userinfo_calls.clear()

    # -- test helpers ------------------------------------------------------------------------
    def id_token(
        self,
        *,
        nonce: str | None = None,
        key=None,
        headers: dict | None = None,
        algorithm: str = "RS256",
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "sub": "user-1",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 600,
            "email": "user-1@example.test",
        }
        if nonce is not None:
            payload["nonce"] = nonce
        for name, value in claims.items():
            if value is _DROP:
                payload.pop(name, None)
            else:
                payload[name] = value
        return jwt.encode(
            payload, key or self.signing_key, algorithm=algorithm, headers={"kid": "key-1", **(headers or {})}
        )

    def issue_code(
        self,
        *,
        code_challenge: str | None,
        nonce: str | None,
        id_token: str | None = None,
        scope: str | None = None,
        sub: str = "user-1",
        response: dict | None = None,
    ) -> str:
        code = secrets.token_urlsafe(16)
        with self.lock:
            self.codes[code] = {
                "challenge": code_challenge,
                "nonce": nonce,
                "id_token": id_token,
                "scope": scope,
                "sub": sub,
                "response": response,
            }
        return code

    def script(self, *responses: Callable[[dict], tuple[int, dict, dict]]) -> None:
        """Queue responses for the next token-endpoint calls (then normal behaviour)."""
        self.scripted.extend(responses)

    def jwks(self) -> dict:
        return {"keys": [self.public_jwk, *self.extra_jwks] if self.publish_primary_key else list(self.extra_jwks)}

    def add_signing_key(self, kid: str):
        """Publish one more RSA key (a rotation at the provider); return its private key."""
        private, public = _rsa_jwk(kid)
        with self.lock:
            self.extra_jwks.append(public)
        return private

    # -- token endpoint ----------------------------------------------------------------------
    def _tokens(self, sub: str, *, id_token: str | None, scope: str | None) -> dict:
        body: dict[str, Any] = {"access_token": "at-" + secrets.token_urlsafe(24), "token_type": "bearer"}
        self.valid_access_tokens.add(body["access_token"])
        self.token_subs[body["access_token"]] = sub
        if self.access_token_ttl:
            body["expires_in"] = self.access_token_ttl
        if id_token:
            body["id_token"] = id_token
        if scope:
            body["scope"] = scope
        return body

    def token_endpoint(self, form: dict[str, str]) -> tuple[int, dict, dict]:
        with self.lock:
            self.token_calls += 1
            self.last_token_form = dict(form)
            scripted = self.scripted.popleft() if self.scripted else None
            if form.get("grant_type") == "refresh_token":
                self.refresh_calls += 1
        if scripted is not None:
            return scripted(form)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            with self.lock:
                entry = self.codes.pop(form.get("code", ""), None)
            if entry is None:
                return 400, {"error": "invalid_grant", "error_description": "unknown code"}, {}
            if entry["challenge"]:
                verifier = form.get("code_verifier", "")
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
                if digest != entry["challenge"]:
                    return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}, {}
            if entry["response"] is not None:
                return 200, entry["response"], {}
            id_token = entry["id_token"]
            if id_token is None and entry["nonce"] is not None:
                id_token = self.id_token(nonce=entry["nonce"], sub=entry["sub"])
            body = self._tokens(entry["sub"], id_token=id_token, scope=entry["scope"])
            body["refresh_token"] = "rt-" + secrets.token_urlsafe(24)
            with self.lock:
                self.grants[body["refresh_token"]] = Grant(refresh_token=body["refresh_token"], sub=entry["sub"])
            return 200, body, {}
        if grant_type == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_token(form)
        if grant_type == "client_credentials":
            return self._client_credentials(form)
        if grant_type == "refresh_token":
            if self.refresh_delay:
                time.sleep(self.refresh_delay)
            presented = form.get("refresh_token", "")
            with self.lock:
                grant = self.grants.get(presented)
                if grant is None or grant.revoked:
                    return 400, {"error": "invalid_grant", "error_description": "unknown or revoked"}, {}
                if presented in grant.used_refresh_tokens:
                    within_grace = time.monotonic() - grant.rotated_at.get(presented, 0) <= self.reuse_grace
                    if not within_grace:
                        grant.revoked = True  # reuse detected: the whole grant dies (RFC 9700 §4.14.2)
                        return 400, {"error": "invalid_grant", "error_description": "refresh token reused"}, {}
                body = self._tokens(grant.sub, id_token=None, scope=None)
                if self.rotate:
                    if presented not in grant.used_refresh_tokens:
                        grant.used_refresh_tokens.add(presented)
                        grant.rotated_at[presented] = time.monotonic()
                    body["refresh_token"] = "rt-" + secrets.token_urlsafe(24)
                    grant.refresh_token = body["refresh_token"]
                    self.grants[body["refresh_token"]] = grant
                    self.rotations += 1
            if self.answer_delay:
                time.sleep(self.answer_delay)  # rotated already: a caller dying now loses the new token
            return 200, body, {}
        return 400, {"error": "unsupported_grant_type"}, {}

    # -- RFC 6749 §4.4 ------------------------------------------------------------------------
    def _client_credentials(self, form: dict[str, str]) -> tuple[int, dict, dict]:
        """Client authentication as RFC 6749 §2.3.1 says (Basic, or client_id/client_secret in
        the body); `cc_clients` maps client ids to secrets (the provider's own client too)."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = self.last_token_auth or ""
        if auth.startswith("Basic "):
            raw = base64.b64decode(auth[6:]).decode()
            client_id, _, secret = raw.partition(":")
        with self.lock:
            self.cc_calls += 1
            known = {CLIENT_ID: CLIENT_SECRET, **self.cc_clients}
        if not client_id or known.get(client_id) != secret:
            return 401, {"error": "invalid_client", "error_description": "client authentication failed"}, {}
        body = self._tokens(client_id, id_token=None, scope=form.get("scope"))
        return 200, body, {}

    # -- RFC 8628 ---------------------------------------------------------------------------
    def device_authorization(self, form: dict[str, str]) -> tuple[int, dict]:
        with self.lock:
            self.device_authorizations += 1
            device_code = self.device_code_override or "dc-" + secrets.token_urlsafe(24)
            user_code = secrets.token_hex(4).upper()
            self.devices[device_code] = {"state": "pending", "sub": "user-1", "polls": [], "user_code": user_code}
        body: dict[str, Any] = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": f"{self.url}/device",
            "verification_uri_complete": f"{self.url}/device?user_code={user_code}",
            "expires_in": self.device_expires_in,
        }
        if self.device_interval is not None:
            body["interval"] = self.device_interval
        return 200, body

    def device_set(self, user_code: str, state: str, sub: str = "user-1") -> None:
        """The person at the provider approves (or denies) the user code."""
        with self.lock:
            for entry in self.devices.values():
                if entry["user_code"] == user_code:
                    entry["state"], entry["sub"] = state, sub

    def device_polls(self) -> list[float]:
        with self.lock:
            return [t for entry in self.devices.values() for t in entry["polls"]]

    def _device_token(self, form: dict[str, str]) -> tuple[int, dict, dict]:
        with self.lock:
            entry = self.devices.get(form.get("device_code", ""))
            if entry is not None:
                entry["polls"].append(time.time())
            if self.device_down:
                return 503, {"error": "temporarily_unavailable"}, {}
        if entry is None:
            return 400, {"error": "invalid_grant", "error_description": "unknown device code"}, {}
        if self.device_slow_down_always:
            return 400, {"error": "slow_down"}, {}
        if entry["state"] == "pending":
            return 400, {"error": "authorization_pending"}, {}
        if entry["state"] in ("denied", "expired"):
            return 400, {"error": "access_denied" if entry["state"] == "denied" else "expired_token"}, {}
        if entry["state"] == "used":
            return 400, {"error": "invalid_grant"}, {}
        entry["state"] = "used"
        body = self._tokens(entry["sub"], id_token=self.id_token(sub=entry["sub"]), scope=None)
        body["refresh_token"] = "rt-" + secrets.token_urlsafe(24)
        with self.lock:
            self.grants[body["refresh_token"]] = Grant(refresh_token=body["refresh_token"], sub=entry["sub"])
        return 200, body, {}

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is refused by the API from now on (401)."""
        with self.lock:
            self.valid_access_tokens.clear()

    def api_answer(self, *answers: Callable[[Any], bool]) -> None:
        """Queue handlers for the next /api/ calls: each gets the request handler and
        returns True when it answered (see api_* helpers below)."""
        self.api_script.extend(answers)

    def _api(self, handler) -> None:
        path, _, query = handler.path.partition("?")
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            body = _read_chunked(handler.rfile)
            if body is None:  # the sender gave up mid-body
                handler.close_connection = True
                return
        else:
            length = int(handler.headers.get("Content-Length") or 0)
            body = handler.rfile.read(length) if length else b""
        auth = handler.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self.lock:
            # An issued access token, or (static credentials) a header or query value in
            # valid_credentials, as /verify accepts them.
            given = {*handler.headers.values(), *(v[0] for v in parse_qs(query).values())}
            valid = token in self.valid_access_tokens or bool(given & self.valid_credentials)
            self.api_calls.append(
                {
                    "method": handler.command,
                    "path": path,
                    "query": query,
                    "headers": {k.lower(): v for k, v in handler.headers.items()},
                    "body": body,
                    "token_valid": valid,
                }
            )
            scripted = self.api_script.popleft() if self.api_script else None
        if scripted is not None and scripted(handler):
            return
        if not valid:
            handler._send(401, {"error": "invalid_token"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return
        handler._send(200, {"method": handler.command, "path": path, "query": query, "received": len(body)})

    def userinfo_answer(self, *answers: Callable[[Any], bool]) -> None:
        """Queue handlers (api_status, api_raw, api_hang …) for the next /userinfo calls."""
        self.userinfo_script.extend(answers)

    @staticmethod
    def account_number(sub: str) -> int:
        """The numeric account id /userinfo gives `sub` (GitHub's ids are numbers)."""
        return int(hashlib.sha256(sub.encode()).hexdigest()[:8], 16)

    def _userinfo(self, handler) -> None:
        auth = handler.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self.lock:
            self.userinfo_calls.append(token)
            scripted = self.userinfo_script.popleft() if self.userinfo_script else None
            sub = self.token_subs.get(token)
        if scripted is not None and scripted(handler):
            return
        if sub is None:
            handler._send(401, {"message": "Bad credentials"})
            return
        handler._send(200, {"id": self.account_number(sub), "login": sub, "sub": sub})

    def is_live(self, refresh_token: str) -> bool:
        grant = self.grants.get(refresh_token)
        return bool(grant and not grant.revoked and refresh_token not in grant.used_refresh_tokens)

    def _handler(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.startswith("/api/"):
                    provider._api(self)
                elif path == "/.well-known/openid-configuration":
                    with provider.lock:
                        provider.discovery_calls += 1
                    self._send(
                        200,
                        {
                            "issuer": provider.issuer,
                            "authorization_endpoint": f"{provider.url}/authorize",
                            "token_endpoint": f"{provider.url}/token",
                            "revocation_endpoint": f"{provider.url}/revoke",
                            "userinfo_endpoint": f"{provider.url}/userinfo",
                            "jwks_uri": f"{provider.url}/jwks",
                            "device_authorization_endpoint": f"{provider.url}/device_authorization",
                            "id_token_signing_alg_values_supported": list(provider.advertised_algs),
                            "authorization_response_iss_parameter_supported": True,
                        },
                        {"Cache-Control": provider.discovery_cache_control},
                    )
                elif path == "/userinfo":
                    provider._userinfo(self)
                elif path == "/verify":
                    query = {k: v[0] for k, v in parse_qs(self.path.partition("?")[2]).items()}
                    with provider.lock:
                        provider.verify_requests.append({"headers": dict(self.headers), "query": query})
                        given = {*self.headers.values(), *query.values()}
                        status = provider.verify_status or (200 if given & provider.valid_credentials else 401)
                    self._send(status, {} if status == 200 else {"error": "unauthorized"})
                elif path == "/jwks":
                    with provider.lock:
                        provider.jwks_calls += 1
                    if provider.jwks_status != 200:
                        self._send(provider.jwks_status, {"error": "down"})
                    else:
                        self._send(200, provider.jwks(), {"Cache-Control": provider.jwks_cache_control})
                else:
                    self._send(404, {"error": "not_found"})

            def do_PUT(self):
                provider._api(self)

            do_PATCH = do_DELETE = do_HEAD = do_PUT

            def do_POST(self):
                if self.path.startswith("/api/"):
                    provider._api(self)
                    return
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                path = self.path.split("?")[0]
                if path == "/token":
                    provider.last_token_auth = self.headers.get("Authorization")
                    provider.last_traceparent = self.headers.get("traceparent")
                    status, body, headers = provider.token_endpoint(form)
                    if status == -1:  # simulate a hang up
                        self.close_connection = True
                        return
                    self._send(status, body, headers)
                elif path == "/device_authorization":
                    provider.last_token_auth = self.headers.get("Authorization")
                    status, body = provider.device_authorization(form)
                    self._send(status, body)
                elif path == "/revoke":
                    with provider.lock:
                        provider.revocations.append(form)
                        provider.last_revocation_auth = self.headers.get("Authorization")
                        token = form.get("token", "")
                        grant = provider.grants.get(token)
                        if grant and provider.revocation_status == 200:
                            grant.revoked = True
                    self._send(provider.revocation_status, {})
                else:
                    self._send(404, {"error": "not_found"})

        return Handler


def _read_chunked(stream) -> bytes | None:
    """A chunked request body, or None when it ends before its last chunk."""
    parts = []
    while True:
        line = stream.readline()
        if not line.endswith(b"\n"):
            return None
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            stream.readline()
            return b"".join(parts)
        data = stream.read(size + 2)
        if len(data) < size + 2:
            return None
        parts.append(data[:size])


class _Drop:
    pass


_DROP = _Drop()
DROP = _DROP


def respond(status: int, body: dict | None = None, headers: dict | None = None):
    """A scripted token-endpoint answer."""
    return lambda form: (status, body or {}, headers or {})


def hang(seconds: float):
    """A scripted answer that stalls longer than the broker's timeout."""

    def answer(form):
        time.sleep(seconds)
        return 504, {"error": "late"}, {}

    return answer


def api_status(status: int, body: dict | None = None, headers: dict | None = None):
    """A scripted API answer."""

    def answer(handler) -> bool:
        handler._send(status, body or {}, headers or {})
        return True

    return answer


def api_hang(seconds: float):
    """A scripted API answer that arrives after `seconds`."""

    def answer(handler) -> bool:
        time.sleep(seconds)
        handler._send(200, {"late": True})
        return True

    return answer


def api_cut_short(declared: int = 100_000, sent: int = 1000):
    """Declare a body of `declared` bytes, send `sent`, hang up."""

    def answer(handler) -> bool:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        handler.wfile.write(b"x" * sent)
        handler.wfile.flush()
        handler.close_connection = True
        return True

    return answer


def api_raw(status: int, body: bytes, headers: dict | None = None):
    """A scripted API answer with any bytes and headers."""

    def answer(handler) -> bool:
        handler.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
        return True

    return answer


def api_chunked_cut(chunks: int = 3):
    """An HTTP/1.1 chunked answer that hangs up before its last chunk."""

    def answer(handler) -> bool:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(chunks):
            handler.wfile.write(b"400\r\n" + b"y" * 0x400 + b"\r\n")
        handler.wfile.flush()
        handler.close_connection = True
        return True

    return answer


def api_large(megabytes: int):
    """A `megabytes` MiB download, written 1 MiB at a time (the fake holds one MiB)."""

    def answer(handler) -> bool:
        block = b"d" * (1024 * 1024)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(megabytes * len(block)))
        handler.end_headers()
        for _ in range(megabytes):
            handler.wfile.write(block)
        return True

    return answer
