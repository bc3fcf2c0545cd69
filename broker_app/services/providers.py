"""A workspace's own provider apps (issue 19): list, read, create or replace, delete.

A provider row is either shared (workspace and environment empty: the operator's default,
configured with `manage.py provider upsert`) or owned by one workspace's environment. A
workspace sees the shared rows and its own; a lookup by name prefers its own
(`broker_app.selectors.provider_get_by_name`), so a workspace may override a shared
provider under the same name with its own client.

Decisions:

- The client secret is write-only: stored encrypted (bound to the row) and never returned;
  answers say only whether one is set. Rotating it is another upsert with a new secret.
- Endpoint URLs (discovery, authorize, token, revocation, userinfo, API base) are the
  operator's to set (`operator=True`, the management command): the broker fetches them,
  so a workspace admin choosing them could aim the broker at internal addresses. Through
  the API a workspace picks a catalog template whose endpoints are fixed (or whose
  template values are pattern-checked), plus its client, scopes, authorize parameters,
  display name and template settings.
- Deleting a provider that has connections is refused (409 `provider_in_use`): its
  connections refresh with its client. Disable it instead (`enabled: false`): no new
  connections, the existing ones keep working until revoked. A disabled own row hides a
  shared one of the same name (the workspace turned that provider off).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from broker_app.models import Provider
from broker_app.oauth import oidc
from broker_app.oauth.assertions import PrivateKeyError
from broker_app.providers.registry import resolve, resolve_machine, resolve_static, set_client_secret, set_private_key
from broker_app.providers.spec import ProviderConfigError, catalog, missing_params, param_specs, resolve_values
from dromos import wire
from dromos.errors import ApiError, InvalidRequest, NotFound

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
WORKSPACE_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # as gateway_app.keys accepts
ENDPOINT_FIELDS = (
    "discovery_url",
    "authorize_url",
    "token_url",
    "revocation_url",
    "userinfo_url",
    "api_base_url",
)
WORKSPACE_FIELDS = (
    "template",
    "display_name",
    "client_id",
    "default_scopes",
    "authorize_params",
    "settings",
    "token_auth",
    "enabled",
)


class ProviderInUse(ApiError):
    status_code = 409
    code = "provider_in_use"


@dataclass(frozen=True)
class Owner:
    """Whose provider rows: a workspace's environment, or the shared ones (workspace "")."""

    workspace: str
    environment: str

    @classmethod
    def of(cls, workspace: str | None, environment: str | None) -> Owner:
        if not workspace:
            return cls("", "")
        if not WORKSPACE_PATTERN.fullmatch(workspace):
            raise InvalidRequest("workspace must be 1-128 characters of letters, digits, . _ : -")
        try:
            env = wire.valid_environment(environment or wire.DEFAULT_ENVIRONMENT)
        except ValueError as exc:
            raise InvalidRequest(str(exc), details={"environment": [str(exc)]}) from None
        return cls(workspace, env)


def _clean_name(name: object, *, write: bool = False) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name.strip().lower()):
        if not write:
            raise NotFound("provider not found")
        raise InvalidRequest(
            "provider not saved: name: must be 1-64 characters of a-z, 0-9, _ and -",
            details={"name": ["invalid name"]},
        )
    return name.strip().lower()


def provider_owned_list(*, owner: Owner) -> list[Provider]:
    return list(Provider.objects.filter(workspace=owner.workspace, environment=owner.environment).order_by("name"))


def provider_owned_get(*, owner: Owner, name: str) -> Provider:
    """The owner's own row `name` (a shared row is not the workspace's: 404)."""
    provider = Provider.objects.filter(
        workspace=owner.workspace, environment=owner.environment, name=_clean_name(name)
    ).first()
    if provider is None:
        raise NotFound("provider not found")
    return provider


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())


