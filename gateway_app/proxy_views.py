"""`/v1/proxy/{connection_id}/{path}`: an authenticated call to the provider's API with the
connection's credential injected; the agent never sees the token (issue 15, docs/api.md).

Order of checks, each answered before anything later happens: API key and scope `proxy`
(401/403), connection id and path (400, no connection made), the key's egress policy for
method and path (403 `proxy_forbidden`, no broker or provider call), body size declared
(413), credential from the broker (404/409), the policy for the connection's provider
(403, no provider call), the destination (SSRF guard, gateway_app.proxy), then the provider."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import urllib3
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from urllib3.exceptions import HTTPError, ReadTimeoutError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from dromos.errors import ApiError, InvalidRequest, error_response
from dromos.renderers import JSONOnlyNegotiation
from gateway_app import proxy
from gateway_app.apis import (
    CONNECTION_ID_PARAMETER,
    ERRORS,
    GatewayApi,
    check_connection_id,
    relay_answer,
    request_client_ip,
)
from gateway_app.bulkhead import slow_call_slot
from gateway_app.egress import policy_for
from gateway_app.metrics import (
    PROXY_BYTES,
    PROXY_OVERHEAD_SECONDS,
    PROXY_RATE_LIMITED,
    PROXY_REFRESHES,
    PROXY_REQUESTS,
    PROXY_SECONDS,
)
from gateway_app.proxy_audit import audit_submit

logger = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
OPTION_HEADERS = {"dromos-proxy-retry", "dromos-proxy-retries", "dromos-proxy-host"}
_PREFIX = "/v1/proxy/"


@dataclass
class Call:
    """What the audit row and the metrics need about one proxied call."""

    principal: object
    connection_id: str
    method: str
    path: str
    started: float
    provider: str = ""
    host: str = ""
    bytes_sent: int = 0
    attempts: int = 0
    upstream_seconds: float = 0.0

    def finish(self, status: int, *, error: str = "", received: int = 0) -> None:
        provider = self.provider or "unknown"
        PROXY_REQUESTS.labels(provider=provider, method=self.method, status=str(status)).inc()
        if received:
            PROXY_BYTES.labels(provider=provider, direction="received").inc(received)
        if self.bytes_sent:
            PROXY_BYTES.labels(provider=provider, direction="sent").inc(self.bytes_sent)
        try:
            audit_submit(
                {
                    "workspace": self.principal.workspace,
                    "key_prefix": self.principal.prefix,
                    "connection_id": self.connection_id,
                    "provider": self.provider,
                    "method": self.method,
                    "host": self.host,
                    "path": self.path[:2048],
                    "status": status,
                    "error": error,
                    "bytes_sent": self.bytes_sent,
                    "bytes_received": received,
                    "duration_ms": int((time.perf_counter() - self.started) * 1000),
                    "attempts": self.attempts,
                    "created_at": timezone.now(),
                }
            )
        except Exception:  # the agent's answer is already on its way; say so, do not hide it
            logger.exception("proxy audit row not queued", extra={"connection_id": self.connection_id})


class Body:
    """The request body: kept in memory when small enough to send again, otherwise read
    from the client as it is sent upstream (once), counted against PROXY_MAX_BODY_BYTES."""

    def __init__(self, request, *, replay: bool) -> None:
        self.django = request._request
        meta = request.META
        self.read = 0
        raw_length = meta.get("CONTENT_LENGTH") or ""
        self.chunked = not raw_length and bool(meta.get("wsgi.input_terminated")) and _has_body(meta)
        try:
            self.length = int(raw_length) if raw_length else (None if self.chunked else 0)
        except ValueError:
            raise InvalidRequest("Content-Length must be an integer") from None
        if self.length is not None and self.length < 0:
            raise InvalidRequest("Content-Length must not be negative")
        limit = settings.PROXY_MAX_BODY_BYTES
        if self.length is not None and self.length > limit:
            raise proxy.BodyTooLarge(f"the request body is larger than {limit} bytes (PROXY_MAX_BODY_BYTES)")
        self.data: bytes | None = None
        if self.length == 0:
            self.data = b""
        elif replay and self.length is not None and self.length <= settings.PROXY_REPLAY_MAX_BYTES:
            self.data = b"".join(self._chunks())
        self.used = False

    def _chunks(self) -> Iterator[bytes]:
        stream = self.django.environ["wsgi.input"] if self.chunked else self.django
        limit = settings.PROXY_MAX_BODY_BYTES
        while True:
            chunk = stream.read(proxy.CHUNK)
            if not chunk:
                return
            self.read += len(chunk)
            if self.read > limit:
                raise proxy.BodyTooLarge(f"the request body is larger than {limit} bytes (PROXY_MAX_BODY_BYTES)")
            yield chunk

    @property
    def replayable(self) -> bool:
        return self.data is not None

    def payload(self) -> bytes | Iterator[bytes] | None:
        if self.data is not None:
            return self.data or None
        if self.used:
            raise RuntimeError("a streamed body cannot be sent twice")
        self.used = True
        return self._chunks()

    @property
    def sent(self) -> int:
        return len(self.data) if self.data is not None else self.read


def _has_body(meta: dict) -> bool:
    return "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower()


def _raw_path(request, connection_id: str) -> str:
    """The API path as the agent sent it (percent-encoding kept) where the server says
    (gunicorn's RAW_URI); else the decoded path, re-checked the same way."""
    prefix = f"{_PREFIX}{connection_id}"
    raw = request.META.get("RAW_URI") or request.META.get("REQUEST_URI") or ""
    raw = raw.split("?", 1)[0]
    if raw.startswith(prefix + "/"):
        return raw[len(prefix) :]
    from urllib.parse import quote

    path = request.path_info
    return quote(path[len(prefix) :], safe="/:@!$&'()*+,;=-._~%") if path.startswith(prefix) else "/"


def _options(request, method: str) -> tuple[bool, int, str | None]:
    meta = request.META
    for name in meta:
        if name.startswith("HTTP_DROMOS_"):
            header = name[5:].replace("_", "-").lower()
            if header not in OPTION_HEADERS:
                raise InvalidRequest(
                    f"unknown proxy option header {header.title()}; known: Dromos-Proxy-Retry, "
                    "Dromos-Proxy-Retries, Dromos-Proxy-Host"
                )
    retry_flag = meta.get("HTTP_DROMOS_PROXY_RETRY", "").strip().lower()
    if retry_flag not in ("", "true", "false"):
        raise InvalidRequest("Dromos-Proxy-Retry must be true or false")
    raw_retries = meta.get("HTTP_DROMOS_PROXY_RETRIES", "").strip()
    try:
        retries = int(raw_retries) if raw_retries else 0
    except ValueError:
        raise InvalidRequest("Dromos-Proxy-Retries must be an integer") from None
    if not 0 <= retries <= settings.PROXY_MAX_RETRIES:
        raise InvalidRequest(f"Dromos-Proxy-Retries must be between 0 and {settings.PROXY_MAX_RETRIES}")
    host = meta.get("HTTP_DROMOS_PROXY_HOST")
    return method in IDEMPOTENT or retry_flag == "true", retries, host


def _retry_after(upstream: urllib3.BaseHTTPResponse) -> float | None:
    value = upstream.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    if value:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
    return None


def _discard(upstream: urllib3.BaseHTTPResponse) -> None:
    """Let go of an answer we will not relay; keep the connection only if little is left."""
    try:
        length = upstream.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) <= proxy.CHUNK:
            upstream.drain_conn()
        else:
            upstream.close()
    except (HTTPError, OSError):
        upstream.close()
    finally:
        upstream.release_conn()


