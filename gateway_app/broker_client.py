"""The gateway's HTTP client for the broker: one pooled keep-alive session per process,
timeouts on every call, and honest status mapping:

- broker unreachable (connection refused, connect timeout, read timeout) → 503 + Retry-After;
- broker answered 5xx without our error shape or as a crash (`server_error`), or something
  that is not JSON → 502;
- broker refused the gateway itself (401/403: wrong BROKER_API_KEY, address outside
  BROKER_ALLOWED_CIDRS) → 502, so an agent is never told its own key is bad;
- otherwise the broker's JSON answer (including its 4xx and provider 502/503) passes through.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import orjson
import urllib3
from django.conf import settings
from urllib3.exceptions import ConnectTimeoutError, HTTPError, TimeoutError

from dromos import tracing
from dromos.errors import BadGateway, BrokerUnavailable
from dromos.logging import request_id_var
from dromos.wire import ENVIRONMENT_HEADER
from gateway_app.broker_http import Answer, LeanHTTP
from gateway_app.metrics import observe_broker_call

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAnswer:
    status: int
    body: bytes
    retry_after: str | None


class BrokerClient:
    """urllib3's connection pool used directly: the gateway makes one kind of call to one
    host, so requests' per-call work (proxy lookup in the environment, cookie jar, hooks,
    settings merge) would only cost CPU on the hot path (issue 7)."""

    def __init__(self) -> None:
        url = urllib3.util.parse_url(settings.BROKER_INTERNAL_URL)
        self.base_path = (url.path or "").rstrip("/")
        self.pool = urllib3.connection_from_url(
            settings.BROKER_INTERNAL_URL,
            maxsize=settings.BROKER_POOL_SIZE,  # idle keep-alive connections kept per process
            block=False,  # more concurrent calls than that open extra (short-lived) connections
            retries=False,
            timeout=urllib3.Timeout(connect=settings.BROKER_CONNECT_TIMEOUT, read=settings.BROKER_READ_TIMEOUT),
            headers={
                "X-API-Key": settings.BROKER_API_KEY,
                "Accept": "application/json",
                "User-Agent": "dromos-gateway/1.0",
            },
        )

        # GETs without a body over plain http (the token fetch): the lean keep-alive client.
        self.lean = (
            LeanHTTP(
                url.host,
                url.port or 80,
                connect_timeout=settings.BROKER_CONNECT_TIMEOUT,
                read_timeout=settings.BROKER_READ_TIMEOUT,
                headers=self.pool.headers,
            )
            if url.scheme == "http" and settings.BROKER_LEAN_CLIENT
            else None
        )

    def _request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None = None,
        timeout: urllib3.Timeout | None = None,
    ) -> urllib3.BaseHTTPResponse | Answer:
        if self.lean is not None and method == "GET" and body is None and timeout is None and not tracing.active():
            return self.lean.request(method, self.base_path + path, headers)
        return self.pool.urlopen(
            method,
            self.base_path + path,
            body=body,
            headers={**self.pool.headers, **headers},
            retries=False,
            redirect=False,
            assert_same_host=False,
            timeout=timeout or self.pool.timeout,
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        principal,
        client_ip: str | None = None,
        json: dict | None = None,
        params: dict | None = None,
        actor: str | None = None,
    ) -> BrokerAnswer:
        headers = {
            "X-Dromos-Workspace": principal.workspace,
            ENVIRONMENT_HEADER: principal.environment,
            "X-Dromos-Actor": actor or f"apikey:{principal.prefix}",
            "X-Request-ID": request_id_var.get(),
        }
        if client_ip:
            headers["X-Dromos-Client-IP"] = client_ip
        body = None
        if json is not None:
            body = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        target = f"{path}?{urlencode(params, doseq=True)}" if params else path
        started = time.perf_counter()
        try:
            response = self._request(method, target, headers, body)
        except TimeoutError as exc:
            if isinstance(exc, ConnectTimeoutError):  # includes "connection refused"
                observe_broker_call(method, path, "unreachable", started)
                logger.warning("broker unreachable", extra={"path_template": path.split("/")[3:4]})
                raise BrokerUnavailable("the broker is unreachable; retry shortly", retry_after=2) from None
            observe_broker_call(method, path, "timeout", started)
            logger.warning("broker timed out")
            raise BrokerUnavailable("the broker did not answer in time; retry shortly", retry_after=2) from None
        except HTTPError:  # connection reset, closed mid-answer …
            observe_broker_call(method, path, "unreachable", started)
            logger.warning("broker unreachable", extra={"path_template": path.split("/")[3:4]})
            raise BrokerUnavailable("the broker is unreachable; retry shortly", retry_after=2) from None
        status, content = response.status, response.data
        observe_broker_call(method, path, str(status), started)
        if status == 204 and not content:  # deleted, nothing to say (DELETE workspace-providers)
            return BrokerAnswer(204, b"", None)
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("application/json") or not content.startswith(b"{"):
            logger.warning("broker answered without JSON", extra={"status": status})
            raise BadGateway(f"the broker answered {status} without a JSON body")
        if status >= 500 and _error_code(content) in (None, "server_error"):
            # The broker's own 5xx errors (token_unreadable, provider_error, provider_unavailable,
            # service_unavailable) pass through; a crash or a foreign body is a bad upstream here.
            raise BadGateway(f"the broker answered {status}")
        if status in (401, 403):
            # The broker refused the gateway itself (BROKER_API_KEY or BROKER_ALLOWED_CIDRS):
            # an operator's misconfiguration, not the agent's key; never relay it as the agent's 401.
            logger.error(
                "broker refused the gateway: check BROKER_API_KEY and BROKER_ALLOWED_CIDRS", extra={"status": status}
            )
            raise BadGateway("the broker refused the gateway's credentials")
        return BrokerAnswer(status, content, response.headers.get("retry-after"))

    def stream(self, path: str, *, principal, client_ip: str | None, params: dict) -> urllib3.BaseHTTPResponse:
        """A GET whose answer is read as it arrives (the audit export): a 200 that is not
        NDJSON is a bad upstream; any other status is read whole and raised as `call` would."""
        headers = {
            "X-Dromos-Workspace": principal.workspace,
            ENVIRONMENT_HEADER: principal.environment,
            "X-Dromos-Actor": f"apikey:{principal.prefix}",
            "X-Request-ID": request_id_var.get(),
        }
        if client_ip:
            headers["X-Dromos-Client-IP"] = client_ip
        target = f"{path}?{urlencode(params, doseq=True)}" if params else path
        try:
            response = self.pool.urlopen(
                "GET",
                self.base_path + target,
                headers={**self.pool.headers, **headers},
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                timeout=self.pool.timeout,
            )
        except HTTPError:
            raise BrokerUnavailable("the broker is unreachable; retry shortly", retry_after=2) from None
        return response

    def healthy(self) -> bool:
        try:
            return self._request("GET", "/healthz", {}, timeout=urllib3.Timeout(connect=1, read=2)).status == 200
        except HTTPError:
            return False


def _error_code(content: bytes) -> str | None:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


_client: BrokerClient | None = None


def broker() -> BrokerClient:
    global _client
    if _client is None:
        _client = BrokerClient()
    return _client


def reset() -> None:
    """Forget the shared client (tests that change BROKER_INTERNAL_URL)."""
    global _client
    _client = None


def readiness() -> dict[str, bool]:
    return {"broker": broker().healthy()}
