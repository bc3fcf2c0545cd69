"""The API proxy's machinery (issue 15): credentials from the broker, the SSRF guard, the
upstream connection pools, header filtering and the streamed answer. The view
(gateway_app.proxy_views) puts these together.

SSRF guard, in order:
1. the path cannot change the host: `check_path` refuses `..`/`.` segments, `//`, a
   backslash, control characters (CR/LF/NUL …), a scheme (`https:`) or `@` in the first
   segment, in the path as sent and after percent-decoding it (repeatedly: `%252e`);
2. the host is the provider's api_base_url host, or one of its api_hosts named in
   `Dromos-Proxy-Host`; nothing an agent writes becomes a host otherwise;
3. every address the host resolves to must be public (`ipaddress.is_global`: no private,
   loopback, link-local — 169.254.169.254 included —, shared, reserved or multicast
   address, IPv4-mapped IPv6 included) unless the host is in PROXY_ALLOWED_PRIVATE_HOSTS;
4. the connection goes to the address that was checked (no second DNS lookup, so no
   rebinding window), with the host name in the Host header, SNI and certificate check;
5. redirects are never followed (a 3xx goes back to the agent as it is).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from urllib.parse import quote, unquote, unquote_plus, urlsplit

import orjson
import urllib3
from django.conf import settings

from dromos.errors import ApiError, BrokerUnavailable, InvalidRequest
from dromos.wire import PROXY_ATTENTION, PROXY_CREDENTIAL, PROXY_REFRESH, internal_path
from gateway_app.broker_client import BrokerAnswer, broker

logger = logging.getLogger(__name__)

try:  # requests depends on certifi, so it is there; fall back to the system's store.
    import certifi

    _CA_CERTS: str | None = certifi.where()
except ImportError:  # pragma: no cover
    _CA_CERTS = None


class ProxyForbidden(ApiError):
    status_code, code = 403, "proxy_forbidden"


class InvalidProxyPath(ApiError):
    status_code, code = 400, "invalid_proxy_path"


class DestinationRefused(ApiError):
    status_code, code = 502, "proxy_destination_refused"


class ProviderUnreachable(ApiError):
    status_code, code = 502, "provider_unreachable"


class ProviderTimeout(ApiError):
    status_code, code = 504, "provider_timeout"


class BodyTooLarge(ApiError):
    status_code, code = 413, "request_too_large"


class ProxyNotConfigured(ApiError):
    status_code, code = 409, "proxy_not_configured"


class UpstreamBroken(Exception):
    """The provider's answer broke off mid-body: the agent's response is aborted."""


# -- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Injection:
    """Where a credential goes on the upstream request: headers set, and at most one query
    parameter appended (name, already percent-encoded value)."""

    headers: dict[str, str] = field(repr=False)
    query: tuple[str, str] | None = field(default=None, repr=False)


_SENDABLE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no space: a token, a key, base64


def injection(credential: Credential) -> Injection:
    """How `credential` goes on the request, keyed by its kind, exactly as the provider's
    template says (the broker names the kind: broker_app.services.proxy._injection). A new
    kind of credential gets its branch here. A secret that cannot travel in a header or a
    query (a space, CR/LF, non-ASCII) is refused without being sent or shown."""
    secret = credential.access_token
    if not _SENDABLE.match(secret):
        raise ProxyNotConfigured("the connection's stored credential cannot be sent in an HTTP request")
    kind = credential.kind
    if kind == "oauth":  # any OAuth grant's access token: api_auth, default Authorization: Bearer {token}
        return Injection({credential.auth_header: credential.auth_format.replace("{token}", secret)})
    if kind == "api_key_header":  # credential_header: credential_format ({api_key})
        return Injection({credential.auth_header: credential.auth_format.replace("{api_key}", secret)})
    if kind == "api_key_query":  # ?credential_query_param=KEY
        return Injection({}, (credential.auth_query_param, quote(secret, safe="")))
    if kind == "basic":  # the broker sends base64(username:password)
        return Injection({"Authorization": f"Basic {secret}"})
    raise ProxyNotConfigured(f"this gateway cannot inject a credential of kind {kind!r}; upgrade it")


@dataclass(frozen=True)
class Credential:
    connection_id: str
    provider_name: str
    token_version: int
    access_token: str = field(repr=False)
    expires_at: datetime | None
    api_base_url: str
    api_hosts: tuple[str, ...]
    auth_header: str
    auth_format: str = field(repr=False)
    kind: str = "oauth"
    auth_query_param: str = ""
    api_headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_json(cls, body: bytes) -> Credential:
        data = orjson.loads(body)
        expires = data.get("expires_at")
        return cls(
            connection_id=data["connection_id"],
            provider_name=data["provider_name"],
            token_version=int(data["token_version"]),
            access_token=data["access_token"],
            expires_at=datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None,
            api_base_url=data["api_base_url"],
            api_hosts=tuple(data.get("api_hosts") or ()),
            auth_header=data.get("auth_header") or "",
            auth_format=data.get("auth_format") or "",
            kind=data.get("kind") or "oauth",
            auth_query_param=data.get("auth_query_param") or "",
            api_headers=tuple((str(k), str(v)) for k, v in (data.get("api_headers") or {}).items()),
        )

    @property
    def refreshable(self) -> bool:
        """A static credential (API key, login) has nothing to refresh: a 401 is final."""
        return self.kind == "oauth"

    @cached_property
    def injected(self) -> Injection:
        return injection(self)

    @cached_property
    def secrets(self) -> tuple[str, ...]:
        """Every form of the secret that must never reach the agent (masked in bodies, the
        headers holding one dropped): as stored, and as it travels."""
        forms = {self.access_token}
        if self.kind == "api_key_query":
            forms.add(quote(self.access_token, safe=""))
        if self.kind == "basic":
            try:
                password = base64.b64decode(self.access_token, validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                password = ""
            if len(password) >= 8:  # shorter ones would mask ordinary words
                forms.add(password)
        return tuple(sorted((f for f in forms if f), key=len, reverse=True))


class BrokerRefused(Exception):
    """The broker answered a credential call with an error: relay it as it is."""

    def __init__(self, answer: BrokerAnswer) -> None:
        super().__init__(f"broker answered {answer.status}")
        self.answer = answer


_credentials: dict[tuple[str, str], tuple[float, Credential]] = {}
_credentials_lock = threading.Lock()
_CREDENTIALS_MAX = 10_000
_next_sweep = 0.0  # monotonic time of the next pass that drops expired credentials
# A cached credential is never used within this many seconds of its expiry.
_EXPIRY_MARGIN = 30


def _actor(principal) -> str:
    return f"proxy:apikey:{principal.prefix}"


def _remember(tenant: str, credential: Credential) -> None:
    ttl = float(settings.PROXY_TOKEN_CACHE_SECONDS)
    if credential.expires_at is not None:
        ttl = min(ttl, credential.expires_at.timestamp() - time.time() - _EXPIRY_MARGIN)
    if ttl <= 0:
        return
    global _next_sweep
    now = time.monotonic()
    with _credentials_lock:
        if now >= _next_sweep or len(_credentials) >= _CREDENTIALS_MAX:
            # Expired credentials (plaintext tokens) leave memory within one cache lifetime
            # instead of staying until the cache is full.
            for key in [key for key, (until, _) in _credentials.items() if until <= now]:
                del _credentials[key]
            _next_sweep = now + max(1.0, float(settings.PROXY_TOKEN_CACHE_SECONDS))
        if len(_credentials) >= _CREDENTIALS_MAX:
            _credentials.clear()
        _credentials[(tenant, credential.connection_id)] = (now + ttl, credential)


def credential_forget(tenant: str, connection_id: str) -> None:
    """Drop a cached credential (DELETE through this process, a 401 from the provider)."""
    with _credentials_lock:
        _credentials.pop((tenant, connection_id), None)


def credentials_clear() -> None:
    with _credentials_lock:
        _credentials.clear()


def credential_get(principal, connection_id: str, *, client_ip: str | None) -> Credential:
    """The connection's credential: from this process's cache (keyed by workspace and
    environment, so another workspace or environment never sees it) or an audited token
    read at the broker."""
    key = (principal.tenant, connection_id)
    cached = _credentials.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    answer = broker().call(
        "GET",
        internal_path(PROXY_CREDENTIAL, connection_id),
        principal=principal,
        client_ip=client_ip,
        actor=_actor(principal),
    )
    if answer.status != 200:
        raise BrokerRefused(answer)
    credential = Credential.from_json(answer.body)
    _remember(principal.tenant, credential)
    return credential


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    credential: Credential | None = None
    error: BaseException | None = None


_flights: dict[tuple[str, str, int], _Flight] = {}
_flights_lock = threading.Lock()


def credential_refresh(principal, credential: Credential, *, client_ip: str | None) -> Credential:
    """The provider refused `credential`: ask the broker for a refresh that happens only if
    that token version is still the stored one. Calls in this process for the same version
    share one broker call; the broker's row lock and version check make it one provider
    refresh across every process."""
    key = (principal.tenant, credential.connection_id, credential.token_version)
    credential_forget(principal.tenant, credential.connection_id)
    with _flights_lock:
        existing = _flights.get(key)
        leader = existing is None
        flight = _flights[key] = _Flight() if existing is None else existing
    if not leader:
        flight.done.wait(settings.BROKER_READ_TIMEOUT + 5)
        if flight.credential is not None:
            return flight.credential
        raise flight.error or BrokerUnavailable("the refresh did not finish in time; retry shortly", retry_after=2)
    try:
        answer = broker().call(
            "POST",
            internal_path(PROXY_REFRESH, credential.connection_id),
            principal=principal,
            client_ip=client_ip,
            json={"token_version": credential.token_version},
            actor=_actor(principal),
        )
        if answer.status != 200:
            raise BrokerRefused(answer)
        flight.credential = Credential.from_json(answer.body)
        _remember(principal.tenant, flight.credential)
        return flight.credential
    except BaseException as exc:
        flight.error = exc
        raise
    finally:
        flight.done.set()
        with _flights_lock:
            _flights.pop(key, None)


def connection_flag_attention(principal, credential: Credential, *, client_ip: str | None) -> None:
    """The provider refused a token right after its refresh: mark the connection (never fails it)."""
    try:
        broker().call(
            "POST",
            internal_path(PROXY_ATTENTION, credential.connection_id),
            principal=principal,
            client_ip=client_ip,
            json={"token_version": credential.token_version},
            actor=_actor(principal),
        )
    except ApiError:
        logger.warning("could not flag the connection", extra={"connection_id": credential.connection_id})


# -- the path ---------------------------------------------------------------------------------

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_QUERY_FORBIDDEN = re.compile(r"[\x00-\x20\x7f#]")


def check_path(raw: str) -> str:
    """The API path as the agent sent it (percent-encoding kept), or InvalidProxyPath when it
    could change the host or escape the API base: see the module docstring."""
    if not raw.startswith("/") or len(raw) > 4096:
        raise InvalidProxyPath("the API path must start with / and be at most 4096 characters")
    forms = [raw]
    decoded = raw
    for _ in range(3):
        once = unquote(decoded, errors="strict") if "%" in decoded else decoded
        if once == decoded:
            break
        decoded = once
        forms.append(decoded)
    else:
        if "%" in decoded and unquote(decoded) != decoded:
            raise InvalidProxyPath("the API path is percent-encoded too many times")
    for form in forms:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in form):
            raise InvalidProxyPath("the API path must not contain control characters (CR, LF, NUL …)")
        if "\\" in form:
            raise InvalidProxyPath("the API path must not contain a backslash")
        if "//" in form:
            raise InvalidProxyPath("the API path must not contain // (it could name another host)")
        segments = form.split("/")
        if any(segment in (".", "..") for segment in segments):
            raise InvalidProxyPath("the API path must not contain . or .. segments")
        first = segments[1] if len(segments) > 1 else ""
        if _SCHEME.match(first) or first.startswith("@") or "@" in first and ":" in first:
            raise InvalidProxyPath("the API path must not name a scheme or a host")
    if any(c in raw for c in ' "<>`{|}^#?'):
        raise InvalidProxyPath("the API path holds characters that must be percent-encoded")
    return raw


def check_query(raw: str) -> str:
    if _QUERY_FORBIDDEN.search(raw):
        raise InvalidProxyPath("the query string must not contain spaces, control characters or #")
    return raw


# -- the destination --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    base_path: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def target_of(credential: Credential, host_override: str | None) -> Target:
    """Where the call goes: the api_base_url (scheme, host, port, path prefix), on another of
    the provider's API hosts when the agent names one in Dromos-Proxy-Host."""
    scheme, host, port, path = _base_parts(credential.api_base_url)
    if scheme not in ("https", "http") or not host:
        raise DestinationRefused(f"provider {credential.provider_name} has an unusable api_base_url")
    if scheme == "http" and host not in settings.PROXY_ALLOWED_PRIVATE_HOSTS:
        raise DestinationRefused("the provider's API must be https (plain http only for PROXY_ALLOWED_PRIVATE_HOSTS)")
    if host_override is not None:
        wanted = host_override.strip().lower()
        if wanted not in credential.api_hosts:
            allowed = ", ".join(credential.api_hosts)
            raise InvalidProxyPath(f"Dromos-Proxy-Host must be one of the provider's API hosts: {allowed}")
        if wanted != host:
            host, port, path = wanted, 443 if scheme == "https" else 80, ""
    return Target(scheme=scheme, host=host, port=port, base_path=path)


