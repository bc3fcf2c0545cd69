"""The proxy only ever connects to the provider's API hosts, on public addresses (issue 15)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from django.core.management import CommandError, call_command

from gateway_app import proxy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def resolver(monkeypatch):
    """Names resolving where a test says (the gateway runs in this process)."""
    answers: dict[str, list[str]] = {}
    real = proxy._getaddrinfo
    looked_up: list[str] = []

    def fake(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return answers[host] if host in answers else real(host, port)

    monkeypatch.setattr(proxy, "_getaddrinfo", fake)
    answers["looked_up"] = looked_up  # type: ignore[assignment]
    return answers


def _point(api_provider, url: str) -> None:
    api_provider.api_base_url = url
    api_provider.save()


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.7"],
        ["192.168.1.20"],
        ["172.16.5.5"],
        ["127.0.0.1"],
        ["169.254.169.254"],
        ["100.64.0.1"],
        ["::1"],
        ["fd00::1"],
        ["fe80::1"],
        ["::ffff:127.0.0.1"],
        ["0.0.0.0"],  # noqa: S104  (an address a name resolves to, not a bind)
        ["93.184.215.14", "10.0.0.7"],  # one private answer among public ones is enough
    ],
)
def test_an_api_host_resolving_to_a_private_address_is_refused(
    proxied, fake_provider, api_provider, resolver, addresses
):
    stack, key, cid = proxied
    resolver["api.internal.test"] = addresses
    _point(api_provider, "https://api.internal.test/v1")
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 502, response.text
    assert response.json()["error"] == "proxy_destination_refused"
    assert "PROXY_ALLOWED_PRIVATE_HOSTS" in response.json()["message"]
    assert fake_provider.api_calls == []


def test_the_metadata_address_itself_is_refused_without_connecting(proxied, fake_provider, api_provider):
    stack, key, cid = proxied
    _point(api_provider, "https://169.254.169.254/latest")
    response = stack.call("GET", f"/v1/proxy/{cid}/meta-data/iam/security-credentials/", key)
    assert response.status_code == 502 and response.json()["error"] == "proxy_destination_refused"


def test_localhost_is_refused_unless_listed(proxied, fake_provider, api_provider, settings):
    stack, key, cid = proxied
    port = urlsplit(fake_provider.url).port
    _point(api_provider, f"http://localhost:{port}/api")
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 502 and response.json()["error"] == "proxy_destination_refused"
    assert fake_provider.api_calls == []
    settings.PROXY_ALLOWED_PRIVATE_HOSTS = ["127.0.0.1", "localhost"]
    proxy.pools_clear()
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me", key).status_code == 200


def test_plain_http_is_refused_for_a_public_host(proxied, fake_provider, api_provider, resolver):
    stack, key, cid = proxied
    resolver["api.public.test"] = ["93.184.215.14"]
    _point(api_provider, "https://api.public.test")
    api_provider.api_base_url = "http://api.public.test"
    api_provider.save(update_fields=["api_base_url"])
    response = stack.call("GET", f"/v1/proxy/{cid}/x", key)
    # The broker refuses a plain-http endpoint outside ALLOW_HTTP_PROVIDER_HOSTS (and the
    # gateway one outside PROXY_ALLOWED_PRIVATE_HOSTS): never a connection.
    assert response.status_code == 409 and response.json()["error"] == "proxy_not_configured"
    assert resolver["looked_up"] == []


def test_the_connection_goes_to_the_checked_address_with_the_host_name(
    proxied, fake_provider, api_provider, resolver, settings
):
    stack, key, cid = proxied
    port = urlsplit(fake_provider.url).port
    resolver["api.rebind.test"] = ["127.0.0.1"]
    settings.PROXY_ALLOWED_PRIVATE_HOSTS = ["127.0.0.1", "api.rebind.test"]
    settings.ALLOW_HTTP_PROVIDER_HOSTS = [*settings.ALLOW_HTTP_PROVIDER_HOSTS, "api.rebind.test"]
    _point(api_provider, f"http://api.rebind.test:{port}/api")
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me", key).status_code == 200
    assert fake_provider.api_calls[0]["headers"]["host"] == f"api.rebind.test:{port}"
    # The name now points elsewhere: the checked answer is used until it expires, and a
    # fresh lookup is checked again — never a second, unchecked lookup at connect time.
    resolver["api.rebind.test"] = ["10.9.9.9"]
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me", key).status_code == 200
    assert resolver["looked_up"].count("api.rebind.test") == 1
    proxy.pools_clear()  # the DNS cache with it
    settings.PROXY_ALLOWED_PRIVATE_HOSTS = ["127.0.0.1"]
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 502 and response.json()["error"] == "proxy_destination_refused"


@pytest.mark.parametrize(
    "good",
    [
        "/users/me",
        "/v1/projects/p1:run",
        "/users/a@b.example/messages",
        "/files/a%20b.txt",
        "/repos/acme/widget/contents/dir%2Ffile",
        "/search",
        "/a/.well-known/x",
        "/a/..b/c",
    ],
)
def test_ordinary_api_paths_pass(good):
    assert proxy.check_path(good) == good


def test_provider_upsert_api_base_url_is_checked_and_shown(db, fake_provider, capsys):
    call_command(
        "provider",
        "upsert",
        "--name",
        "custom",
        "--template",
        "oidc",
        "--discovery-url",
        fake_provider.discovery_url,
        "--client-id",
        "c",
        "--api-base-url",
        "https://api.custom.example/v2",
    )
    from broker_app.models import Provider
    from broker_app.presenters import provider_as_dict

    assert provider_as_dict(Provider.objects.get(name="custom"))["api_base_url"] == "https://api.custom.example/v2"
    with pytest.raises(CommandError, match="api_base_url must be an https URL"):
        call_command("provider", "upsert", "--name", "custom", "--api-base-url", "http://api.custom.example/v2")
    assert Provider.objects.get(name="custom").api_base_url == "https://api.custom.example/v2"


def _credential(**overrides) -> proxy.Credential:
    values = {
        "connection_id": "c_1",
        "provider_name": "salesforce",
        "token_version": 1,
        "access_token": "at-x",
        "expires_at": None,
        "api_base_url": "https://na1.example-api.test/services/data",
        "api_hosts": ("na1.example-api.test", "files.example-api.test"),
        "auth_header": "Authorization",
        "auth_format": "Bearer {token}",
    }
    return proxy.Credential(**{**values, **overrides})


def test_dromos_proxy_host_picks_only_one_of_the_providers_api_hosts():
    base = proxy.target_of(_credential(), None)
    assert (base.scheme, base.host, base.port, base.base_path) == (
        "https",
        "na1.example-api.test",
        443,
        "/services/data",
    )
    other = proxy.target_of(_credential(), "FILES.example-api.test")
    assert (other.host, other.base_path) == ("files.example-api.test", "")
    for bad in ("evil.test", "na1.example-api.test.evil.test", "169.254.169.254", ""):
        with pytest.raises(proxy.InvalidProxyPath):
            proxy.target_of(_credential(), bad)


def test_the_credential_is_injected_as_the_template_says():
    credential = _credential(auth_header="X-Api-Key", auth_format="Token {token}")
    target = proxy.target_of(credential, None)
    meta = {"HTTP_X_API_KEY": "agent-supplied", "HTTP_AUTHORIZATION": "Bearer dk_agent", "HTTP_ACCEPT": "*/*"}
    headers = proxy.request_headers(meta, credential, target, length=None)
    assert headers["X-Api-Key"] == "Token at-x" and "Authorization" not in headers
    assert headers["Host"] == "na1.example-api.test" and headers["Accept"] == "*/*"
