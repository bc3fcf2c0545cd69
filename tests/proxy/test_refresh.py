"""A 401 from the provider: exactly one single-flight refresh, one retry of an idempotent
call, and a second 401 relayed as it is with the connection flagged (issue 15)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fake_provider import api_status

from broker_app.models import Connection

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_401_refreshes_once_and_retries_a_get(proxied, fake_provider):
    stack, key, cid = proxied
    fake_provider.expire_access_tokens()
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 200, response.text
    assert fake_provider.refresh_calls == 1
    first, second = fake_provider.api_calls
    assert first["token_valid"] is False and second["token_valid"] is True
    assert Connection.objects.get(pk=cid).token_version == 2


def test_twenty_concurrent_401s_cause_exactly_one_refresh_of_a_rotating_grant(proxied, fake_provider, settings):
    stack, key, cid = proxied
    # The gateway's bulkhead (4 slow calls per key) would answer most of the 20 with 429
    # concurrency_limited: off here, this test is about the single refresh behind them.
    settings.GATEWAY_SLOW_CALLS_PER_KEY = settings.GATEWAY_SLOW_CALLS_PER_WORKSPACE = 0
    assert stack.call("GET", f"/v1/proxy/{cid}/warm", key).status_code == 200
    fake_provider.expire_access_tokens()
    fake_provider.refresh_delay = 0.3  # the refresh is in flight while the others get their 401

    def call(_):
        return stack.call("GET", f"/v1/proxy/{cid}/users/me", key)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(call, range(20)))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    assert fake_provider.refresh_calls == 1
    connection = Connection.objects.get(pk=cid)
    assert connection.status == "active" and connection.token_version == 2
    # The rotated refresh token was stored: the provider refuses the new token too, and the
    # next 401 refreshes with it (a reused old one would have revoked the grant).
    fake_provider.expire_access_tokens()
    again = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert again.status_code == 200 and fake_provider.refresh_calls == 2


def test_a_second_401_is_relayed_and_flags_the_connection_without_failing_it(proxied, fake_provider):
    stack, key, cid = proxied
    fake_provider.api_answer(
        api_status(401, {"error": "invalid_token"}), api_status(401, {"error": "insufficient_scope"})
    )
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 401 and response.json() == {"error": "insufficient_scope"}
    assert fake_provider.refresh_calls == 1 and len(fake_provider.api_calls) == 2
    status = stack.call("GET", f"/v1/check-connection/{cid}", key).json()
    assert status["status"] == "active" and "provider_rejected_token" in status["warnings"]
    # A later refresh that stores newer tokens clears the flag.
    fake_provider.api_answer(api_status(401))
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me", key).status_code == 200
    assert "provider_rejected_token" not in stack.call("GET", f"/v1/check-connection/{cid}", key).json()["warnings"]


def test_a_post_is_refreshed_for_but_not_retried_unless_the_agent_says_so(proxied, fake_provider):
    stack, key, cid = proxied
    fake_provider.expire_access_tokens()
    response = stack.call("POST", f"/v1/proxy/{cid}/messages", key, data=b"send once")
    assert response.status_code == 401 and fake_provider.refresh_calls == 1
    assert len(fake_provider.api_calls) == 1
    # The next call uses the refreshed token.
    assert stack.call("POST", f"/v1/proxy/{cid}/messages", key, data=b"again").status_code == 200
    fake_provider.expire_access_tokens()
    response = stack.call(
        "POST", f"/v1/proxy/{cid}/messages", key, data=b"retry me", headers={"Dromos-Proxy-Retry": "true"}
    )
    assert response.status_code == 200 and response.json()["received"] == 8
    assert fake_provider.refresh_calls == 2
    assert [c["body"] for c in fake_provider.api_calls[-2:]] == [b"retry me", b"retry me"]


def test_invalid_grant_on_the_refresh_fails_the_connection_and_relays_the_401(proxied, fake_provider):
    stack, key, cid = proxied
    fake_provider.expire_access_tokens()
    fake_provider.grants.clear()  # the provider forgot the grant: invalid_grant
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 401 and response.json() == {"error": "invalid_token"}
    assert fake_provider.refresh_calls == 1 and len(fake_provider.api_calls) == 1
    connection = Connection.objects.get(pk=cid)
    assert connection.status == "failed" and connection.error == "invalid_grant"
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me", key).status_code == 409


def test_a_token_about_to_expire_is_refreshed_before_the_call(proxied, fake_provider):
    from datetime import timedelta

    from django.utils import timezone

    stack, key, cid = proxied
    Connection.objects.filter(pk=cid).update(expires_at=timezone.now() + timedelta(seconds=20))
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 200 and fake_provider.refresh_calls == 1
    assert [c["token_valid"] for c in fake_provider.api_calls] == [True]