@lru_cache(maxsize=1024)
def _base_parts(api_base_url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of an api_base_url: parsed once, not per call."""
    try:
        base = urlsplit(api_base_url)
        port = base.port
    except ValueError:
        return "", "", 0, ""
    scheme = base.scheme
    return scheme, (base.hostname or "").lower(), port or (443 if scheme == "https" else 80), base.path.rstrip("/")


def _address_refused(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


_resolved: dict[tuple[str, int], tuple[float, str]] = {}


def _getaddrinfo(host: str, port: int) -> list[str]:
    """Every address of `host` (a seam for tests that need a name resolving elsewhere)."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def address_of(target: Target) -> str:
    """The checked address to connect to; DestinationRefused when any address of the host is
    not public (unless the host is in PROXY_ALLOWED_PRIVATE_HOSTS)."""
    key = (target.host, target.port)
    cached = _resolved.get(key)
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        addresses = _getaddrinfo(target.host, target.port)
    except (OSError, UnicodeError):
        raise ProviderUnreachable(f"the provider's API host {target.host} does not resolve") from None
    if not addresses:
        raise ProviderUnreachable(f"the provider's API host {target.host} does not resolve")
    if target.host not in settings.PROXY_ALLOWED_PRIVATE_HOSTS and any(_address_refused(a) for a in addresses):
        logger.warning("proxy refused a private destination", extra={"host": target.host})
        raise DestinationRefused(
            f"the provider's API host {target.host} resolves to a private, loopback or link-local "
            "address; the proxy does not connect there (PROXY_ALLOWED_PRIVATE_HOSTS)"
        )
    if len(_resolved) > 1000:
        _resolved.clear()
    _resolved[key] = (now + settings.PROXY_DNS_CACHE_SECONDS, addresses[0])
    return addresses[0]


_pools: dict[tuple[str, str, str, int], urllib3.HTTPConnectionPool] = {}
_pools_lock = threading.Lock()


def pool_for(target: Target, address: str) -> urllib3.HTTPConnectionPool:
    """A keep-alive pool to the checked address; TLS names and checks the host itself."""
    key = (target.scheme, target.host, address, target.port)
    pool = _pools.get(key)
    if pool is not None:
        return pool
    common = {
        "maxsize": settings.PROXY_POOL_SIZE,
        "block": False,
        "retries": False,
        "timeout": urllib3.Timeout(connect=settings.PROXY_CONNECT_TIMEOUT, read=settings.PROXY_READ_TIMEOUT),
    }
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address,
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            ca_certs=_CA_CERTS,
            **common,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, target.port, **common)
    with _pools_lock:
        if len(_pools) >= 256:
            for stale in _pools.values():
                stale.close()
            _pools.clear()
        return _pools.setdefault(key, pool)


