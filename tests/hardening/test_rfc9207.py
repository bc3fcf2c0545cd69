"""Issue 14, finding 5 (RFC 9207 §2.4): a provider whose discovery advertises
`authorization_response_iss_parameter_supported` must send `iss` in its authorization
response; a callback without it is rejected. Against the npm oidc-provider (which advertises
and sends it) through the real gunicorn gateway and broker."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from oidc_consent import complete_consent

pytestmark = pytest.mark.e2e

RETURN_URL = "http://127.0.0.1:1/oauth/return"


def _callback_url(stack, login: str) -> tuple[str, str]:
    """Start a connection to `local` and consent; return (connection id, the provider's
    redirect to the broker callback, not yet followed)."""
    started = stack.gw(
        "POST",
        "/v1/request-connection",
        json={"user_id": login, "provider_name": "local", "scopes": ["openid", "email"], "return_url": RETURN_URL},
    )
    assert started.status_code == 201, started.text
    callback = complete_consent(
        started.json()["authUrl"], login=login, stop_at_prefix=stack.broker_url + "/auth/callback"
    )
    assert callback.startswith(stack.broker_url + "/auth/callback"), callback
    return started.json()["connection_id"], callback


def _follow(callback: str, *, drop: str | None = None) -> tuple[requests.Response, dict[str, list[str]]]:
    parts = urlsplit(callback)
    query = {k: v for k, v in parse_qs(parts.query).items() if k != drop}
    response = requests.get(
        parts._replace(query=urlencode(query, doseq=True)).geturl(), allow_redirects=False, timeout=30
    )
    assert response.status_code == 302, response.text[:300]
    return response, parse_qs(urlsplit(response.headers["Location"]).query)


def test_the_provider_advertises_and_sends_iss(hard_stack):
    assert hard_stack.oidc.metadata["authorization_response_iss_parameter_supported"] is True
    _cid, callback = _callback_url(hard_stack, "iss-sent")
    assert parse_qs(urlsplit(callback).query)["iss"] == [hard_stack.oidc.issuer]


def test_callback_without_iss_is_rejected(hard_stack):
    cid, callback = _callback_url(hard_stack, "iss-dropped")
    response, query = _follow(callback, drop="iss")
    assert response.headers["Location"].startswith(RETURN_URL)
    assert query["status"] == ["error"] and query["error"] == ["invalid_issuer"], query
    assert query["connection_id"] == [cid]
    check = hard_stack.gw("GET", f"/v1/check-connection/{cid}").json()
    assert check["status"] == "failed", check
    assert "invalid_issuer" in str(check["error"]) and "no iss parameter" in str(check), check
    token = hard_stack.gw("GET", f"/v1/token/{cid}")
    assert token.status_code == 409 and token.json()["reconnect_required"] is True


def test_callback_with_the_right_iss_succeeds(hard_stack):
    cid, callback = _callback_url(hard_stack, "iss-kept")
    _response, query = _follow(callback)
    assert query["status"] == ["success"] and query["connection_id"] == [cid], query
    assert hard_stack.gw("GET", f"/v1/check-connection/{cid}").json()["status"] == "active"
    token = hard_stack.gw("GET", f"/v1/token/{cid}").json()["access_token"]
    userinfo = requests.get(f"{hard_stack.oidc.issuer}/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert userinfo.status_code == 200 and userinfo.json()["sub"] == "iss-kept"


def test_callback_with_another_iss_is_rejected(hard_stack):
    cid, callback = _callback_url(hard_stack, "iss-other")
    parts = urlsplit(callback)
    query = {**parse_qs(parts.query), "iss": ["https://attacker.example"]}
    response = requests.get(
        parts._replace(query=urlencode(query, doseq=True)).geturl(), allow_redirects=False, timeout=30
    )
    location = parse_qs(urlsplit(response.headers["Location"]).query)
    assert location["status"] == ["error"] and location["error"] == ["invalid_issuer"]


@pytest.mark.django_db
def test_a_template_can_mark_a_provider_that_advertises_iss_without_sending_it(fake_provider):
    """`callback_iss_unsent` (catalog) turns the requirement off; discovery alone turns it on."""
    from broker_app.oauth import oidc
    from broker_app.providers.spec import ProviderSpec

    spec = ProviderSpec(
        key="oidc",
        name="fake",
        provider_id="p",
        display_name="Fake",
        client_id="c",
        client_secret=None,
        authorize_url=f"{fake_provider.url}/authorize",
        token_url=f"{fake_provider.url}/token",
        discovery_url=fake_provider.discovery_url,
        issuer=fake_provider.issuer,
    )
    assert oidc.callback_iss_required(spec) is True
    assert oidc.callback_iss_required(ProviderSpec(**{**spec.__dict__, "callback_iss_unsent": True})) is False
    assert oidc.callback_iss_required(ProviderSpec(**{**spec.__dict__, "discovery_url": ""})) is False
