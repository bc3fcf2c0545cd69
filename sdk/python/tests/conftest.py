"""Shared fixtures: a scripted fake gateway and a harness that drives either client.

Every behavioural test takes the ``harness`` fixture, parametrized over the sync and the
async client, so both are held to exactly the same rules.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from dromos_sdk import AsyncDromosClient, DromosClient, RetryPolicy

BASE_URL = "https://gw.example.test"
API_KEY = "dk_test_0123456789abcdef"
ACCESS_TOKEN = "ya29.super-secret-access-token"
ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-id-token.sig"

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def connection_json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "connection_id": "c_abc123",
        "status": "active",
        "provider_name": "google",
        "provider_id": "p_1",
        "user_id": "user-42",
        "scopes": ["openid", "email"],
        "granted_scopes": ["openid", "email"],
        "scopes_narrowed": False,
        "error": None,
        "error_description": None,
        "account": {"sub": "1234", "email": "ada@example.com"},
        "metadata": {},
        "expires_at": "2026-11-26T21:00:00Z",
        "created_at": "2026-11-26T20:00:00Z",
        "updated_at": "2026-11-26T20:00:05Z",
        "activated_at": "2026-11-26T20:00:05Z",
        "last_refreshed_at": None,
    }
    data.update(overrides)
    return data


def token_json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "access_token": ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_at": "2026-11-26T21:00:00Z",
        "id_token": ID_TOKEN,
        "scopes": ["openid", "email"],
        "provider_name": "google",
        "connection_id": "c_abc123",
    }
    data.update(overrides)
    return data


def provider_json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "google",
        "display_name": "Google",
        "provider_id": "p_1",
        "default_scopes": ["openid", "email"],
        "supports_refresh": True,
        "supports_pkce": True,
        "docs_url": "https://developers.google.com/identity",
        "params": [],
    }
    data.update(overrides)
    return data


def error(http_status: int, code: str, message: str = "nope", **extra: Any) -> httpx.Response:
    """A gateway error answer; ``retry_after=`` sets the header, other keywords go in the body."""
    headers = {}
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra.pop("retry_after"))
    return httpx.Response(
        http_status, json={"error": code, "message": message, **extra}, headers=headers
    )


class FakeGateway:
    """An httpx.MockTransport handler that answers from a script and records requests."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            # A fresh copy: a client binds the stream of the response it receives, so one
            # scripted object may not be handed to two clients (or twice to one).
            return httpx.Response(
                answer.status_code, headers=answer.headers, content=answer.content
            )
        return answer(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def body(self, index: int = -1) -> Any:
        content = self.requests[index].content
        return json.loads(content) if content else None


class FakeClock:
    """A monotonic clock that only moves when the harness 'sleeps'."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """Drives a DromosClient or an AsyncDromosClient with the same synchronous calls."""

    def __init__(self, kind: str, gateway: FakeGateway, **kwargs: Any) -> None:
        self.kind = kind
        self.gateway = gateway
        self.sleeps: list[float] = []
        self.clock = FakeClock()
        kwargs.setdefault("api_key", API_KEY)
        transport = httpx.MockTransport(gateway)
        self.client: DromosClient | AsyncDromosClient
        if kind == "sync":
            sync = DromosClient(BASE_URL, transport=transport, **kwargs)
            sync._sleep = self._sleep
            sync._clock = self.clock
            self.client = sync
        else:
            aclient = AsyncDromosClient(BASE_URL, transport=transport, **kwargs)
            aclient._sleep = self._asleep
            aclient._clock = self.clock
            self.client = aclient

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.now += seconds

    async def _asleep(self, seconds: float) -> None:
        self._sleep(seconds)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.client, name)
        if self.kind == "sync":
            return method(*args, **kwargs)
        return anyio.run(functools.partial(method, *args, **kwargs))

    def close(self) -> None:
        if isinstance(self.client, DromosClient):
            self.client.close()
        else:
            anyio.run(self.client.aclose)


MakeHarness = Callable[..., Harness]


@pytest.fixture(params=["sync", "async"])
def client_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_harness(client_kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeHarness]:
    monkeypatch.delenv("DROMOS_API_KEY", raising=False)
    made: list[Harness] = []

    def make(*answers: Answer, **kwargs: Any) -> Harness:
        harness = Harness(client_kind, FakeGateway(*answers), **kwargs)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def max_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the full-jitter draw its maximum, so backoff delays are predictable."""
    monkeypatch.setattr("dromos_sdk._core.random.random", lambda: 1.0)


FAST_RETRY = RetryPolicy(retries=3, base_delay=0.5, max_delay=4.0)


@pytest.fixture
def anyio_backend() -> str:
    """Native async tests run on asyncio (trio is not a test dependency)."""
    return "asyncio"