def pools_clear() -> None:
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()
    _resolved.clear()


# -- headers ----------------------------------------------------------------------------------

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded from the agent: its own credentials, our gateway's routing headers, and
# what the proxy sets itself.
_REQUEST_DROPPED = HOP_BY_HOP | {
    "authorization",
    "cookie",
    "cookie2",
    "host",
    "content-length",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "x-request-id",
    "x-api-key",
}
_RESPONSE_DROPPED = HOP_BY_HOP | {"set-cookie", "set-cookie2", "content-length", "alt-svc", "strict-transport-security"}


def request_headers(meta: dict, credential: Credential, target: Target, *, length: int | None) -> dict[str, str]:
    """The agent's headers minus credentials, hop-by-hop and Dromos-* headers, plus the
    template's api_headers where the agent sent none, the injected credential and the right
    Host. An agent's header of the same name as the credential's is dropped, never sent."""
    injected = credential.injected.headers
    listed = {h.strip().lower() for h in meta.get("HTTP_CONNECTION", "").split(",") if h.strip()}
    dropped = _REQUEST_DROPPED | listed | {name.lower() for name in injected}
    headers: dict[str, str] = {}
    for name, value in meta.items():
        if name.startswith("HTTP_"):
            header = name[5:].replace("_", "-").lower()
        elif name == "CONTENT_TYPE" and value:
            header = "content-type"
        else:
            continue
        if header in dropped or header.startswith(("dromos-", "x-dromos-")):
            continue
        headers[header.title()] = value
    for name, value in credential.api_headers:
        if name.title() not in headers and name.lower() not in dropped:
            headers[name.title()] = value
    headers["Host"] = target.host_header
    headers.update(injected)
    if length is not None:
        headers["Content-Length"] = str(length)
    return headers


