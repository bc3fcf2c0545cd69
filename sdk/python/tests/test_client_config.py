"""Construction, headers, API key, timeouts and lifecycle of both clients."""

from __future__ import annotations

import inspect

import httpx
import pytest

from conftest import API_KEY, BASE_URL, FakeGateway, MakeHarness, provider_json
from dromos_sdk import AsyncDromosClient, DromosClient, DromosError, __version__

PROVIDERS = httpx.Response(200, json={"providers": [provider_json()]})


def test_authorization_accept_and_user_agent_headers(make_harness: MakeHarness) -> None:
    h = make_harness(PROVIDERS)
    h.call("list_providers")
    headers = h.gateway.last.headers
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"].startswith(f"dromos-sdk-python/{__version__} httpx/")
    assert " python/" in headers["User-Agent"]


def test_custom_user_agent_goes_first(make_harness: MakeHarness) -> None:
    h = make_harness(PROVIDERS, user_agent="travel-agent/2.1")
    h.call("list_providers")
    assert h.gateway.last.headers["User-Agent"].startswith(
        f"travel-agent/2.1 dromos-sdk-python/{__version__} "
    )


def test_api_key_from_environment(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROMOS_API_KEY", "dk_from_env")
    h = make_harness(PROVIDERS, api_key=None)
    h.call("list_providers")
    assert h.gateway.last.headers["Authorization"] == "Bearer dk_from_env"


def test_explicit_api_key_beats_environment(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROMOS_API_KEY", "dk_from_env")
    h = make_harness(PROVIDERS, api_key="dk_explicit")
    h.call("list_providers")
    assert h.gateway.last.headers["Authorization"] == "Bearer dk_explicit"


@pytest.mark.parametrize("cls", [DromosClient, AsyncDromosClient])
def test_missing_api_key(
    cls: type[DromosClient] | type[AsyncDromosClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DROMOS_API_KEY", raising=False)
    with pytest.raises(DromosError, match="DROMOS_API_KEY"):
        cls(BASE_URL)


@pytest.mark.parametrize("cls", [DromosClient, AsyncDromosClient])
@pytest.mark.parametrize("url", ["gw.example.test", "ftp://gw", ""])
def test_bad_base_url(cls: type[DromosClient] | type[AsyncDromosClient], url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        cls(url, api_key=API_KEY)


def test_base_url_trailing_slash_and_prefix(make_harness: MakeHarness) -> None:
    gateway = FakeGateway(PROVIDERS)
    with DromosClient(
        "https://gw.example.test/dromos/",
        api_key=API_KEY,
        transport=httpx.MockTransport(gateway),
    ) as client:
        assert client.base_url == "https://gw.example.test/dromos"
        client.list_providers()
    assert str(gateway.last.url) == "https://gw.example.test/dromos/v1/providers"


def test_repr_hides_api_key() -> None:
    client = DromosClient(BASE_URL, api_key=API_KEY)
    try:
        assert API_KEY not in repr(client)
        assert API_KEY not in repr(client._settings)
    finally:
        client.close()


def test_timeout_is_applied_to_requests(make_harness: MakeHarness) -> None:
    h = make_harness(PROVIDERS, timeout=2.5)
    h.call("list_providers")
    assert h.gateway.last.extensions["timeout"] == {
        "connect": 2.5,
        "read": 2.5,
        "write": 2.5,
        "pool": 2.5,
    }


def test_default_timeout(make_harness: MakeHarness) -> None:
    h = make_harness(PROVIDERS)
    h.call("list_providers")
    timeout = h.gateway.last.extensions["timeout"]
    assert timeout["connect"] == 10.0 and timeout["read"] == 30.0


def test_sync_and_async_have_the_same_surface() -> None:
    public = {
        "request_connection",
        "check_connection",
        "get_token",
        "refresh",
        "list_connections",
        "delete_connection",
        "list_providers",
        "wait_for_active",
    }
    for name in public:
        sync, async_ = getattr(DromosClient, name), getattr(AsyncDromosClient, name)
        assert not inspect.iscoroutinefunction(sync)
        assert inspect.iscoroutinefunction(async_)
        assert inspect.signature(sync) == inspect.signature(async_), name
    sync_init = inspect.signature(DromosClient.__init__).parameters
    async_init = inspect.signature(AsyncDromosClient.__init__).parameters
    assert list(sync_init) == list(async_init)
    assert list(sync_init)[1:] == [
        "base_url",
        "api_key",
        "timeout",
        "retry",
        "user_agent",
        "transport",
        "http_client",
    ]


# -- sync lifecycle --


def test_sync_context_manager_closes_its_client() -> None:
    with DromosClient(
        BASE_URL, api_key=API_KEY, transport=httpx.MockTransport(FakeGateway(PROVIDERS))
    ) as client:
        assert client.list_providers()[0].name == "google"
    assert client._http.is_closed


def test_sync_close_leaves_a_given_http_client_open() -> None:
    gateway = FakeGateway(PROVIDERS)
    http = httpx.Client(transport=httpx.MockTransport(gateway), headers={"X-Trace": "t1"})
    with DromosClient(BASE_URL, api_key=API_KEY, http_client=http) as client:
        client.list_providers()
    assert not http.is_closed
    assert gateway.last.headers["X-Trace"] == "t1"  # the client's own headers are kept
    assert gateway.last.headers["Authorization"] == f"Bearer {API_KEY}"
    http.close()


def test_transport_and_http_client_are_exclusive() -> None:
    transport = httpx.MockTransport(FakeGateway())
    with httpx.Client() as http, pytest.raises(ValueError, match="not both"):
        DromosClient(BASE_URL, api_key=API_KEY, transport=transport, http_client=http)


# -- async lifecycle (native async tests, run by anyio's pytest plugin) --


@pytest.mark.anyio
async def test_async_context_manager_closes_its_client() -> None:
    gateway = FakeGateway(PROVIDERS)
    async with AsyncDromosClient(
        BASE_URL, api_key=API_KEY, transport=httpx.MockTransport(gateway)
    ) as client:
        providers = await client.list_providers()
        assert providers[0].name == "google"
    assert client._http.is_closed


@pytest.mark.anyio
async def test_async_aclose_leaves_a_given_http_client_open() -> None:
    gateway = FakeGateway(PROVIDERS)
    async with httpx.AsyncClient(transport=httpx.MockTransport(gateway)) as http:
        client = AsyncDromosClient(BASE_URL, api_key=API_KEY, http_client=http)
        await client.list_providers()
        await client.aclose()
        assert not http.is_closed


@pytest.mark.anyio
async def test_async_real_sleep_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("dromos_sdk._async.anyio.sleep", fake_sleep)
    gateway = FakeGateway(
        httpx.Response(429, json={"error": "rate_limited"}, headers={"Retry-After": "3"}),
        PROVIDERS,
    )
    async with AsyncDromosClient(
        BASE_URL, api_key=API_KEY, transport=httpx.MockTransport(gateway)
    ) as client:
        await client.list_providers()
    assert slept == [3.0]


def test_sync_real_sleep_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("dromos_sdk._sync.time.sleep", slept.append)
    gateway = FakeGateway(
        httpx.Response(503, json={"error": "broker_unavailable"}, headers={"Retry-After": "4"}),
        PROVIDERS,
    )
    with DromosClient(BASE_URL, api_key=API_KEY, transport=httpx.MockTransport(gateway)) as client:
        client.list_providers()
    assert slept == [4.0]
