"""Microsoft Entra multi-tenant endpoints (`common`, `organizations`, `consumers`): the
discovery issuer is a template (`https://login.microsoftonline.com/{tenantid}/v2.0`); the
issuer a token must carry is that template filled with the token's own `tid`, which must
be a tenant GUID, fit the configured tenant and (when set) the operator's allowlist. The
literal `{tenantid}` is never an acceptable issuer.

Tokens are signed by the fake provider's key and checked through the real `microsoft`
catalog entry and hook, with the JWKS URI pointed at the fake provider."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from fake_provider import CLIENT_ID, DROP

from broker_app.crypto import digest
from broker_app.oauth import oidc
from broker_app.oauth.errors import IdTokenError
from broker_app.providers.hooks import MSA_TENANT, hooks_for
from broker_app.providers.registry import resolve, set_client_secret
from broker_app.providers.spec import ProviderConfigError

pytestmark = pytest.mark.django_db

NONCE = "n-0"
TENANT_A = "72f988bf-86f1-41af-91ab-2d7cd011db47"
TENANT_B = "0b1e4c5d-1111-4a2b-9c3d-123456789abc"
TEMPLATE = "https://login.microsoftonline.com/{tenantid}/v2.0"


def issuer_of(tid: str) -> str:
    return TEMPLATE.replace("{tenantid}", tid)


@pytest.fixture
def entra(fake_provider):
    """A spec from the real `microsoft` catalog entry for `tenant`, its keys at the fake provider."""
    from broker_app.models import Provider

    def build(tenant: str = "common", allowed_tenants=None):
        settings = {"tenant": tenant}
        if allowed_tenants is not None:
            settings["allowed_tenants"] = allowed_tenants
        provider = Provider(
            name=f"entra-{uuid.uuid4().hex[:12]}", template="microsoft", client_id=CLIENT_ID, settings=settings
        )
        set_client_secret(provider, "entra-secret")
        provider.save()
        spec, hooks = resolve(provider)
        assert spec.hook == "microsoft" and hooks is hooks_for("microsoft")
        return dataclasses.replace(spec, jwks_uri=f"{fake_provider.url}/jwks"), hooks

    return build


def verify(entra_spec, token: str) -> dict:
    spec, hooks = entra_spec
    return oidc.verify_id_token(spec, hooks, token, nonce_digest=digest(NONCE))


def token(fake, tid, iss=None, **claims):
    return fake.id_token(nonce=NONCE, tid=tid, iss=iss if iss is not None else issuer_of(str(tid)), **claims)


@pytest.mark.parametrize("tenant", ["common", "organizations"])
def test_multi_tenant_issuer_is_the_template_filled_with_the_tokens_tid(entra, fake_provider, tenant):
    spec = entra(tenant)
    assert spec[0].issuer == TEMPLATE  # the template is kept, not filled at configuration time
    claims = verify(spec, token(fake_provider, TENANT_A))
    assert claims["tid"] == TENANT_A and claims["iss"] == issuer_of(TENANT_A)


def test_issuer_of_another_tenant_than_tid_is_rejected(entra, fake_provider):
    with pytest.raises(IdTokenError, match="issuer"):
        verify(entra(), token(fake_provider, TENANT_A, iss=issuer_of(TENANT_B)))


@pytest.mark.parametrize(
    "tid",
    [
        "contoso",
        "contoso.onmicrosoft.com",
        TENANT_A.upper(),
        TENANT_A + "\n",
        " " + TENANT_A,
        TENANT_A.replace("-", ""),
        TENANT_A + "/v2.0/../" + TENANT_B,
        "{tenantid}",
        "",
        7,
        None,
    ],
)
def test_tid_that_is_not_a_tenant_guid_is_rejected(entra, fake_provider, tid):
    forged = fake_provider.id_token(nonce=NONCE, tid=DROP if tid is None else tid, iss=issuer_of(str(tid or "")))
    with pytest.raises(IdTokenError, match="tid is not a tenant GUID"):
        verify(entra(), forged)


def test_literal_tenantid_issuer_is_rejected(entra, fake_provider):
    forged = fake_provider.id_token(nonce=NONCE, tid="{tenantid}", iss=TEMPLATE)
    with pytest.raises(IdTokenError):
        verify(entra(), forged)
    # Not even a valid tid makes the unfilled template acceptable as the token's issuer.
    with pytest.raises(IdTokenError, match="issuer"):
        verify(entra(), token(fake_provider, TENANT_A, iss=TEMPLATE))


def test_templated_issuer_without_the_entra_hook_is_rejected(oidc_spec, fake_provider):
    """A generic OIDC provider whose discovery answers a templated issuer cannot be
    verified at all: the broker refuses rather than skipping the issuer check."""
    spec = oidc_spec(issuer=TEMPLATE)
    for iss in (TEMPLATE, issuer_of(TENANT_A)):
        with pytest.raises(IdTokenError, match="no usable issuer"):
            oidc.verify_id_token(
                spec, hooks_for("default"), token(fake_provider, TENANT_A, iss=iss), nonce_digest=digest(NONCE)
            )


def test_tenant_allowlist(entra, fake_provider):
    spec = entra(allowed_tenants=[TENANT_A])
    assert verify(spec, token(fake_provider, TENANT_A))["tid"] == TENANT_A
    with pytest.raises(IdTokenError, match="allowlist"):
        verify(spec, token(fake_provider, TENANT_B))


def test_tenant_allowlist_given_as_text_in_the_admin(entra, fake_provider):
    spec = entra(allowed_tenants=f"{TENANT_A}, {TENANT_B.upper()}")
    assert verify(spec, token(fake_provider, TENANT_A))
    assert verify(spec, token(fake_provider, TENANT_B))
    # Never a substring match: a tenant that merely contains an allowed one's text is refused.
    spec = entra(allowed_tenants=f"{TENANT_A}{TENANT_B}")
    for tid in (TENANT_A, TENANT_B):
        with pytest.raises(IdTokenError, match="allowlist"):
            verify(spec, token(fake_provider, tid))


def test_organizations_refuses_personal_accounts(entra, fake_provider):
    with pytest.raises(IdTokenError, match="personal Microsoft account"):
        verify(entra("organizations"), token(fake_provider, MSA_TENANT))
    assert verify(entra("common"), token(fake_provider, MSA_TENANT))  # common takes both


def test_consumers_takes_only_personal_accounts(entra, fake_provider):
    assert verify(entra("consumers"), token(fake_provider, MSA_TENANT))
    with pytest.raises(IdTokenError, match="personal Microsoft account"):
        verify(entra("consumers"), token(fake_provider, TENANT_A))


def test_single_tenant_configuration_takes_only_that_tenant(entra, fake_provider):
    spec = entra(TENANT_A)
    assert verify(spec, token(fake_provider, TENANT_A))
    with pytest.raises(IdTokenError, match="configured tenant"):
        verify(spec, token(fake_provider, TENANT_B))


def test_the_rest_of_the_battery_still_applies(entra, fake_provider):
    spec = entra()
    for bad in (dict(aud="someone-else"), dict(aud=[CLIENT_ID, "x"]), dict(azp="x"), dict(exp=1)):
        with pytest.raises(IdTokenError):
            verify(spec, token(fake_provider, TENANT_A, **bad))


@pytest.mark.parametrize("tenant", ["{tenantid}", "evil.test/x", "common/../evil", "Common"])
def test_tenant_parameter_cannot_point_the_broker_elsewhere(entra, tenant):
    with pytest.raises(ProviderConfigError):
        entra(tenant)
