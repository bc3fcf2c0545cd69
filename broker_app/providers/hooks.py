"""Provider quirks that data cannot express, one small class per provider, found through
the explicit HOOKS registry (no import-order magic, no `if provider == …` chains).

Most quirks are catalog data read by the default hooks (account_fields, metadata_fields,
refresh_token_lifetime_days …); a class appears here only when a rule needs code."""

from __future__ import annotations

import re
from typing import Any

from broker_app.oauth.errors import IdTokenError, PermanentOAuthError, TransientOAuthError
from broker_app.oauth.tokens import TokenSet, normalise_token_type, parse_expires_in

# \Z, not $: "$" would accept a trailing newline.
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# Flat, non-secret facts some token responses carry (Salesforce's instance_url …).
_METADATA_FIELDS = (
    "instance_url",
    "id",
    "issued_at",
    "realmId",
    "workspace_id",
    "workspace_name",
    "bot_id",
    "cloudid",
    "api_domain",
    "hub_id",
    "shop",
    "account_id",
    "uid",
    "tenant_id",
)
_REFRESH_LIFETIME_FIELDS = ("refresh_token_expires_in", "refresh_expires_in", "x_refresh_token_expires_in")
_MAX_VALUE_LENGTH = 512


def dig(data: Any, path: str) -> Any:
    """`data["a"]["b"]` for path "a.b", or None when any step is missing."""
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _scalar(value: Any) -> str | int | float | bool | None:
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str) and value:
        return value[:_MAX_VALUE_LENGTH]
    return None


def parse_scope(value: Any) -> tuple[str, ...] | None:
    """Granted scopes as a tuple: a space- or comma-separated string (GitHub, Slack and
    Shopify answer "a,b"; Linear asks with commas and answers with spaces) or a list."""
    if isinstance(value, str):
        return tuple(part for part in re.split(r"[\s,]+", value) if part)
    if isinstance(value, list):
        return tuple(str(part) for part in value if isinstance(part, str | int))
    return None


class ProviderHooks:
    """Standard RFC 6749 / OIDC behaviour. Subclasses override only what differs."""

    def parse_token_response(self, spec, data: dict[str, Any]) -> TokenSet:
        access_token = data.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise TransientOAuthError("bad_response", "token response has no access_token")
        refresh_token = data.get("refresh_token")
        refresh_token = refresh_token if isinstance(refresh_token, str) and refresh_token else None
        id_token = data.get("id_token")
        return TokenSet(
            access_token=access_token,
            token_type=self.token_type(data.get("token_type")),
            refresh_token=refresh_token,
            id_token=id_token if isinstance(id_token, str) and id_token else None,
            expires_in=parse_expires_in(data.get("expires_in")),
            refresh_expires_in=self.refresh_expires_in(spec, data, has_refresh_token=bool(refresh_token)),
            scope=self.granted_scopes(spec, data.get("scope")),
            metadata=self.metadata(spec, data),
            account=self.token_account(spec, data),
        )

    def granted_scopes(self, spec, value: Any) -> tuple[str, ...] | None:
        """Granted scopes in the vocabulary they were requested in (Google answers
        `…/auth/userinfo.email` for `email`), so narrowing is judged like for like."""
        scopes = parse_scope(value)
        if scopes is None:
            return None
        prefix = spec.scope_strip_prefix
        scopes = tuple(s[len(prefix) :] if prefix and s.startswith(prefix) else s for s in scopes)
        return tuple(dict.fromkeys(spec.scope_aliases.get(s, s) for s in scopes))

    def token_type(self, value: Any) -> str:
        # Slack says "user" or "bot", others "bearer" or nothing: all are used as Bearer
        # tokens. Only a scheme that changes how the token is presented is kept.
        normalised = normalise_token_type(value)
        return normalised if normalised in ("DPoP", "MAC") else "Bearer"

    def refresh_expires_in(self, spec, data: dict[str, Any], *, has_refresh_token: bool) -> int | None:
        """The refresh token's lifetime: the provider's own figure (GitHub Apps, QuickBooks,
        Airtable, Keycloak) or, for a provider that documents one, the catalog's."""
        for name in _REFRESH_LIFETIME_FIELDS:
            seconds = parse_expires_in(data.get(name))
            if seconds:
                return seconds
        if has_refresh_token and spec.refresh_token_lifetime_days:
            return int(spec.refresh_token_lifetime_days) * 86400
        return None

    def metadata(self, spec, data: dict[str, Any]) -> dict[str, Any]:
        """Non-secret facts from the token response worth keeping (instance_url …)."""
        meta = {key: _scalar(data[key]) for key in _METADATA_FIELDS if key in data}
        for key, path in spec.metadata_fields.items():
            meta[key] = _scalar(dig(data, path))
        return {key: value for key, value in meta.items() if value is not None}

    def token_account(self, spec, data: dict[str, Any]) -> dict[str, Any]:
        """Who the user is, from the token response (catalog account_fields)."""
        account = {key: _scalar(dig(data, path)) for key, path in spec.account_fields.items()}
        return {key: value for key, value in account.items() if value is not None}

    def refresh_params(self, spec) -> dict[str, str]:
        return dict(spec.refresh_params)

    def expected_issuer(self, spec, unverified_claims: dict[str, Any]) -> str:
        return spec.issuer

    def account(self, spec, claims: dict[str, Any] | None) -> dict[str, Any]:
        if not claims:
            return {}
        account = {key: claims[key] for key in ("sub", "email", "name", "iss", "tid") if key in claims}
        account["aud"] = claims.get("aud")
        return account


