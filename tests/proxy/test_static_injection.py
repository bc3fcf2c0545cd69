"""The proxy injects every kind of credential exactly as the provider's template says
(issue 15 with issue 18's static credentials): an OAuth token by `api_auth`, an API key in a
header with its format (`Authorization: Bearer {api_key}`, `x-api-key: {api_key}`,
`Authorization: Token token={api_key}`, `DD-API-KEY: {api_key}`), an API key as a query
parameter, a login as HTTP Basic. Through the live gateway and broker, against the fake
provider's /api, which records the headers and query it receives."""

from __future__ import annotations

import base64
import time

import pytest
from fake_provider import api_raw

from broker_app.models import Connection, Provider
from broker_app.providers.spec import builtin_catalog
from gateway_app import proxy
from gateway_app.models import ProxyCall

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "sk-live-" + "Q1w2E3r4" * 4
USERNAME, PASSWORD = "AC0123456789", "basic-password-" + "T5y6" * 4
BASIC = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
AGENT_COOKIE = "session=agent-cookie-0123456789"


@pytest.fixture
def static_provider(monkeypatch, fake_provider):
    """A provider row for a catalog template (or a copy of one with `changes`), its API and
    verification at the fake provider."""

    def make(template: str, **changes) -> str:
        entry = builtin_catalog()[template]
        if changes:
            template = f"{template}_h15"
            entry = {**entry, **changes}
            monkeypatch.setitem(builtin_catalog(), template, entry)
        monkeypatch.setitem(entry, "verify_url", f"{fake_provider.url}/verify")
        name = template.replace("_", "-")
        Provider.objects.create(name=name, template=template, api_base_url=f"{fake_provider.url}/api")
        return name

    return make


def _connect(stack, key, provider: str, credentials: dict) -> str:
    made = stack.call(
        "POST",
        "/v1/connections",
        key,
        json={"user_id": "user-1", "provider_name": provider, "credentials": credentials},
    )
    assert made.status_code == 201, made.text
    return made.json()["connection_id"]


def _audit(cid: str, count: int = 1) -> list[ProxyCall]:
    deadline = time.monotonic() + 5
    while ProxyCall.objects.filter(connection_id=cid).count() < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(ProxyCall.objects.filter(connection_id=cid).order_by("id"))


API_KEY_CREDENTIALS = {"type": "api_key", "api_key": API_KEY}
BASIC_CREDENTIALS = {"type": "basic", "username": USERNAME, "password": PASSWORD}


