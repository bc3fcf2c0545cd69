"""The gateway's HTTP client for the broker: one pooled keep-alive session per process,
timeouts on every call, and honest status mapping:

- broker unreachable (connection refused, connect timeout, read timeout) → 503 + Retry-After;
- broker answered 5xx without our error shape, or something that is not JSON → 502;
- otherwise the broker's JSON answer (including its 4xx and provider 502/503) passes through.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

from dromos.errors import BadGateway, BrokerUnavailable
from dromos.logging import request_id_var
from gateway_app.metrics import observe_broker_call

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAnswer:
    status: int
    body: bytes
    retry_after: str | None


class BrokerClient:
    def __init__(self) -> None:
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=settings.BROKER_POOL_SIZE, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"X-API-Key": settings.BROKER_API_KEY, "Accept": "application/json",
                                     "User-Agent": "dromos-gateway/1.0"})
        self.base = settings.BROKER_INTERNAL_URL
        self.timeout = (settings.BROKER_CONNECT_TIMEOUT, settings.BROKER_READ_TIMEOUT)

    def call(self, method: str, path: str, *, principal, client_ip: str | None = None,
             json: dict | None = None, params: dict | None = None) -> BrokerAnswer:
        headers = {
            "X-Dromos-Workspace": principal.workspace,
            "X-Dromos-Actor": f"apikey:{principal.prefix}",
            "X-Request-ID": request_id_var.get(),
        }
        if client_ip:
            headers["X-Dromos-Client-IP"] = client_ip
        started = time.perf_counter()
        try:
            response = self.session.request(method, self.base + path, json=json, params=params,
                                            headers=headers, timeout=self.timeout, allow_redirects=False)
        except requests.ConnectionError:
            observe_broker_call(method, path, "unreachable", started)
            logger.warning("broker unreachable", extra={"path_template": path.split("/")[3:4]})
            raise BrokerUnavailable("the broker is unreachable; retry shortly", retry_after=2) from None
        except requests.Timeout:
            observe_broker_call(method, path, "timeout", started)
            logger.warning("broker timed out")
            raise BrokerUnavailable("the broker did not answer in time; retry shortly", retry_after=2) from None
        observe_broker_call(method, path, str(response.status_code), started)
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("application/json") or not response.content.startswith(b"{"):
            logger.warning("broker answered without JSON", extra={"status": response.status_code})
            raise BadGateway(f"the broker answered {response.status_code} without a JSON body")
        if response.status_code >= 500 and b'"error"' not in response.content:
            raise BadGateway(f"the broker answered {response.status_code}")
        return BrokerAnswer(response.status_code, response.content, response.headers.get("Retry-After"))

    def healthy(self) -> bool:
        try:
            return self.session.get(self.base + "/healthz", timeout=(1, 2)).status_code == 200
        except requests.RequestException:
            return False


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
