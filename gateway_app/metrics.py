"""Prometheus metrics of the gateway (exposed at /metrics): calls to the broker and token fetches.

Operations are labelled by path template (`GET /internal/v1/connections/{id}/token`),
never by a connection id, so the number of series stays bounded."""

from __future__ import annotations

import logging
import time
from functools import lru_cache

from prometheus_client import Counter, Histogram

from dromos import redis as shared_redis

logger = logging.getLogger(__name__)

BROKER_CALL_SECONDS = Histogram(
    "dromos_gateway_broker_call_seconds",
    "Latency of the gateway's calls to the broker by operation and outcome (HTTP status, unreachable, timeout)",
    ["operation", "outcome"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TOKEN_FETCHES = Counter(
    "dromos_gateway_token_fetches_total",
    "GET /v1/token calls answered by the broker, by outcome (HTTP status, unreachable, timeout)",
    ["outcome"],
)

DEGRADED = Counter(
    "dromos_degraded_total",
    "Requests served in a degraded mode because Redis was unreachable, by what was skipped "
    "(rate_limit: not enforced; revocation_marker: not read or not written)",
    ["component"],
)

_last_degraded_log: dict[str, float] = {}


def degraded(component: str, message: str, *, always: bool = False, failed: bool = False) -> None:
    """Count a request served without Redis and log why (at most every 10 s per component
    unless `always`); `failed`: this call failed, so Redis rests (dromos.redis.trip)."""
    DEGRADED.labels(component=component).inc()
    if failed:
        shared_redis.trip()
    now = time.monotonic()
    if always or now - _last_degraded_log.get(component, -1e9) >= 10:
        _last_degraded_log[component] = now
        logger.warning(message)


def operation_of(method: str, path: str) -> str:
    """`METHOD /path` with every `/connections/<id>` segment as `/connections/{id}` (what
    `re.sub(r"(/connections/)[^/]+", r"\1{id}", …)` gives), with string slicing: the regex's
    template substitution was 5 % of a gateway token fetch (issue 20)."""
    path = path.split("?", 1)[0]
    marker, found, parts = "/connections/", path.find("/connections/"), []
    while found >= 0:
        start = found + len(marker)
        end = path.find("/", start)
        end = len(path) if end < 0 else end
        if end > start:  # `[^/]+`: at least one character
            parts.append(path[:start] + "{id}")
            path = path[end:]
            found = path.find(marker)
        else:
            found = path.find(marker, start)
    return f"{method} {''.join(parts)}{path}"


@lru_cache(maxsize=1024)
def _call_series(operation: str, outcome: str, token_fetch: bool) -> tuple:
    """The broker-call histogram's child and, for a token fetch, the fetch counter's child."""
    fetches = TOKEN_FETCHES.labels(outcome=outcome) if token_fetch else None
    return BROKER_CALL_SECONDS.labels(operation=operation, outcome=outcome), fetches


def observe_broker_call(method: str, path: str, outcome: str, started: float) -> None:
    """Record one broker call that began at `started` (time.perf_counter()). The series'
    children are looked up once per (operation, outcome) (issue 20: prometheus_client's
    `labels()` takes a lock and builds its key on every call)."""
    elapsed = time.perf_counter() - started
    operation = operation_of(method, path)
    series = _call_series(operation, outcome, method == "GET" and operation.endswith("/{id}/token"))
    series[0].observe(elapsed)
    if series[1] is not None:
        series[1].inc()


# Labelled, like every metric here: an unlabelled one would create its multiprocess file at
# import, also in commands (migrate) that run without PROMETHEUS_MULTIPROC_DIR prepared.
AUTH_THROTTLED = Counter(
    "dromos_gateway_auth_throttled_total",
    "API-key authentications refused (429) by reason (address: its source address failed too "
    "often, API_KEY_AUTH_FAILURE_LIMIT)",
    ["reason"],
)


# -- the API proxy (issue 15): labelled by provider name, method and status, never by a
# connection, a path or anything a caller chooses freely.
PROXY_REQUESTS = Counter(
    "dromos_proxy_requests_total",
    "Proxied API calls by provider, method and the status the agent received",
    ["provider", "method", "status"],
)
PROXY_SECONDS = Histogram(
    "dromos_proxy_request_seconds",
    "Proxied API calls: time until the provider's answer headers reached the gateway, by provider",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PROXY_OVERHEAD_SECONDS = Histogram(
    "dromos_proxy_overhead_seconds",
    "Proxied API calls: the gateway's own time (authentication, policy, credential, connection set-up), by provider",
    ["provider"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
PROXY_BYTES = Counter(
    "dromos_proxy_bytes_total",
    "Proxied body bytes by provider and direction (sent, received)",
    ["provider", "direction"],
)
PROXY_RATE_LIMITED = Counter(
    "dromos_proxy_rate_limited_total", "Provider answers 429 passed to agents, by provider", ["provider"]
)
PROXY_REFRESHES = Counter(
    "dromos_proxy_refreshes_total",
    "Refreshes the proxy asked for after a provider's 401, by provider and outcome",
    ["provider", "outcome"],
)
PROXY_AUDIT_DROPPED = Counter(
    "dromos_proxy_audit_dropped_total",
    "Proxy audit rows dropped because too many waited for an unreachable database (gateway_app.proxy_audit)",
)
