"""Every catalog provider runs the shared contract (tests/providers/contract.py) against
its recorded answers (tests/providers/recorded/<template>.json). Providers with a quirk the
data cannot show on its own get a class of their own below, with extra tests; every other
template gets a plain contract class, generated at the bottom of this module."""

from __future__ import annotations

import pytest

from broker_app.oauth import client, oidc
from broker_app.oauth.errors import IdTokenError, PermanentOAuthError
from broker_app.providers.account_id import account_id
from broker_app.providers.hooks import MSA_TENANT
from broker_app.providers.registry import resolve
from broker_app.providers.spec import ProviderConfigError, catalog, catalog_problems
from tests.providers.contract import (
    REDIRECT_URI,
    VERIFIER,
    ProviderContract,
    at_replay,
    load,
    provider_row,
    recorded_keys,
)


def test_catalog_has_no_problems():
    assert catalog_problems() == []


def test_every_catalog_template_has_recorded_answers_and_runs_the_contract():
    # Static-credential templates (API key, Basic) have no OAuth exchange to record: their
    # injection and verification are tested per kind in tests/broker/test_static_credentials.py.
    static = {key for key, entry in catalog().items() if entry.get("auth_mode", "oauth2") != "oauth2"}
    assert len(static) >= 10
    assert recorded_keys() == sorted(set(catalog()) - static)
    contract_classes = {
        obj.key
        for obj in globals().values()
        if isinstance(obj, type) and issubclass(obj, ProviderContract) and obj is not ProviderContract
    }
    assert contract_classes == set(catalog()) - static
    issue_list = {
        "google",
        "microsoft",
        "github",
        "github_app",
        "gitlab",
        "slack",
        "atlassian",
        "notion",
        "salesforce",
        "hubspot",
        "zoom",
        "dropbox",
        "box",
        "linear",
        "asana",
        "discord",
        "spotify",
        "figma",
        "airtable",
        "quickbooks",
        "xero",
        "zendesk",
        "shopify",
        "okta",
        "auth0",
        "keycloak",
        "oidc",
    }
    assert issue_list <= set(catalog())


def test_the_providers_agents_use_are_in_the_catalog():
    """Issue 22's list (Coda and Freshdesk publish no OAuth authorization-code flow for
    third-party apps, so they have no entry)."""
    agents_use = {
        # productivity and docs
        *("google_drive", "gmail", "google_calendar", "google_sheets", "google_docs", "google_slides"),
        *("outlook", "onedrive", "sharepoint", "dropbox", "box", "notion", "confluence", "miro", "canva"),
        # dev tools
        *("github", "gitlab", "bitbucket", "linear", "jira", "asana", "clickup", "monday", "vercel"),
        *("sentry", "pagerduty"),
        # CRM and sales
        *("salesforce", "hubspot", "pipedrive", "zoho_crm", "close", "attio", "intercom", "zendesk"),
        # communication
        *("slack", "discord", "zoom", "webex", "microsoft_teams"),
        # commerce and finance
        *("shopify", "stripe", "quickbooks", "xero", "paypal"),
        # social and content
        *("linkedin", "x", "reddit", "youtube", "spotify"),
        # cloud identity
        *("okta", "auth0", "keycloak", "entra_b2c"),
    }
    assert agents_use <= set(catalog())
    assert len(set(catalog()) - {"oidc"}) >= 100


@pytest.mark.parametrize(
    "field, documents, expected",
    [
        ("id_token.sub", {"claims": {"sub": "248289761001"}}, "248289761001"),
        ("token.authed_user.id", {"token": {"authed_user": {"id": "U1234"}}}, "U1234"),
        ("userinfo.id", {"userinfo": {"id": 583231}}, "583231"),
        ("userinfo.data.id", {"userinfo": {"data": {"id": ""}}}, None),
        ("userinfo.id", {"userinfo": {"id": True}}, None),
        ("userinfo.id", {"userinfo": {"id": {"nested": 1}}}, None),
        ("userinfo.id", {"token": {"id": "from-the-wrong-document"}}, None),
        ("callback.realmId", {"callback": {"realmId": "4620816365031285680"}}, "4620816365031285680"),
        ("param.shop", {"params": {"shop": "acme.myshopify.com"}}, "acme.myshopify.com"),
        ("", {"token": {"id": "x"}}, None),
    ],
)
def test_account_id_reads_only_the_document_the_field_names(field, documents, expected):
    assert account_id(field, **documents) == expected