PROXY_SCHEMA = dict(
    summary="Call the provider's API with the connection's credential",
    description=(
        "Any method (GET, HEAD, POST, PUT, PATCH, DELETE). Forwards to the provider's api_base_url + "
        "/{path} with the query string, the body and the agent's headers minus Authorization, cookies, "
        "hop-by-hop and Dromos-* headers. The answer is the provider's, streamed, plus "
        "Dromos-Connection-Id. Options: Dromos-Proxy-Retry: true (retry a non-idempotent call once "
        "after a refresh), Dromos-Proxy-Retries: N (retry 429/5xx), Dromos-Proxy-Host (another of the "
        "provider's API hosts). See docs/api.md."
    ),
    parameters=[
        CONNECTION_ID_PARAMETER,
        OpenApiParameter("path", OpenApiTypes.STR, OpenApiParameter.PATH, description="The API path"),
        OpenApiParameter("Dromos-Proxy-Retry", OpenApiTypes.BOOL, OpenApiParameter.HEADER),
        OpenApiParameter("Dromos-Proxy-Retries", OpenApiTypes.INT, OpenApiParameter.HEADER),
        OpenApiParameter("Dromos-Proxy-Host", OpenApiTypes.STR, OpenApiParameter.HEADER),
    ],
    request=OpenApiTypes.BINARY,
    responses={
        (200, "*/*"): OpenApiResponse(OpenApiTypes.BINARY, description="The provider's answer, as it is"),
        **{k: v for k, v in ERRORS.items() if k in (400, 401, 403, 404, 409, 429, 503)},
        413: OpenApiResponse(ERRORS[400].response, description="Body over PROXY_MAX_BODY_BYTES"),
        502: OpenApiResponse(ERRORS[502].response, description="Provider unreachable or destination refused"),
        504: OpenApiResponse(ERRORS[502].response, description="Provider did not answer in time"),
    },
)


