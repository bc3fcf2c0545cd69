"""/v1/proxy/{connection_id}/{path}: the call reaches the provider's API with the connection's
token, the agent never sees it, and the answer is the provider's."""

from __future__ import annotations

import pytest

from gateway_app.models import ProxyCall

pytestmark = pytest.mark.django_db(transaction=True)


def test_get_reaches_the_api_with_the_token_the_agent_never_saw(proxied, fake_provider):
    stack, key, cid = proxied
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me?fields=a,b&x=%20y", key)
    assert response.status_code == 200, response.text
    assert response.json() == {"method": "GET", "path": "/api/users/me", "query": "fields=a,b&x=%20y", "received": 0}
    assert response.headers["Dromos-Connection-Id"] == cid
    [call] = fake_provider.api_calls
    assert call["token_valid"] is True
    token = call["headers"]["authorization"].removeprefix("Bearer ")
    assert token in fake_provider.valid_access_tokens
    assert token not in response.text and token not in str(response.headers)
