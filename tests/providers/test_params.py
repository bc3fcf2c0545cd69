"""Per-connection template parameters (tenant, subdomain, shop, domain, realm …) become part
of the URLs the broker calls with its client secret. Whatever an agent passes, the broker
must never be pointed at a host outside the provider's own domains."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from broker_app.models import Connection
from broker_app.providers.registry import resolve, resolve_static
from broker_app.providers.spec import ProviderConfigError, catalog, param_specs
from tests.providers.contract import provider_row

# Where each templated provider's URLs may lead, written independently of the catalog's
# patterns: (template, parameter) -> a check of one resolved URL given the value.
KEYCLOAK_HOST = "sso.example.com"


def _labels(host: str) -> list[str]:
    return host.split(".")


def _entra_tenant(url: str, value: str) -> bool:
    return urlsplit(url).hostname in ("login.microsoftonline.com", "graph.microsoft.com") and (
        urlsplit(url).hostname == "graph.microsoft.com" or urlsplit(url).path.split("/")[1] == value
    )


RULES = {
    **{(key, "tenant"): _entra_tenant for key in ("microsoft", "outlook", "onedrive", "microsoft_teams", "sharepoint")},
    ("entra_b2c", "tenant"): lambda url, value: (
        urlsplit(url).hostname == "graph.microsoft.com"
        or (
            urlsplit(url).hostname == f"{value}.b2clogin.com"
            and urlsplit(url).path.split("/")[1] == f"{value}.onmicrosoft.com"
        )
    ),
    ("entra_b2c", "policy"): lambda url, value: (
        urlsplit(url).hostname == "graph.microsoft.com"
        or (urlsplit(url).hostname == "contoso.b2clogin.com" and urlsplit(url).path.split("/")[2] == value)
    ),
    ("onelogin", "subdomain"): lambda url, value: (
        urlsplit(url).hostname == f"{value}.onelogin.com" and "." not in value
    ),
    ("snowflake", "account"): lambda url, value: (
        urlsplit(url).hostname == f"{value}.snowflakecomputing.com" and "." not in value
    ),
    ("databricks", "host"): lambda url, value: (
        urlsplit(url).hostname == value
        and value.endswith((".cloud.databricks.com", ".gcp.databricks.com", ".azuredatabricks.net"))
        and len(_labels(value)) in (3, 4, 5)
    ),
    ("docusign", "auth_host"): lambda url, value: (
        urlsplit(url).hostname == value and value in ("account.docusign.com", "account-d.docusign.com")
    ),
    ("zoho_crm", "accounts_host"): lambda url, value: (
        urlsplit(url).hostname == value and re.fullmatch(r"accounts\.zoho\.(com|eu|in|com\.au|jp|ca|sa|com\.cn)", value)
    ),
    ("salesforce", "login_host"): lambda url, value: (
        urlsplit(url).hostname == value and value.endswith(".salesforce.com")
    ),
    ("jira_api_token", "site"): lambda url, value: (
        urlsplit(url).hostname == f"{value}.atlassian.net" and "." not in value
    ),
    ("zendesk", "subdomain"): lambda url, value: urlsplit(url).hostname == f"{value}.zendesk.com" and "." not in value,
    ("shopify", "shop"): lambda url, value: (
        urlsplit(url).hostname == value and value.endswith(".myshopify.com") and len(_labels(value)) == 3
    ),
    ("okta", "domain"): lambda url, value: (
        urlsplit(url).hostname == value
        and len(_labels(value)) == 3
        and value.endswith((".okta.com", ".oktapreview.com", ".okta-emea.com"))
    ),
    ("okta", "authorization_server"): lambda url, value: (
        urlsplit(url).hostname == "dev-1.okta.com" and urlsplit(url).path.split("/")[2] == value
    ),
    ("auth0", "domain"): lambda url, value: (
        urlsplit(url).hostname == value and value.endswith(".auth0.com") and len(_labels(value)) in (3, 4)
    ),
    ("keycloak", "realm"): lambda url, value: (
        urlsplit(url).hostname == KEYCLOAK_HOST and urlsplit(url).path.split("/")[2] == value
    ),
    # issue 18: a path segment of GitHub's own API host, digits only
    ("github_app_installation", "installation_id"): lambda url, value: (
        urlsplit(url).hostname == "api.github.com"
        and urlsplit(url).path == f"/app/installations/{value}/access_tokens"
        and value.isdigit()
    ),
}
# The other parameters each case needs, valid, so only the one under test varies.
FIXED = {
    "okta": {"domain": "dev-1.okta.com"},
    "entra_b2c": {"tenant": "contoso", "policy": "B2C_1_signupsignin1"},
}
SETTINGS = {
    "keycloak": {"host": KEYCLOAK_HOST},
    "entra_b2c": {"tenant_id": "775527ff-9a37-4307-8b3d-cc311f58d925"},
}
URL_FIELDS = (
    "authorize_url",
    "token_url",
    "revocation_url",
    "userinfo_url",
    "jwks_uri",
    "discovery_url",
    "refresh_url",
    "api_base_url",  # the proxy sends the connection's token there
    "verify_url",  # a static credential is sent there before it is stored
)


def test_every_agent_parameter_in_the_catalog_has_a_host_rule():
    agent_params = {
        (key, name)
        for key, entry in catalog().items()
        for name, spec in param_specs(entry).items()
        if not spec.operator_only
    }
    assert agent_params == set(RULES)


def resolve_with(key: str, name: str, value: str):
    params = {**FIXED.get(key, {}), name: value}
    row = provider_row(key, {"settings": SETTINGS.get(key, {})})
    if catalog()[key].get("auth_mode", "oauth2") != "oauth2":  # static credentials: no OAuth endpoints
        return resolve_static(row, params), None
    return resolve(row, params)


def check_urls(key: str, name: str, value: str, spec) -> None:
    assert value.isascii() and value not in (".", "..")
    assert not re.search(r"[\s@#?%\\/:]", value)
    for field in URL_FIELDS:
        url = getattr(spec, field)
        if not url or url.startswith("{metadata."):  # a metadata base is pinned by api_hosts
            continue
        if field == "api_base_url" and f"{{{name}}}" not in catalog()[key]["api_base_url"]:
            continue  # the value does not reach the proxy's upstream
        parts = urlsplit(url)
        assert parts.scheme == "https" and parts.username is None and parts.port is None, url
        assert not parts.query and not parts.fragment, url
        assert ".." not in parts.path.split("/"), url
        assert RULES[(key, name)](url, value), url


BAD_VALUES = [
    "evil.com/",
    "a.b",
    "x@evil",
    "..",
    ".",
    "acmé",
    "\u0430cme",
    "a" * 254,
    "",
    " acme",
    "acme\n",
    "%2e%2e",
    "evil.com#",
    "evil.com?x=",
    "evil.com\\",
    "evil.com:443",
    "acme/../evil",
    "acme\x00",
    "acme.zendesk.com.evil.com",
    "evil.com/.myshopify.com",
    "x.okta.com.evil.com",
    "evil.com#.auth0.com",
    "common/../../evil",
    "ACME.zendesk.com",
]


@pytest.mark.parametrize("key, name", sorted(RULES))
@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_values_are_refused_without_echoing_them(key, name, value):
    with pytest.raises(ProviderConfigError) as caught:
        resolve_with(key, name, value)
    message = str(caught.value)
    assert repr(name) in message
    if len(value) > 1:
        assert value not in message and repr(value) not in message


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), case=st.sampled_from(sorted(RULES)))
def test_property_no_accepted_value_leads_off_the_providers_domains(data, case):
    key, name = case
    spec_of_param = param_specs(catalog()[key])[name]
    sample = spec_of_param.example or "acme"
    value = data.draw(
        st.one_of(
            st.from_regex(spec_of_param.pattern, fullmatch=True),
            st.text(max_size=40),
            st.builds(
                lambda at, nasty: sample[:at] + nasty + sample[at:],
                st.integers(0, len(sample)),
                st.sampled_from(
                    [
                        "/",
                        "@",
                        "#",
                        "?",
                        ".",
                        "..",
                        ":",
                        "%2f",
                        "\\",
                        "\n",
                        " ",
                        ".evil.com",
                        "evil.com/",
                        "\u3002",
                        "\u0430",
                        "\u200b",
                    ]
                ),
            ),
        )
    )
    try:
        spec, _hooks = resolve_with(key, name, value)
    except ProviderConfigError:
        return
    check_urls(key, name, value, spec)


@pytest.mark.parametrize(
    "key, host",
    [
        ("gitlab", "evil.com/x"),
        ("gitlab", "a@b.com"),
        ("gitlab", "gitlab.example.com#"),
        ("keycloak", "sso.example.com/realms/x"),
        ("keycloak", "sso.example.com?"),
        ("keycloak", "localhost\n"),
    ],
)
def test_operator_hosts_are_hosts_too(key, host):
    with pytest.raises(ProviderConfigError, match="'host'"):
        resolve(provider_row(key, {"settings": {"host": host}}), {"realm": "acme"} if key == "keycloak" else None)


def test_agents_cannot_set_operator_parameters_nor_unknown_ones():
    with pytest.raises(ProviderConfigError, match="set by the operator"):
        resolve(provider_row("keycloak", {"settings": {"host": KEYCLOAK_HOST}}), {"realm": "a", "host": "evil.com"})
    with pytest.raises(ProviderConfigError, match=r"this provider takes: subdomain"):
        resolve(provider_row("zendesk", {}), {"subdomain": "acme", "token_url": "https://evil.com"})
    with pytest.raises(ProviderConfigError, match="takes: none"):
        resolve(provider_row("google", {}), {"tenant": "x"})
    with pytest.raises(ProviderConfigError, match="invalid value"):
        resolve(provider_row("zendesk", {}), {"subdomain": ["acme"]})


# -- through the gateway ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_request_connection_refuses_bad_params_with_400_and_stores_nothing(stack):
    from tests.conftest import auth_params, make_provider

    make_provider(
        name="zendesk",
        template="zendesk",
        discovery_url="",
        client_id="cid",
        client_secret="sec",
        default_scopes=["read"],
    )
    make_provider(
        name="keycloak",
        template="keycloak",
        discovery_url="",
        client_id="cid",
        client_secret="sec",
        default_scopes=["openid"],
        settings={"host": KEYCLOAK_HOST},
    )
    key = stack.key()

    def request(provider: str, params=None):
        body = {"user_id": "u", "provider_name": provider, "return_url": "https://app.example.com/r"}
        if params is not None:
            body["params"] = params
        return stack.call("POST", "/v1/request-connection", key, json=body)

    for value in ["evil.com/", "a.b", "x@evil", "..", "acmé", "a" * 254, "acme.zendesk.com.evil.com"]:
        response = request("zendesk", {"subdomain": value})
        assert response.status_code == 400, value
        body = response.json()
        assert body["error"] == "invalid_request" and "subdomain" in body["message"]
        assert value not in response.text
    too_long = request("zendesk", {"subdomain": "a" * 300})  # over the API's own field limit
    assert too_long.status_code == 400 and "a" * 300 not in too_long.text

    missing = request("zendesk")
    assert missing.status_code == 400
    assert "'subdomain'" in missing.json()["message"] and "params" in missing.json()["details"]
    missing_realm = request("keycloak", {})
    assert missing_realm.status_code == 400 and "'realm'" in missing_realm.json()["message"]
    operator_only = request("keycloak", {"realm": "acme", "host": "evil.com"})
    assert operator_only.status_code == 400 and "operator" in operator_only.json()["message"]
    unknown = request("zendesk", {"subdomain": "acme", "token_url": "https://evil.com/"})
    assert unknown.status_code == 400 and "subdomain" in unknown.json()["message"]
    assert Connection.objects.count() == 0

    accepted = request("zendesk", {"subdomain": "acme"})
    assert accepted.status_code == 201, accepted.text
    auth_url = accepted.json()["authUrl"]
    assert auth_url.startswith("https://acme.zendesk.com/oauth/authorizations/new?")
    assert auth_params(auth_url)["scope"] == "read"
    realm = request("keycloak", {"realm": "acme"})
    assert realm.status_code == 201
    assert realm.json()["authUrl"].startswith(f"https://{KEYCLOAK_HOST}/realms/acme/protocol/openid-connect/auth?")
    assert Connection.objects.count() == 2