class ProxyApi(GatewayApi):
    """Forward one API call to the connection's provider with its credential injected."""

    required_scope = "proxy"
    # The agent's query string belongs to the provider: DRF's `?format=` must not act on it.
    content_negotiation_class = JSONOnlyNegotiation

    @extend_schema(operation_id="proxy_get", **PROXY_SCHEMA)
    def get(self, request, connection_id: str, path: str = ""):
        return self._proxy(request, connection_id)

    @extend_schema(operation_id="proxy_post", **PROXY_SCHEMA)
    def post(self, request, connection_id: str, path: str = ""):
        return self._proxy(request, connection_id)

    @extend_schema(operation_id="proxy_put", **PROXY_SCHEMA)
    def put(self, request, connection_id: str, path: str = ""):
        return self._proxy(request, connection_id)

    @extend_schema(operation_id="proxy_patch", **PROXY_SCHEMA)
    def patch(self, request, connection_id: str, path: str = ""):
        return self._proxy(request, connection_id)

    @extend_schema(operation_id="proxy_delete", **PROXY_SCHEMA)
    def delete(self, request, connection_id: str, path: str = ""):
        return self._proxy(request, connection_id)

    @extend_schema(operation_id="proxy_head", **PROXY_SCHEMA)
    def head(self, request, connection_id: str, path: str = ""):
        return self._proxy(request, connection_id)

    def _proxy(self, request, connection_id: str):
        method = request.method.upper()
        principal = request.user
        call = Call(principal=principal, connection_id=connection_id[:64], method=method, path="", started=0.0)
        call.started = time.perf_counter()
        try:
            check_connection_id(connection_id)
            call.path = _raw_path(request, connection_id)
            # A slot of the key's and workspace's bulkhead until the provider's answer
            # headers arrive (refresh and retries included); the body streams after it.
            with slow_call_slot(principal):
                return self._forward(request, call)
        except ApiError as exc:
            call.finish(exc.status_code, error=exc.code)
            return error_response(exc)
        except proxy.BrokerRefused as refused:
            call.finish(refused.answer.status, error="broker")
            return relay_answer(refused.answer)

    def _forward(self, request, call: Call):
        principal, method = call.principal, call.method
        path = proxy.check_path(call.path)
        meta = request._request.META  # (DRF's Request forwards each attribute lookup)
        query = proxy.check_query(meta.get("QUERY_STRING", ""))
        retry_ok, retries, host_override = _options(request, method)
        policy = policy_for(principal.key_id)
        if not policy.allows_any(method, path):
            raise proxy.ProxyForbidden(
                f"this API key's egress policy has no rule for {method} {path}",
                missing_rule=f"<provider> {method} {path}",
            )
        body = Body(request, replay=retry_ok or retries > 0)
        client_ip = request_client_ip(request._request)
        credential = proxy.credential_get(principal, call.connection_id, client_ip=client_ip)
        call.provider = credential.provider_name
        if not policy.allows(credential.provider_name, method, path):
            rule = f"{credential.provider_name} {method} {path}"
            raise proxy.ProxyForbidden(f"this API key's egress policy has no rule '{rule}'", missing_rule=rule)
        target = proxy.target_of(credential, host_override)
        call.host = target.host
        upstream_path = proxy.upstream_target(target.base_path, path, query, credential)
        address = proxy.address_of(target)

        refreshed = False
        while True:
            call.attempts += 1
            upstream = self._send(call, target, address, credential, request, body, upstream_path)
            status = upstream.status
            if status == 401 and not credential.refreshable:
                # A static credential (API key, login) the provider refuses: nothing to
                # refresh. Flag the connection (check-connection shows it) and relay the 401.
                proxy.credential_forget(principal.tenant, credential.connection_id)
                proxy.connection_flag_attention(principal, credential, client_ip=client_ip)
                return self._relay_upstream(call, upstream, credential)
            if status == 401 and not refreshed:
                refreshed = True
                fresh = self._refresh(principal, credential, client_ip, call)
                if fresh is not None and retry_ok and (body.replayable or body.length == 0):
                    _discard(upstream)
                    credential = fresh
                    upstream_path = proxy.upstream_target(target.base_path, path, query, credential)
                    continue
                return self._relay_upstream(call, upstream, credential)
            if status == 401 and refreshed and call.attempts > 1:
                proxy.connection_flag_attention(principal, credential, client_ip=client_ip)
                PROXY_REFRESHES.labels(provider=credential.provider_name, outcome="rejected_again").inc()
                return self._relay_upstream(call, upstream, credential)
            if (status == 429 or status >= 500) and retries > 0 and (status == 429 or retry_ok) and body.replayable:
                wait = _retry_after(upstream)
                if wait is None:
                    wait = min(settings.PROXY_MAX_RETRY_WAIT_SECONDS, 0.25 * 2 ** (call.attempts - 1))
                    wait *= random.uniform(0.5, 1.0)
                if wait <= settings.PROXY_MAX_RETRY_WAIT_SECONDS:
                    retries -= 1
                    _discard(upstream)
                    time.sleep(wait)
                    continue
            return self._relay_upstream(call, upstream, credential)

    def _send(self, call, target, address, credential, request, body: Body, upstream_path: str):
        payload = body.payload() if method_has_body(call.method, body) else None
        length = body.length if payload is not None else None
        headers = proxy.request_headers(request._request.META, credential, target, length=length)
        pool = proxy.pool_for(target, address)
        sent_at = time.perf_counter()
        try:
            upstream = pool.urlopen(
                call.method,
                upstream_path,
                body=payload,
                headers=headers,
                redirect=False,
                retries=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                chunked=payload is not None and length is None,
                release_conn=False,
            )
        except proxy.BodyTooLarge:
            raise
        except ReadTimeoutError:
            raise proxy.ProviderTimeout(
                f"the provider did not answer within {settings.PROXY_READ_TIMEOUT:g} s (PROXY_READ_TIMEOUT)"
            ) from None
        except Urllib3Timeout:
            raise proxy.ProviderUnreachable(
                f"could not connect to the provider's API at {target.host} in time"
            ) from None
        except (HTTPError, OSError) as exc:
            logger.warning("provider unreachable", extra={"host": target.host, "reason": type(exc).__name__})
            raise proxy.ProviderUnreachable(f"could not reach the provider's API at {target.host}") from None
        finally:
            call.bytes_sent = body.sent
        call.upstream_seconds += time.perf_counter() - sent_at
        PROXY_SECONDS.labels(provider=credential.provider_name).observe(time.perf_counter() - sent_at)
        return upstream

    def _refresh(self, principal, credential, client_ip, call):
        """One refresh for a 401 (shared with concurrent callers); None when it failed."""
        try:
            fresh = proxy.credential_refresh(principal, credential, client_ip=client_ip)
        except proxy.BrokerRefused as refused:
            outcome = "failed" if refused.answer.status == 409 else f"error_{refused.answer.status}"
            PROXY_REFRESHES.labels(provider=credential.provider_name, outcome=outcome).inc()
            return None
        except ApiError:
            PROXY_REFRESHES.labels(provider=credential.provider_name, outcome="broker_unavailable").inc()
            return None
        PROXY_REFRESHES.labels(provider=credential.provider_name, outcome="refreshed").inc()
        return fresh

    def _relay_upstream(self, call: Call, upstream: urllib3.BaseHTTPResponse, credential) -> HttpResponse:
        status = upstream.status
        if status == 429:
            PROXY_RATE_LIMITED.labels(provider=credential.provider_name).inc()
        own = time.perf_counter() - call.started - call.upstream_seconds
        PROXY_OVERHEAD_SECONDS.labels(provider=credential.provider_name).observe(max(0.0, own))
        counter = [0]
        chunks = proxy.body_chunks(upstream, credential.secrets, counter)

        def stream() -> Iterator[bytes]:
            outcome, error = status, ""
            try:
                yield from chunks
            except proxy.UpstreamBroken as broken:
                outcome, error = 502, "upstream_broken"
                logger.warning(
                    "provider answer broke off mid-body: response aborted",
                    extra={"connection_id": call.connection_id, "reason": str(broken)},
                )
                raise
            except GeneratorExit:
                outcome, error = 499, "client_closed"
                raise
            finally:
                upstream.release_conn()
                call.finish(outcome, error=error, received=counter[0])

        response = StreamingHttpResponse(stream(), status=status)
        response.reason_phrase = upstream.reason or response.reason_phrase
        if "Content-Type" not in upstream.headers:
            del response["Content-Type"]
        for name, value in proxy.response_headers(upstream, credential):
            response[name] = value
        length = upstream.headers.get("Content-Length")
        if length is not None and length.isdigit() and not upstream.headers.get("Transfer-Encoding"):
            response["Content-Length"] = length
        response["Dromos-Connection-Id"] = call.connection_id
        return response


def method_has_body(method: str, body: Body) -> bool:
    return method not in ("GET", "HEAD") or bool(body.length) or body.chunked
