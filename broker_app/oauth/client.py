"""The pure OAuth 2.0 protocol client: authorize URL, code exchange, refresh, revocation.

Nothing here knows a provider by name; quirks arrive through the ProviderSpec and its
hook object. Every outbound call has a timeout and is classified as permanent or transient.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

from broker_app.oauth.errors import PermanentOAuthError, TransientOAuthError
from broker_app.oauth.tokens import TokenSet, parse_expires_in

logger = logging.getLogger(__name__)

_session = requests.Session()
_session.mount("https://", HTTPAdapter(pool_connections=32, pool_maxsize=32, max_retries=0))
_session.mount("http://", HTTPAdapter(pool_connections=32, pool_maxsize=32, max_retries=0))
_session.headers["User-Agent"] = "dromos-broker/1.0"


def http() -> requests.Session:
    return _session


def pkce_challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")


def authorize_url(
    spec,
    *,
    redirect_uri: str,
    scopes: list[str],
    state: str,
    code_challenge: str | None,
    nonce: str | None,
    extra: dict[str, str] | None = None,
) -> str:
    """The URL the user consents at. Catalog and operator `authorize_params` (Google's
    access_type, Dropbox's token_access_type …) are added, but can never replace the
    parameters that bind the answer to this connection (state, redirect_uri, PKCE, nonce)."""
    params: dict[str, str] = {
        "response_type": "code",
        "client_id": spec.client_id,
        "redirect_uri": redirect_uri,
        "state": state,
    }
    if scopes:
        params[spec.scope_param] = spec.scope_separator.join(scopes)
    if code_challenge and spec.pkce != "none":
        params["code_challenge"] = code_challenge
        params["code_challenge_method"] = "S256"
    if nonce:
        params["nonce"] = nonce
    for name, value in {**spec.authorize_params, **(extra or {})}.items():
        if name not in params:
            params[name] = str(value)
    parts = urlsplit(spec.authorize_url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote), ""))


def _timeout() -> tuple[float, float]:
    return (min(5.0, settings.PROVIDER_HTTP_TIMEOUT), settings.PROVIDER_HTTP_TIMEOUT)


def _retry_after(response: requests.Response) -> int | None:
    value = response.headers.get("Retry-After", "")
    return int(value) if value.isdigit() else None


def _decode_body(response: requests.Response) -> dict[str, Any]:
    """The body as a dict: JSON, or form-encoded (GitHub without an Accept header answers
    `access_token=…&scope=…`). A body labelled `text/plain` or not at all is tried as JSON first."""
    content_type = response.headers.get("Content-Type", "").lower()
    text = response.text.strip()
    if "x-www-form-urlencoded" in content_type and not text.startswith("{"):
        return dict(parse_qsl(text))
    try:
        data = response.json()
    except ValueError:
        if "json" not in content_type and "=" in text and not text.startswith("<"):
            return dict(parse_qsl(text))
        return {}
    return data if isinstance(data, dict) else {}


def _client_auth(spec, data: dict[str, str], method: str) -> tuple[tuple[str, str] | None, dict[str, str]]:
    """The client's credentials, as HTTP Basic (`client_secret_basic`) or in the body."""
    if method == "client_secret_basic" and spec.client_secret is not None:
        # RFC 6749 §2.3.1: form-encode both parts before Basic encoding.
        return (quote(spec.client_id, safe=""), quote(spec.client_secret, safe="")), data
    data = {**data, "client_id": spec.client_id}
    if spec.client_secret:
        data["client_secret"] = spec.client_secret
    return None, data


def _error_code(spec, body: dict[str, Any]) -> str | None:
    """The provider's error code, mapped through the catalog's error_aliases. GitHub and
    Slack answer errors with HTTP 200; HubSpot names them in `status` (and its newer
    endpoints in `error` too). A boolean (Figma's `"error": true`) or an object names no code."""
    codes = []
    for name in dict.fromkeys((spec.error_field, "error")):
        value = body.get(name)
        if isinstance(value, str) and value:
            codes.append(value)
    for code in codes:
        if code in spec.error_aliases:
            return spec.error_aliases[code]
    return codes[0] if codes else None


def token_request(spec, form: dict[str, str], *, url: str | None = None, client_auth: bool = True) -> dict[str, Any]:
    """POST to the token endpoint with the client's authentication (none for an assertion
    grant: `client_auth=False`); return the JSON body or raise a classified OAuthError."""
    headers = {"Accept": "application/json", **spec.token_headers}
    auth, data = _client_auth(spec, dict(form), spec.token_auth) if client_auth else (None, dict(form))
    body_kwarg = {"json": data} if spec.token_format == "json" else {"data": data}
    try:
        response = _session.post(
            url or spec.token_url, headers=headers, auth=auth, timeout=_timeout(), allow_redirects=False, **body_kwarg
        )
    except requests.Timeout:
        raise TransientOAuthError("timeout", "the provider did not answer in time") from None
    except requests.RequestException:
        raise TransientOAuthError("connection_error", "the provider could not be reached") from None
    body = _decode_body(response)
    if response.status_code == 429:
        raise TransientOAuthError(
            "rate_limited", "the provider throttled the request", status=429, retry_after=_retry_after(response)
        )
    if response.status_code >= 500:
        raise TransientOAuthError(
            "server_error",
            f"the provider answered {response.status_code}",
            status=response.status_code,
            retry_after=_retry_after(response),
        )
    error = _error_code(spec, body)
    if response.status_code >= 400 or error:
        code = error or f"http_{response.status_code}"
        description = body.get("error_description")
        description = description if isinstance(description, str) else ""
        if code in spec.transient_errors:
            raise TransientOAuthError(code, description, status=response.status_code)
        raise PermanentOAuthError(code, description, status=response.status_code)
    if not body:
        raise TransientOAuthError(
            "bad_response", "the provider's token response was not JSON", status=response.status_code
        )
    return body


def exchange_code(spec, hooks, *, code: str, redirect_uri: str, code_verifier: str | None) -> TokenSet:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if code_verifier and spec.pkce != "none":
        form["code_verifier"] = code_verifier
    return hooks.parse_token_response(spec, token_request(spec, form))


def refresh(spec, hooks, *, refresh_token: str) -> TokenSet:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    form.update(hooks.refresh_params(spec))
    return hooks.parse_token_response(spec, token_request(spec, form, url=spec.refresh_url or None))


def revoke(spec, *, token: str, token_type_hint: str) -> bool:
    """Revocation: RFC 7009 by default; the spec's revocation_* data describes the providers
    that differ (GitHub's DELETE with a JSON body, Dropbox's bearer call without a body).
    True when the provider accepted it (2xx, including for a token that was already
    invalid); False when the provider has no revocation endpoint.
    Raises TransientOAuthError when it should be retried later."""
    if not spec.revocation_url:
        return False
    headers = {"Accept": "application/json", **spec.token_headers}
    data: dict[str, str] = {}
    if spec.revocation_format != "none":
        data[spec.revocation_token_param] = token
        if spec.revocation_hint:
            data["token_type_hint"] = token_type_hint
    auth = None
    if spec.revocation_auth == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    elif spec.revocation_auth != "none":
        method = {"basic": "client_secret_basic", "post": "client_secret_post"}.get(
            spec.revocation_auth, spec.token_auth
        )
        auth, data = _client_auth(spec, data, method)
    body_kwarg: dict[str, Any] = {}
    if data:
        body_kwarg = {"json": data} if spec.revocation_format == "json" else {"data": data}
    try:
        response = _session.request(
            spec.revocation_method,
            spec.revocation_url,
            auth=auth,
            timeout=_timeout(),
            headers=headers,
            allow_redirects=False,
            **body_kwarg,
        )
    except requests.RequestException:
        raise TransientOAuthError("connection_error", "revocation endpoint unreachable") from None
    if 200 <= response.status_code < 300:
        return True
    if response.status_code == 503 or response.status_code == 429 or response.status_code >= 500:
        raise TransientOAuthError(
            "server_error",
            f"revocation answered {response.status_code}",
            status=response.status_code,
            retry_after=_retry_after(response),
        )
    body = _decode_body(response)
    if body.get("error") == "unsupported_token_type":
        return False
    raise PermanentOAuthError(str(body.get("error") or f"http_{response.status_code}"), status=response.status_code)


def userinfo(spec, *, access_token: str) -> dict[str, Any]:
    """GET the template's `userinfo_url` (OIDC Core §5.3, GitHub's /user, Zoom's /users/me …)
    with the access token, as the provider API calls are made: the provider's own headers,
    the connect and read timeouts, no redirect followed. Returns the JSON object. Raises
    TransientOAuthError (timeout, unreachable, 429, 5xx) or PermanentOAuthError (another
    non-2xx, or `bad_response` when the answer is not a JSON object)."""
    if not spec.userinfo_url:
        raise PermanentOAuthError("no_userinfo_endpoint", "the template names no userinfo endpoint")
    headers = {"Accept": "application/json", **spec.api_headers}
    header, form = spec.api_auth.get("header", "Authorization"), spec.api_auth.get("format", "Bearer {token}")
    headers[header] = form.replace("{token}", access_token)
    try:
        response = _session.get(spec.userinfo_url, headers=headers, timeout=_timeout(), allow_redirects=False)
    except requests.Timeout:
        raise TransientOAuthError("timeout", "the userinfo endpoint did not answer in time") from None
    except requests.RequestException:
        raise TransientOAuthError("connection_error", "the userinfo endpoint could not be reached") from None
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientOAuthError(
            "server_error", f"the userinfo endpoint answered {response.status_code}", status=response.status_code
        )
    if not 200 <= response.status_code < 300:
        raise PermanentOAuthError(f"http_{response.status_code}", "the userinfo endpoint refused the token")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise PermanentOAuthError("bad_response", "the userinfo answer is not a JSON object")
    return body


# -- machine grants (issue 18) ------------------------------------------------------------------
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def client_credentials(
    spec, hooks, *, scopes: list[str], audience: str | None = None, resource: str | None = None
) -> TokenSet:
    """RFC 6749 §4.4: a token for the client itself (spec.client_id / client_secret, as
    token_auth says). `audience` (Auth0) and `resource` (RFC 8707) are sent when given."""
    form = {"grant_type": "client_credentials"}
    if scopes:
        form[spec.scope_param] = spec.scope_separator.join(scopes)
    if audience:
        form["audience"] = audience
    if resource:
        form["resource"] = resource
    return hooks.parse_token_response(spec, token_request(spec, form))


def jwt_bearer(spec, hooks, *, assertion: str) -> TokenSet:
    """RFC 7523 §2.1: exchange a signed assertion (no client authentication: the signature is it)."""
    form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
    return hooks.parse_token_response(spec, token_request(spec, form, client_auth=False))


def github_installation_token(spec, *, app_jwt: str, now: float | None = None) -> TokenSet:
    """GitHub: `POST /app/installations/{id}/access_tokens` with the app's JWT; 201
    `{"token", "expires_at"}` (one hour). 401 (the JWT: wrong key, app or clock) answers
    `invalid_client`, 404 `installation_not_found`; 5xx, 429 and a 403 with Retry-After (a
    rate limit) are transient."""
    headers = {"Accept": "application/vnd.github+json", **spec.token_headers, "Authorization": f"Bearer {app_jwt}"}
    try:
        response = _session.post(spec.token_url, headers=headers, timeout=_timeout(), allow_redirects=False)
    except requests.Timeout:
        raise TransientOAuthError("timeout", "the provider did not answer in time") from None
    except requests.RequestException:
        raise TransientOAuthError("connection_error", "the provider could not be reached") from None
    status = response.status_code
    limited = status == 403 and (
        response.headers.get("Retry-After") or response.headers.get("X-RateLimit-Remaining") == "0"
    )
    if status == 429 or status >= 500 or limited:
        raise TransientOAuthError(
            "rate_limited" if status in (403, 429) else "server_error",
            f"the provider answered {status}",
            status=status,
            retry_after=_retry_after(response),
        )
    if status != 201 and status != 200:
        code = {401: "invalid_client", 403: "access_denied", 404: "installation_not_found"}.get(status)
        raise PermanentOAuthError(code or f"http_{status}", f"the provider answered {status}", status=status)
    body = _decode_body(response)
    token, expires = body.get("token"), body.get("expires_at")
    if not isinstance(token, str) or not token:
        raise TransientOAuthError("bad_response", "the installation token response has no token", status=status)
    expires_in = None
    if isinstance(expires, str):
        try:
            ends = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        except ValueError:
            ends = None
        if ends is not None and ends.tzinfo is not None:
            expires_in = parse_expires_in(ends.timestamp() - (now if now is not None else time.time()))
    metadata = {"repository_selection": body["repository_selection"]} if body.get("repository_selection") else {}
    return TokenSet(access_token=token, token_type="Bearer", expires_in=expires_in, metadata=metadata)


# -- RFC 8628: device authorization grant ---------------------------------------------------
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_DEFAULT_INTERVAL = 5  # RFC 8628 §3.2: "If no value is provided, clients MUST use 5"
_DEVICE_MAX_EXPIRES_IN = 86400


def _positive_int(value: Any, default: int | None) -> int | None:
    if isinstance(value, bool):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def device_authorize(spec, *, scopes: list[str]) -> dict[str, Any]:
    """RFC 8628 §3.1–3.2: ask for a device code and a user code. Returns device_code,
    user_code, verification_uri, verification_uri_complete (or None), expires_in, interval;
    a response lacking any required member is a PermanentOAuthError (`bad_response`)."""
    form: dict[str, str] = {}
    if scopes:
        form[spec.scope_param] = spec.scope_separator.join(scopes)
    body = token_request(spec, form, url=spec.device_authorization_url)
    # Google answers `verification_url` (its pre-RFC spelling).
    uri = body.get("verification_uri") or body.get("verification_url")
    complete = body.get("verification_uri_complete")
    expires_in = _positive_int(body.get("expires_in"), None)
    device_code, user_code = body.get("device_code"), body.get("user_code")
    if not (isinstance(device_code, str) and device_code and isinstance(user_code, str) and user_code):
        raise PermanentOAuthError("bad_response", "the device authorization response lacks a code")
    if not (isinstance(uri, str) and uri.startswith(("https://", "http://")) and expires_in):
        raise PermanentOAuthError("bad_response", "the device authorization response lacks verification_uri")
    return {
        "device_code": device_code,
        "user_code": user_code[:64],
        "verification_uri": uri,
        "verification_uri_complete": complete if isinstance(complete, str) and complete.startswith(uri) else None,
        "expires_in": min(expires_in, _DEVICE_MAX_EXPIRES_IN),
        "interval": min(_positive_int(body.get("interval"), DEVICE_DEFAULT_INTERVAL), 300),
    }


def device_token(spec, hooks, *, device_code: str) -> TokenSet:
    """RFC 8628 §3.4: one poll of the token endpoint. authorization_pending, slow_down,
    access_denied and expired_token arrive as PermanentOAuthError codes (§3.5)."""
    form = {"grant_type": DEVICE_CODE_GRANT, "device_code": device_code}
    return hooks.parse_token_response(spec, token_request(spec, form))


# -- static credentials (issue 18) ------------------------------------------------------------
def credential_headers(spec, credential: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The headers and query parameters that carry a static credential ({"type": "api_key",
    "api_key"} or {"type": "basic", "username", "password"}) as the template says."""
    headers = dict(spec.api_headers)
    if credential["type"] == "basic":
        raw = f"{credential['username']}:{credential['password']}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        return headers, {}
    if spec.credential_query_param:
        return headers, {spec.credential_query_param: credential["api_key"]}
    headers[spec.credential_header] = spec.credential_format.replace("{api_key}", credential["api_key"])
    return headers, {}


def verify_credential(spec, credential: dict[str, str]) -> bool:
    """GET the template's verify_url with the credential: True on 2xx, False on 401/403.
    Raises TransientOAuthError when the answer says nothing about the credential (outage,
    timeout, another status)."""
    headers, params = credential_headers(spec, credential)
    try:
        response = _session.get(
            spec.verify_url, headers=headers, params=params, timeout=_timeout(), allow_redirects=False
        )
    except requests.RequestException:
        raise TransientOAuthError("connection_error", "the verification endpoint could not be reached") from None
    if 200 <= response.status_code < 300:
        return True
    if response.status_code in (401, 403):
        return False
    raise TransientOAuthError(
        "server_error", f"the verification endpoint answered {response.status_code}", status=response.status_code
    )
