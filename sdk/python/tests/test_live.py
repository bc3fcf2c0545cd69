"""End-to-end flow against a live gateway, with both clients.

Environment:
    DROMOS_GATEWAY_URL      the gateway base URL (the test is skipped when unset)
    DROMOS_API_KEY          an API key of the gateway
    DROMOS_E2E_PROVIDER     a provider name configured on the broker
    DROMOS_E2E_RETURN_URL   a return URL the broker accepts
    DROMOS_E2E_CONSENT_CMD  a shell command that takes the authUrl as its single argument,
                            completes the browser consent and exits 0
    DROMOS_E2E_TIMEOUT      optional, seconds for the consent and for wait_for_active (180)
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import anyio.to_thread
import pytest

from dromos_sdk import (
    AsyncDromosClient,
    ConnectionNotActiveError,
    DromosClient,
    Provider,
    RetryPolicy,
)

REQUIRED = (
    "DROMOS_API_KEY",
    "DROMOS_E2E_PROVIDER",
    "DROMOS_E2E_RETURN_URL",
    "DROMOS_E2E_CONSENT_CMD",
)


@dataclass(frozen=True)
class LiveEnv:
    gateway_url: str
    api_key: str
    provider: str
    return_url: str
    consent_cmd: str
    timeout: float


@pytest.fixture(scope="module")
def live() -> Iterator[LiveEnv]:
    gateway_url = os.environ.get("DROMOS_GATEWAY_URL")
    if not gateway_url:
        pytest.skip("DROMOS_GATEWAY_URL is not set: no live gateway to run the end-to-end flow")
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        pytest.fail(f"DROMOS_GATEWAY_URL is set but {', '.join(missing)} is not")
    yield LiveEnv(
        gateway_url=gateway_url,
        api_key=os.environ["DROMOS_API_KEY"],
        provider=os.environ["DROMOS_E2E_PROVIDER"],
        return_url=os.environ["DROMOS_E2E_RETURN_URL"],
        consent_cmd=os.environ["DROMOS_E2E_CONSENT_CMD"],
        timeout=float(os.environ.get("DROMOS_E2E_TIMEOUT", "180")),
    )


def run_consent(live: LiveEnv, auth_url: str) -> None:
    """Run the consent command on the auth URL; fail the test with its output if it fails."""
    command = f"{live.consent_cmd} {shlex.quote(auth_url)}"
    result = subprocess.run(
        command,
        shell=True,
        capture_output=True,
        text=True,
        timeout=live.timeout,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"consent command exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-2000:]}"
        )


def find_provider(providers: list[Provider], name: str) -> Provider:
    names = [p.name for p in providers]
    assert name in names, f"provider {name!r} not in list_providers(): {names}"
    return next(p for p in providers if p.name == name)


RETRY = RetryPolicy(retries=3, base_delay=0.5, max_delay=5.0)


def test_live_flow_sync(live: LiveEnv) -> None:
    user_id = f"sdk-e2e-sync-{uuid.uuid4().hex[:12]}"
    with DromosClient(
        live.gateway_url, api_key=live.api_key, retry=RETRY, user_agent="dromos-sdk-e2e"
    ) as dromos:
        provider = find_provider(dromos.list_providers(), live.provider)
        scopes = list(provider.default_scopes)

        request = dromos.request_connection(user_id, live.provider, scopes, live.return_url)
        assert request.auth_url.startswith(("http://", "https://"))
        assert request.connection_id
        connection_id = request.connection_id
        deleted = False
        try:
            assert dromos.check_connection(connection_id).status == "pending"

            run_consent(live, request.auth_url)
            connection = dromos.wait_for_active(
                connection_id, timeout=live.timeout, poll_interval=0.5
            )
            assert connection.status == "active"
            assert connection.user_id == user_id
            assert connection.activated_at is not None

            token = dromos.get_token(connection_id)
            assert token.access_token
            assert token.connection_id == connection_id
            assert token.provider_name == live.provider
            assert token.access_token not in repr(token)

            if provider.supports_refresh:
                refreshed = dromos.refresh(connection_id)
                assert refreshed.access_token
                assert refreshed.connection_id == connection_id

            auto = dromos.get_token(connection_id, auto_refresh=True)
            assert auto.access_token

            if provider.api_base_url and provider.template == "oidc":
                # The local OIDC provider's userinfo endpoint through the proxy: no token here.
                me = dromos.proxy(connection_id, "GET", "/me")
                assert me.status_code == 200 and "sub" in me.json()
                assert me.headers["Dromos-Connection-Id"] == connection_id

            page = dromos.list_connections(user_id=user_id, provider_name=live.provider)
            assert connection_id in [c.connection_id for c in page.results]
            assert page.count >= 1

            revoked = dromos.delete_connection(connection_id)
            deleted = True
            assert revoked.status == "revoked"
            assert dromos.check_connection(connection_id).status == "revoked"

            with pytest.raises(ConnectionNotActiveError) as info:
                dromos.get_token(connection_id)
            assert info.value.status == "revoked"
        finally:
            if not deleted:
                dromos.delete_connection(connection_id)


@pytest.mark.anyio
async def test_live_flow_async(live: LiveEnv) -> None:
    user_id = f"sdk-e2e-async-{uuid.uuid4().hex[:12]}"
    async with AsyncDromosClient(
        live.gateway_url, api_key=live.api_key, retry=RETRY, user_agent="dromos-sdk-e2e"
    ) as dromos:
        provider = find_provider(await dromos.list_providers(), live.provider)
        scopes = list(provider.default_scopes)

        request = await dromos.request_connection(user_id, live.provider, scopes, live.return_url)
        connection_id = request.connection_id
        assert connection_id and request.auth_url
        deleted = False
        try:
            await anyio.to_thread.run_sync(run_consent, live, request.auth_url)
            connection = await dromos.wait_for_active(
                connection_id, timeout=live.timeout, poll_interval=0.5
            )
            assert connection.status == "active"

            token = await dromos.get_token(connection_id)
            assert token.access_token
            assert token.connection_id == connection_id

            if provider.supports_refresh:
                assert (await dromos.refresh(connection_id)).access_token

            assert (await dromos.get_token(connection_id, auto_refresh=True)).access_token

            if provider.api_base_url and provider.template == "oidc":
                me = await dromos.proxy(connection_id, "GET", "/me")
                assert me.status_code == 200 and "sub" in me.json()

            page = await dromos.list_connections(user_id=user_id)
            assert connection_id in [c.connection_id for c in page.results]

            revoked = await dromos.delete_connection(connection_id)
            deleted = True
            assert revoked.status == "revoked"

            with pytest.raises(ConnectionNotActiveError) as info:
                await dromos.get_token(connection_id)
            assert info.value.status == "revoked"
        finally:
            if not deleted:
                await dromos.delete_connection(connection_id)