# Personal Microsoft accounts all sign in under this one tenant.
MSA_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"


class MicrosoftHooks(ProviderHooks):
    """Entra multi-tenant endpoints (`common`, `organizations`, `consumers`) publish an issuer
    template with `{tenantid}`; the real issuer is that template with the token's `tid`,
    which must fit the configured tenant: that GUID, the consumer tenant for `consumers`,
    any work tenant for `organizations`, and the operator's allowlist when one is set."""

    def expected_issuer(self, spec, unverified_claims: dict[str, Any]) -> str:
        issuer = spec.issuer
        if "{tenantid}" not in issuer:
            return issuer
        tid = unverified_claims.get("tid")
        if not isinstance(tid, str) or not _GUID.match(tid):
            raise IdTokenError("id_token tid is not a tenant GUID")
        tenant = str(spec.values.get("tenant", "")).lower()
        if _GUID.match(tenant) and tid != tenant:
            raise IdTokenError("id_token tenant is not the configured tenant")
        if tenant == "consumers" and tid != MSA_TENANT:
            raise IdTokenError("id_token is not from a personal Microsoft account")
        if tenant == "organizations" and tid == MSA_TENANT:
            raise IdTokenError("id_token is from a personal Microsoft account, not an organization")
        allowed = spec.settings.get("allowed_tenants")
        if isinstance(allowed, str):  # set in the admin as text: "a,b" must not match by substring
            allowed = allowed.replace(",", " ").split()
        if allowed and tid not in {str(t).strip().lower() for t in allowed}:
            raise IdTokenError("id_token tenant is not on the allowlist")
        return issuer.replace("{tenantid}", tid)


_SLACK_TOKEN_KEYS = ("access_token", "refresh_token", "expires_in", "scope", "token_type")


class SlackHooks(ProviderHooks):
    """Slack v2: the user token lives under `authed_user` (the top level holds the bot token,
    if any); a refresh answers with the refreshed token at the top level."""

    def parse_token_response(self, spec, data: dict[str, Any]) -> TokenSet:
        if data.get("ok") is False:  # the client already raised on `error`; this is a backstop
            raise PermanentOAuthError(str(data.get("error") or "slack_error"))
        user = data.get("authed_user")
        if isinstance(user, dict) and user.get("access_token"):
            # The user token's own fields replace the bot token's; nothing else moves (the
            # user's `id` stays under authed_user, where account_fields reads it).
            data = {
                **{k: v for k, v in data.items() if k not in _SLACK_TOKEN_KEYS},
                **{k: v for k, v in user.items() if k in _SLACK_TOKEN_KEYS},
            }
        return super().parse_token_response(spec, data)


HOOKS: dict[str, ProviderHooks] = {
    "default": ProviderHooks(),
    "microsoft": MicrosoftHooks(),
    "slack": SlackHooks(),
}


def hooks_for(key: str) -> ProviderHooks:
    return HOOKS[key]