@transaction.atomic
def provider_upsert(
    *,
    owner: Owner,
    name: str,
    fields: dict[str, Any],
    client_secret: str | None = None,
    private_key: str | None = None,
    check: bool = True,
    operator: bool = False,
) -> tuple[Provider, bool]:
    """Create or update the owner's provider `name`; returns (row, created). `fields` are
    model fields (WORKSPACE_FIELDS, plus ENDPOINT_FIELDS when `operator`); a field left out
    keeps its value. With `check` the row must resolve (endpoints, discovery) or nothing is
    saved. Raises InvalidRequest with a message that never holds the secret."""
    name = _clean_name(name, write=True)
    allowed = WORKSPACE_FIELDS + (ENDPOINT_FIELDS if operator else ())
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidRequest(
            f"cannot set {', '.join(unknown)} here" + ("" if operator else " (endpoint URLs are set by the operator)"),
            details={field: ["not settable"] for field in unknown},
        )
    provider = (
        Provider.objects.select_for_update()
        .filter(workspace=owner.workspace, environment=owner.environment, name=name)
        .first()
    ) or Provider(workspace=owner.workspace, environment=owner.environment, name=name)
    created = provider._state.adding
    template_key = (
        fields.get("template")
        or provider.template
        or (name if name in catalog() else ("oidc" if fields.get("discovery_url") else None))
    )
    if template_key not in catalog():
        raise InvalidRequest(f"unknown template {str(template_key)[:64]!r}", details={"template": ["unknown template"]})
    for field, value in fields.items():
        if field in ("default_scopes",) and not (
            isinstance(value, list) and all(isinstance(v, str) and v and " " not in v for v in value)
        ):
            raise InvalidRequest("default_scopes must be a list of scope strings", details={field: ["invalid"]})
        if field in ("authorize_params", "settings") and not (
            isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str | list) for k, v in value.items())
        ):
            raise InvalidRequest(f"{field} must be an object of strings", details={field: ["invalid"]})
        if field == "enabled" and not isinstance(value, bool):
            raise InvalidRequest("enabled must be true or false", details={field: ["invalid"]})
        if field not in ("default_scopes", "authorize_params", "settings", "enabled") and not isinstance(value, str):
            raise InvalidRequest(f"{field} must be a string", details={field: ["invalid"]})
        setattr(provider, field, value)
    provider.template = template_key
    if client_secret is not None:
        if not isinstance(client_secret, str) or len(client_secret) > 4096:
            raise InvalidRequest("client_secret must be a string", details={"client_secret": ["invalid"]})
        set_client_secret(provider, client_secret)
    if private_key is not None:  # an app's key (GitHub App, Google service account): checked, then encrypted
        try:
            set_private_key(provider, private_key)
        except PrivateKeyError as exc:
            raise InvalidRequest(f"provider not saved: {exc}") from None
    try:
        provider.full_clean(exclude=["client_secret_enc", "private_key_enc"], validate_constraints=False)
    except ValidationError as exc:
        raise InvalidRequest(f"provider not saved: {_problems(exc)}") from None
    entry = catalog()[template_key]
    try:
        # Template values (tenant, shop, host …) must fit the catalog's pattern, always:
        # they become part of the URLs the broker calls.
        fixed = resolve_values(entry, fixed=provider.settings, given={})
    except ProviderConfigError as exc:
        raise InvalidRequest(f"provider not saved: {exc}") from None
    specs = param_specs(entry)
    operator_missing = [key for key in missing_params(entry, fixed) if specs[key].operator_only]
    if operator_missing:
        key = operator_missing[0]
        raise InvalidRequest(
            f"provider not saved: template {template_key} needs the setting {key} (e.g. {specs[key].example})"
        )
    provider.save()
    if check and not missing_params(entry, fixed):
        oidc.cache_clear()
        try:
            if entry.get("auth_mode", "oauth2") == "oauth2":
                resolve(provider)
            elif entry["auth_mode"] == "app":
                resolve_machine(provider)
            else:
                resolve_static(provider)
        except ProviderConfigError as exc:
            raise InvalidRequest(f"provider not saved, it would not be usable: {exc}") from None
    return provider, created


@transaction.atomic
def provider_delete(*, owner: Owner, name: str) -> None:
    """Delete the owner's provider `name`; 409 provider_in_use when it has connections."""
    provider = provider_owned_get(owner=owner, name=name)
    count = provider.connections.count()
    if count:
        raise ProviderInUse(
            f"provider {provider.name} has {count} connection(s); disable it (enabled: false) "
            "or revoke its connections first"
        )
    provider.delete()


def provider_admin_as_dict(provider: Provider) -> dict[str, Any]:
    """A provider row as its owner manages it. The client secret never leaves: only
    whether one is set."""
    return {
        "name": provider.name,
        "shared": not provider.workspace,
        "environment": provider.environment or None,
        "template": provider.template,
        "display_name": provider.display_name,
        "client_id": provider.client_id,
        "client_secret_set": bool(provider.client_secret_enc),
        "default_scopes": list(provider.default_scopes or []),
        "authorize_params": dict(provider.authorize_params or {}),
        "settings": dict(provider.settings or {}),
        "token_auth": provider.token_auth,
        "enabled": provider.enabled,
        "created_at": provider.created_at,
        "updated_at": provider.updated_at,
    }