def upstream_target(base_path: str, path: str, query: str, credential: Credential) -> str:
    """The request target sent upstream: the API base's path, the agent's path and query, and
    the credential's query parameter when it travels in the query (never logged: see
    dromos.logging.UrlQueryFilter). An agent query naming that parameter is refused (400) rather than
    rewritten or sent twice."""
    injected = credential.injected.query
    if injected is not None:
        name = injected[0].lower()
        for pair in re.split("[&;]", query):
            given = unquote_plus(pair.partition("=")[0]).strip().lower()
            if given == name:
                raise InvalidRequest(
                    f"the query parameter {injected[0]!r} carries this connection's credential and is set by "
                    "the proxy; remove it from the query"
                )
        query = f"{query}&{injected[0]}={injected[1]}" if query else f"{injected[0]}={injected[1]}"
    return base_path + path + (f"?{query}" if query else "")


def response_headers(upstream: urllib3.BaseHTTPResponse, credential: Credential) -> list[tuple[str, str]]:
    listed = {h.strip().lower() for h in upstream.headers.get("Connection", "").split(",") if h.strip()}
    secrets = credential.secrets
    kept = []
    for name, value in upstream.headers.items():
        lowered = name.lower()
        if lowered in _RESPONSE_DROPPED or lowered in listed or lowered.startswith("dromos-"):
            continue
        if any(secret in value for secret in secrets):
            continue  # a provider echoing the credential in a header (a Location with ?api_key=): never relayed
        kept.append((name, value))
    return kept


# -- the answer's body ------------------------------------------------------------------------

CHUNK = 64 * 1024


def body_chunks(upstream: urllib3.BaseHTTPResponse, secrets: tuple[str, ...], counter: list[int]) -> Iterator[bytes]:
    """The provider's body as it arrives, with any occurrence of the credential (each of
    `secrets`, longest first) masked by as many `*` (the length stays, so Content-Length
    stays true). A body cut short raises UpstreamBroken: the agent's response must break,
    never end as if complete."""
    needles = [secret.encode() for secret in secrets if secret]
    keep = max((len(needle) for needle in needles), default=1) - 1
    carry = b""
    try:
        for chunk in upstream.stream(CHUNK, decode_content=False):
            if not chunk:
                continue
            if needles:
                data = carry + chunk
                for needle in needles:
                    data = data.replace(needle, b"*" * len(needle))
                carry, chunk = (data[-keep:], data[:-keep]) if keep and len(data) > keep else (data, b"")
                if not chunk:
                    continue
            counter[0] += len(chunk)
            yield chunk
        if carry:
            counter[0] += len(carry)
            yield carry
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise UpstreamBroken(type(exc).__name__) from None
