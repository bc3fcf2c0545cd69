"""The API proxy (issue 15) against the fake provider's protected API (/api/ on the fake)."""

from __future__ import annotations

import pytest
from fake_provider import CLIENT_ID, CLIENT_SECRET

from tests.conftest import connect, make_provider


@pytest.fixture(autouse=True)
def _proxy_state():
    from gateway_app import egress, proxy, proxy_audit

    proxy.credentials_clear()
    proxy.pools_clear()
    egress.cache_clear()
    yield
    proxy.credentials_clear()
    proxy.pools_clear()
    proxy_audit.audit_stop()  # rows written, the writer's database connection closed


@pytest.fixture
def api_provider(db, fake_provider):
    return make_provider(
        name="fake",
        discovery_url=fake_provider.discovery_url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        api_base_url=f"{fake_provider.url}/api",
    )


@pytest.fixture
def proxied(stack, fake_provider, api_provider):
    """(stack, key, connection id) for an active connection whose provider has an API."""
    key = stack.key()
    cid = connect(stack, fake_provider, key)
    return stack, key, cid