def exchange(spec, hooks, replay, body, *, status=200, content_type="application/json"):
    replay.answer("POST", client.urlsplit(spec.token_url).path, status, body, content_type=content_type)
    return client.exchange_code(spec, hooks, code="code-123", redirect_uri=REDIRECT_URI, code_verifier=VERIFIER)


class TestGoogle(ProviderContract):
    key = "google"

    def test_granted_scopes_come_back_in_the_requested_vocabulary(self, live):
        spec, hooks = live
        tokens = hooks.parse_token_response(
            spec,
            {
                "access_token": "a",
                "scope": "https://www.googleapis.com/auth/userinfo.email openid "
                "https://www.googleapis.com/auth/drive.readonly",
            },
        )
        assert tokens.scope == ("email", "openid", "https://www.googleapis.com/auth/drive.readonly")


class TestMicrosoft(ProviderContract):
    """Entra: a tenant GUID or domain, or the multi-tenant `common`, `organizations` and
    `consumers` endpoints, whose id_tokens name their issuer only through `tid`."""

    key = "microsoft"
    WORK_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"

    @pytest.mark.parametrize(
        "tenant",
        ["common", "organizations", "consumers", "contoso.onmicrosoft.com", "72f988bf-86f1-41af-91ab-2d7cd011db47"],
    )
    def test_tenant_selects_the_endpoints(self, tenant):
        spec, _hooks = resolve(provider_row(self.key, {}), {"tenant": tenant})
        base = f"https://login.microsoftonline.com/{tenant}"
        assert spec.authorize_url == f"{base}/oauth2/v2.0/authorize"
        assert spec.token_url == f"{base}/oauth2/v2.0/token"
        assert spec.jwks_uri == f"{base}/discovery/v2.0/keys"

    def test_operator_can_pin_the_tenant(self):
        spec, _hooks = resolve(provider_row(self.key, {"settings": {"tenant": self.WORK_TENANT}}))
        assert self.WORK_TENANT in spec.token_url
        with pytest.raises(ProviderConfigError, match="fixed by the operator"):
            resolve(provider_row(self.key, {"settings": {"tenant": self.WORK_TENANT}}), {"tenant": "common"})

    def test_tenant_is_required(self):
        with pytest.raises(ProviderConfigError, match="'tenant'"):
            resolve(provider_row(self.key, {}))

    @pytest.mark.parametrize(
        "tenant, tid, accepted",
        [
            ("common", WORK_TENANT, True),
            ("common", MSA_TENANT, True),
            ("organizations", WORK_TENANT, True),
            ("organizations", MSA_TENANT, False),
            ("consumers", MSA_TENANT, True),
            ("consumers", WORK_TENANT, False),
            (WORK_TENANT, WORK_TENANT, True),
            (WORK_TENANT, "0b5d0b3a-1111-4222-8333-944455566677", False),
            ("common", "not-a-guid", False),
            ("common", WORK_TENANT + "\n", False),
        ],
    )
    def test_issuer_follows_the_tokens_tenant_within_what_the_tenant_setting_allows(self, tenant, tid, accepted):
        spec, hooks = resolve(provider_row(self.key, {}), {"tenant": tenant})
        if accepted:
            assert hooks.expected_issuer(spec, {"tid": tid}) == f"https://login.microsoftonline.com/{tid}/v2.0"
        else:
            with pytest.raises(IdTokenError):
                hooks.expected_issuer(spec, {"tid": tid})

    def test_allowed_tenants_setting_limits_common(self):
        spec, hooks = resolve(
            provider_row(self.key, {"settings": {"allowed_tenants": [self.WORK_TENANT]}}), {"tenant": "common"}
        )
        assert hooks.expected_issuer(spec, {"tid": self.WORK_TENANT}).endswith(f"/{self.WORK_TENANT}/v2.0")
        with pytest.raises(IdTokenError, match="allowlist"):
            hooks.expected_issuer(spec, {"tid": MSA_TENANT})

    def test_id_token_from_another_tenant_is_rejected_when_the_tenant_is_pinned(self, replay, db):
        spec, hooks = resolve(provider_row(self.key, {}), {"tenant": self.WORK_TENANT})
        spec = at_replay(spec, replay)
        import time

        import jwt

        from tests.providers.contract import CLIENT_ID, signing_key

        private, public = signing_key()
        replay.answer("GET", client.urlsplit(spec.jwks_uri).path, 200, {"keys": [public]})
        other = "0b5d0b3a-1111-4222-8333-944455566677"
        now = int(time.time())
        token = jwt.encode(
            {
                "iss": f"https://login.microsoftonline.com/{other}/v2.0",
                "tid": other,
                "sub": "s",
                "aud": CLIENT_ID,
                "iat": now,
                "exp": now + 600,
            },
            private,
            algorithm="RS256",
            headers={"kid": "contract-key"},
        )
        with pytest.raises(IdTokenError, match="configured tenant"):
            oidc.verify_id_token(spec, hooks, token, nonce_digest=None)