@pytest.mark.parametrize(
    "template, credentials, header, value, also",
    [
        ("openai", API_KEY_CREDENTIALS, "authorization", f"Bearer {API_KEY}", {}),
        ("anthropic", API_KEY_CREDENTIALS, "x-api-key", API_KEY, {"anthropic-version": "2023-06-01"}),
        (
            "pagerduty_api_key",
            API_KEY_CREDENTIALS,
            "authorization",
            f"Token token={API_KEY}",
            {"accept": "application/vnd.pagerduty+json;version=2"},
        ),
        ("datadog", API_KEY_CREDENTIALS, "dd-api-key", API_KEY, {}),
        ("twilio", BASIC_CREDENTIALS, "authorization", f"Basic {BASIC}", {}),
    ],
)
def test_each_header_kind_is_injected_as_the_template_says(
    stack, fake_provider, static_provider, template, credentials, header, value, also
):
    provider = static_provider(template)
    fake_provider.valid_credentials = {value}
    key = stack.key()
    cid = _connect(stack, key, provider, credentials)
    agent_headers = {"Cookie": AGENT_COOKIE, "X-Custom": "kept", header: "agent-supplied-value"}
    if "accept" in also:
        agent_headers["Accept"] = None  # requests' */* default: the template's Accept applies
    answer = stack.call("GET", f"/v1/proxy/{cid}/v1/things?page=2", key, headers=agent_headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["path"] == "/api/v1/things" and answer.json()["query"] == "page=2"
    [call] = fake_provider.api_calls
    got = call["headers"]
    assert call["token_valid"] is True
    assert got[header] == value  # exactly the template's form; the agent's own value never sent
    assert "agent-supplied-value" not in str(got)
    assert "cookie" not in got and got["x-custom"] == "kept"
    assert key not in str(got)  # the agent's Authorization (its API key) is never forwarded
    for name, expected in also.items():
        assert got[name] == expected  # the template's api_headers
    if header != "authorization":
        assert "authorization" not in got
    secret = credentials.get("api_key") or PASSWORD
    assert secret not in answer.text and secret not in str(answer.headers)
    [row] = _audit(cid)
    assert (row.path, row.status, row.provider) == ("/v1/things", 200, provider)


def test_an_agent_header_named_like_a_template_header_wins_over_the_default(stack, fake_provider, static_provider):
    """api_headers are defaults (anthropic-version): an agent asking for a newer API version
    gets it; the credential's own header is never the agent's."""
    provider = static_provider("anthropic")
    fake_provider.valid_credentials = {API_KEY}
    key = stack.key()
    cid = _connect(stack, key, provider, API_KEY_CREDENTIALS)
    answer = stack.call("GET", f"/v1/proxy/{cid}/v1/models", key, headers={"anthropic-version": "2025-01-01"})
    assert answer.status_code == 200, answer.text
    got = fake_provider.api_calls[0]["headers"]
    assert got["anthropic-version"] == "2025-01-01" and got["x-api-key"] == API_KEY


def test_an_api_key_in_the_query_is_appended_and_never_recorded(stack, fake_provider, static_provider, caplog):
    provider = static_provider("openai", credential_query_param="api_key")
    fake_provider.valid_credentials = {API_KEY}
    key = stack.key()
    cid = _connect(stack, key, provider, API_KEY_CREDENTIALS)
    assert fake_provider.verify_requests[-1]["query"] == {"api_key": API_KEY}  # verified the same way
    caplog.set_level("DEBUG", logger="urllib3")
    answer = stack.call("GET", f"/v1/proxy/{cid}/v1/items?limit=5&q=a%20b", key, headers={"Cookie": AGENT_COOKIE})
    assert answer.status_code == 200, answer.text
    [call] = fake_provider.api_calls
    assert call["query"] == f"limit=5&q=a%20b&api_key={API_KEY}"
    assert "authorization" not in call["headers"] and "cookie" not in call["headers"]
    bare = stack.call("GET", f"/v1/proxy/{cid}/v1/items", key)
    assert bare.status_code == 200 and fake_provider.api_calls[1]["query"] == f"api_key={API_KEY}"
    for response in (answer, bare):
        assert API_KEY not in response.text and API_KEY not in str(response.headers)
    rows = _audit(cid, 2)
    assert [r.path for r in rows] == ["/v1/items", "/v1/items"]
    assert all(API_KEY not in str(vars(r)) for r in rows)
    urllib3_lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("/api/v1/items?" in line for line in urllib3_lines)  # the request line was logged …
    assert not any(API_KEY in line for line in urllib3_lines)  # … without its query


@pytest.mark.parametrize(
    "query",
    [
        "api_key=agent-value",
        "limit=5&api_key=agent-value",
        "API_KEY=agent-value",
        "api%5Fkey=agent-value",
        "api_key",
        "limit=5;api_key=agent-value",
        "api_key=",
        "+api_key=x",
    ],
)
def test_an_agent_query_naming_the_credential_parameter_is_refused(stack, fake_provider, static_provider, query):
    """Refused (400 invalid_request), not stripped or sent twice: the agent learns at once
    that the proxy owns that parameter, and the provider never sees two values."""
    provider = static_provider("openai", credential_query_param="api_key")
    fake_provider.valid_credentials = {API_KEY}
    key = stack.key()
    cid = _connect(stack, key, provider, API_KEY_CREDENTIALS)
    answer = stack.call("GET", f"/v1/proxy/{cid}/v1/items?{query}", key)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request" and "api_key" in answer.json()["message"]
    assert API_KEY not in answer.text
    assert fake_provider.api_calls == []
    [row] = _audit(cid)
    assert (row.status, row.error, row.path) == (400, "invalid_request", "/v1/items")


def test_a_similar_agent_query_parameter_is_forwarded(stack, fake_provider, static_provider):
    provider = static_provider("openai", credential_query_param="api_key")
    fake_provider.valid_credentials = {API_KEY}
    key = stack.key()
    cid = _connect(stack, key, provider, API_KEY_CREDENTIALS)
    answer = stack.call("GET", f"/v1/proxy/{cid}/v1/items?api_key_id=7&my_api_key=x", key)
    assert answer.status_code == 200, answer.text
    assert fake_provider.api_calls[0]["query"] == f"api_key_id=7&my_api_key=x&api_key={API_KEY}"


def test_an_echoed_static_credential_is_masked_and_its_header_dropped(stack, fake_provider, static_provider):
    provider = static_provider("twilio")
    fake_provider.valid_credentials = {f"Basic {BASIC}"}
    key = stack.key()
    cid = _connect(stack, key, provider, BASIC_CREDENTIALS)
    body = f'{{"auth": "Basic {BASIC}", "password": "{PASSWORD}"}}'.encode()
    fake_provider.api_answer(api_raw(200, body, {"Content-Type": "application/json", "X-Echo": BASIC}))
    answer = stack.call("GET", f"/v1/proxy/{cid}/2010-04-01/Accounts.json", key)
    assert answer.status_code == 200
    assert answer.json() == {"auth": "Basic " + "*" * len(BASIC), "password": "*" * len(PASSWORD)}
    assert "X-Echo" not in answer.headers


def test_a_refused_static_credential_is_not_refreshed_and_a_replacement_is_used_at_once(
    stack, fake_provider, static_provider
):
    provider = static_provider("openai")
    new_key = "sk-next-" + "P0o9I8u7" * 4
    fake_provider.valid_credentials = {f"Bearer {API_KEY}"}
    key = stack.key()
    cid = _connect(stack, key, provider, API_KEY_CREDENTIALS)
    assert stack.call("GET", f"/v1/proxy/{cid}/v1/models", key).status_code == 200
    fake_provider.valid_credentials = {f"Bearer {new_key}"}  # the user revoked the key at the provider
    refused = stack.call("GET", f"/v1/proxy/{cid}/v1/models", key)
    assert refused.status_code == 401 and refused.headers["Dromos-Connection-Id"] == cid
    assert len(fake_provider.api_calls) == 2  # no refresh, no retry: one call
    checked = stack.call("GET", f"/v1/check-connection/{cid}", key).json()
    assert checked["status"] == "active" and "provider_rejected_token" in str(checked)
    replaced = stack.call(
        "PUT", f"/v1/connections/{cid}/credentials", key, json={"credentials": {"type": "api_key", "api_key": new_key}}
    )
    assert replaced.status_code == 200, replaced.text
    again = stack.call("GET", f"/v1/proxy/{cid}/v1/models", key)
    assert again.status_code == 200, again.text
    assert fake_provider.api_calls[-1]["headers"]["authorization"] == f"Bearer {new_key}"
    assert Connection.objects.get(pk=cid).attention == ""  # the new key cleared the flag


def test_a_template_with_a_bad_query_parameter_name_is_not_proxied(stack, fake_provider, static_provider):
    provider = static_provider("openai", credential_query_param="api key&x=1")
    fake_provider.valid_credentials = {API_KEY, f"Bearer {API_KEY}"}
    key = stack.key()
    cid = _connect(stack, key, provider, API_KEY_CREDENTIALS)
    answer = stack.call("GET", f"/v1/proxy/{cid}/v1/items", key)
    assert answer.status_code == 409 and answer.json()["error"] == "proxy_not_configured"
    assert fake_provider.api_calls == [] and API_KEY not in answer.text


def _credential(kind: str, secret: str = API_KEY, **fields) -> proxy.Credential:
    defaults = {"auth_header": "Authorization", "auth_format": "Bearer {token}"}
    return proxy.Credential(
        connection_id="c_x",
        provider_name="p",
        token_version=1,
        access_token=secret,
        expires_at=None,
        api_base_url="https://api.example.com",
        api_hosts=("api.example.com",),
        kind=kind,
        **{**defaults, **fields},
    )


@pytest.mark.parametrize(
    "credential, headers, query",
    [
        (_credential("oauth", "at-123"), {"Authorization": "Bearer at-123"}, None),
        (
            _credential("oauth", "at-123", auth_header="X-Shopify-Access-Token", auth_format="{token}"),
            {"X-Shopify-Access-Token": "at-123"},
            None,
        ),
        (_credential("api_key_header", auth_header="x-api-key", auth_format="{api_key}"), {"x-api-key": API_KEY}, None),
        (
            _credential("api_key_header", auth_format="Token token={api_key}"),
            {"Authorization": f"Token token={API_KEY}"},
            None,
        ),
        (_credential("api_key_query", "k+/=&", auth_query_param="key"), {}, ("key", "k%2B%2F%3D%26")),
        (_credential("basic", BASIC), {"Authorization": f"Basic {BASIC}"}, None),
    ],
)
def test_injection_by_kind(credential, headers, query):
    injected = proxy.injection(credential)
    assert injected.headers == headers and injected.query == query


@pytest.mark.parametrize(
    "credential", [_credential("carrier_pigeon"), _credential("oauth", "at-1\r\nX-Evil: 1"), _credential("basic", "")]
)
def test_injection_refuses_unknown_kinds_and_unsendable_secrets_without_showing_them(credential):
    with pytest.raises(proxy.ProxyNotConfigured) as refused:
        proxy.injection(credential)
    assert refused.value.status_code == 409 and "X-Evil" not in str(refused.value) and API_KEY not in str(refused.value)


def test_a_replaced_key_is_used_at_once_through_the_same_gateway_process(stack, fake_provider, static_provider):
    provider = static_provider("anthropic")
    new_key = "sk-ant-next-" + "M1n2B3v4" * 4
    fake_provider.valid_credentials = {API_KEY, new_key}
    key = stack.key()
    cid = _connect(stack, key, provider, API_KEY_CREDENTIALS)
    assert stack.call("GET", f"/v1/proxy/{cid}/v1/models", key).status_code == 200  # now cached (5 s)
    replaced = stack.call(
        "PUT", f"/v1/connections/{cid}/credentials", key, json={"credentials": {"type": "api_key", "api_key": new_key}}
    )
    assert replaced.status_code == 200, replaced.text
    assert stack.call("GET", f"/v1/proxy/{cid}/v1/models", key).status_code == 200
    assert [c["headers"]["x-api-key"] for c in fake_provider.api_calls] == [API_KEY, new_key]