class TestGitHub(ProviderContract):
    key = "github"

    def test_form_encoded_answer_is_understood_too(self, live, replay):
        """Without `Accept: application/json` GitHub answers form-encoded; a proxy that drops
        the header must not break the exchange."""
        spec, hooks = live
        tokens = exchange(
            spec,
            hooks,
            replay,
            "access_token=gho_16C7e42F292c6912E7710c838347Ae178B4a&scope=repo%2Cgist&token_type=bearer",
            content_type="application/x-www-form-urlencoded; charset=utf-8",
        )
        assert tokens.access_token == "gho_16C7e42F292c6912E7710c838347Ae178B4a"
        assert tokens.scope == ("repo", "gist")

    def test_form_encoded_error_with_http_200_is_an_error(self, live, replay):
        spec, hooks = live
        with pytest.raises(PermanentOAuthError) as caught:
            exchange(
                spec,
                hooks,
                replay,
                "error=bad_verification_code&error_description=The+code+passed+is+incorrect",
                content_type="application/x-www-form-urlencoded",
            )
        assert caught.value.error == "invalid_grant"


class TestGitHubApp(ProviderContract):
    key = "github_app"


class TestGitLab(ProviderContract):
    key = "gitlab"

    def test_self_managed_host_is_set_by_the_operator_only(self):
        spec, _hooks = resolve(provider_row(self.key, {"settings": {"host": "gitlab.example.com"}}))
        assert spec.token_url == "https://gitlab.example.com/oauth/token"
        assert spec.issuer == "https://gitlab.example.com"
        with pytest.raises(ProviderConfigError, match="set by the operator"):
            resolve(provider_row(self.key, {}), {"host": "evil.example.com"})


class TestSlack(ProviderContract):
    """Slack v2 user tokens: requested in `user_scope`, comma-separated; the user token is
    under `authed_user` (the top level is the bot's); errors are HTTP 200 with ok:false."""

    key = "slack"

    def test_the_bot_token_at_the_top_level_is_never_taken_for_the_users(self, live, replay):
        spec, hooks = live
        tokens = exchange(spec, hooks, replay, load(self.key)["exchange"]["body"])
        assert tokens.access_token.startswith("xoxe.xoxp-") and tokens.refresh_token == "xoxe-1-user-refresh"
        assert "U0KRQLJ9H" not in tokens.metadata.values()  # the bot user is not the account

    def test_user_only_install_has_no_top_level_token(self, live, replay):
        spec, hooks = live
        tokens = exchange(
            spec,
            hooks,
            replay,
            {
                "ok": True,
                "app_id": "A0KRD7HC3",
                "team": {"id": "T9TK3CUKW", "name": "Team"},
                "enterprise": None,
                "authed_user": {
                    "id": "U1234",
                    "scope": "users:read",
                    "access_token": "xoxp-1234",
                    "token_type": "user",
                },
                "is_enterprise_install": False,
            },
        )
        assert tokens.access_token == "xoxp-1234" and tokens.refresh_token is None and tokens.expires_in is None
        assert tokens.scope == ("users:read",) and tokens.account == {"sub": "U1234", "team_id": "T9TK3CUKW"}

    def test_ok_false_without_an_error_code_is_still_an_error(self, live, replay):
        spec, hooks = live
        with pytest.raises(PermanentOAuthError) as caught:
            exchange(spec, hooks, replay, {"ok": False})
        assert caught.value.error == "slack_error"


class TestSlackBot(ProviderContract):
    key = "slack_bot"


class TestAtlassian(ProviderContract):
    key = "atlassian"

    def test_refresh_is_a_json_body_with_the_client_credentials(self, live, replay):
        spec, hooks = live
        replay.answer("POST", client.urlsplit(spec.token_url).path, 200, load(self.key)["refresh"]["body"])
        client.refresh(spec, hooks, refresh_token="RT-OLD")
        body = replay.only("POST").json
        assert body == {
            "grant_type": "refresh_token",
            "refresh_token": "RT-OLD",
            "client_id": "dromos-client-id",
            "client_secret": "dromos-client-secret",
        }


class TestNotion(ProviderContract):
    key = "notion"


class TestSalesforce(ProviderContract):
    key = "salesforce"

    @pytest.mark.parametrize(
        "login_host", ["test.salesforce.com", "acme.my.salesforce.com", "acme--uat.sandbox.my.salesforce.com"]
    )
    def test_login_host_per_connection(self, login_host):
        spec, _hooks = resolve(provider_row(self.key, {}), {"login_host": login_host})
        assert spec.token_url == f"https://{login_host}/services/oauth2/token"


class TestFigma(ProviderContract):
    key = "figma"

    def test_error_true_is_not_an_error_code(self, live, replay):
        spec, hooks = live
        with pytest.raises(PermanentOAuthError) as caught:
            exchange(spec, hooks, replay, {"error": True, "status": 400, "message": "Invalid code"}, status=400)
        assert caught.value.error == "http_400"


class TestAirtable(ProviderContract):
    """Airtable refuses an authorization request without PKCE: the challenge is always
    sent, and the verifier with the code."""

    key = "airtable"

    def test_pkce_is_required(self, entry):
        assert entry["pkce"] == "required"


class TestKeycloak(ProviderContract):
    key = "keycloak"

    def test_legacy_auth_prefix_in_the_operators_host(self):
        spec, _hooks = resolve(
            provider_row(self.key, {"settings": {"host": "sso.example.com/auth"}}), {"realm": "acme"}
        )
        assert spec.token_url == "https://sso.example.com/auth/realms/acme/protocol/openid-connect/token"

    def test_host_and_realm_both_missing_are_both_named(self):
        with pytest.raises(ProviderConfigError) as caught:
            resolve(provider_row(self.key, {}))
        assert "'host'" in str(caught.value) and "'realm'" in str(caught.value)


# Every other OAuth template runs the contract as it is.
for _key in sorted(
    {key for key, entry in catalog().items() if entry.get("auth_mode", "oauth2") == "oauth2"}
    - {
        obj.key
        for obj in list(globals().values())
        if isinstance(obj, type) and issubclass(obj, ProviderContract) and obj is not ProviderContract
    }
):
    _name = "Test" + "".join(part.capitalize() for part in _key.split("_"))
    globals()[_name] = type(_name, (ProviderContract,), {"key": _key, "__module__": __name__})
