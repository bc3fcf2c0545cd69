"""Narrow keys and minted keys (issue 19).

A key may be restricted to a set of providers, a set of `user_id`s and/or a `user_id`
prefix, its proxy egress policy (gateway_app.egress), an expiry date and a list of source
networks. The restrictions ride on the cached `Principal` (gateway_app.keys), so checking
them is a few in-memory comparisons:

- expired key → 401 (gateway_app.keys refuses it like a revoked one);
- request from an address outside `allowed_cidrs` → 403 `forbidden`, before anything else;
- a `user_id` or `provider_name` the request names itself (request-connection, static
  connections, connect sessions, the list filter) outside the key's sets → 403 `forbidden`:
  the caller chose the value, nothing about other users leaks;
- a connection named by id whose user or provider is outside the key's sets → 404
  `not_found`, exactly like another workspace's connection: the existence of another
  user's connection must not leak. The gateway learns a connection's (user_id, provider)
  once per process with the broker's plain connection read (no token read, no refresh, no
  audit row) and keeps it: neither ever changes for a connection.

Every check runs before the broker is asked to do anything for the request.

Minted keys: `POST /v1/keys` with `expires_in` from an admin key makes a short-lived key
whose rights are a subset of the parent's (`subset_errors` says what exceeds them: a 400);
revoking the parent revokes it (gateway_app.keys.apikey_revoke)."""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

from dromos import wire
from dromos.errors import BrokerUnavailable, Forbidden, NotFound
from gateway_app.egress import PolicyError, Rule, _glob, _rule
from gateway_app.models import ADMIN_SCOPE, ALL_SCOPES, KNOWN_SCOPES, ApiKey

PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_CONNECTION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_LIST = 100
MINT_MIN_SECONDS, MINT_MAX_SECONDS = 60, 7 * 86400

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RestrictionError(ValueError):
    """A restriction that cannot be stored (the message says which and why)."""


# -- the restrictions of one key, validated -------------------------------------------------------


@dataclass(frozen=True)
class Restrictions:
    providers: frozenset[str] | None = None
    user_ids: frozenset[str] | None = None
    user_id_prefix: str = ""
    cidrs: tuple[Network, ...] | None = None
    expires_at: datetime | None = None


def clean_providers(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value or len(value) > 100:
        raise RestrictionError("providers must be a list of 1-100 provider names (null: any provider)")
    names = set()
    for name in value:
        if not isinstance(name, str) or not PROVIDER_NAME.fullmatch(name.strip().lower()):
            raise RestrictionError(f"providers: {str(name)[:64]!r} is not a provider name")
        names.add(name.strip().lower())
    return frozenset(names)


def clean_user_ids(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value or len(value) > MAX_LIST:
        raise RestrictionError(f"user_ids must be a list of 1-{MAX_LIST} user ids (null: any user)")
    for user_id in value:
        if not isinstance(user_id, str) or not user_id or len(user_id) > 255:
            raise RestrictionError("user_ids: each is a string of 1-255 characters")
    return frozenset(value)


def clean_prefix(value: Any) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or len(value) > 255:
        raise RestrictionError("user_id_prefix must be a string of 1-255 characters")
    return value


def clean_cidrs(value: Any) -> tuple[Network, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value or len(value) > 100:
        raise RestrictionError("allowed_cidrs must be a list of 1-100 networks (null: any address)")
    networks = []
    for raw in value:
        try:
            networks.append(ipaddress.ip_network(str(raw).strip(), strict=False))
        except ValueError:
            raise RestrictionError(f"allowed_cidrs: {str(raw)[:64]!r} is not a network (10.0.0.0/8, ::1/128)") from None
    return tuple(networks)


def clean_scopes(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value:
        raise RestrictionError(f"scopes must be a non-empty list of {', '.join(KNOWN_SCOPES)}")
    unknown = sorted({str(s) for s in value} - set(KNOWN_SCOPES))
    if unknown:
        raise RestrictionError(f"unknown scope(s): {', '.join(unknown)[:200]}")
    return sorted(set(value))


def restrictions_of(key: ApiKey) -> Restrictions:
    return Restrictions(
        providers=frozenset(key.allowed_providers) if key.allowed_providers is not None else None,
        user_ids=frozenset(key.allowed_user_ids) if key.allowed_user_ids is not None else None,
        user_id_prefix=key.user_id_prefix or "",
        cidrs=tuple(ipaddress.ip_network(c, strict=False) for c in key.allowed_cidrs)
        if key.allowed_cidrs is not None
        else None,
        expires_at=key.expires_at,
    )


def apply(key: ApiKey, restrictions: Restrictions) -> None:
    """Copy `restrictions` onto the (unsaved or to-be-saved) row."""
    key.allowed_providers = sorted(restrictions.providers) if restrictions.providers is not None else None
    key.allowed_user_ids = sorted(restrictions.user_ids) if restrictions.user_ids is not None else None
    key.user_id_prefix = restrictions.user_id_prefix
    key.allowed_cidrs = [str(n) for n in restrictions.cidrs] if restrictions.cidrs is not None else None
    key.expires_at = restrictions.expires_at


def key_scopes(key: ApiKey) -> frozenset[str]:
    """What the key may do: its scopes, every non-admin one when the list is empty."""
    return frozenset(key.scopes or ALL_SCOPES)


# -- subset: a minted (or API-created) key never holds more than its creator ------------------


def _user_allowed(user_id: str, ids: frozenset[str] | None, prefix: str) -> bool:
    if ids is None and not prefix:
        return True
    return (ids is not None and user_id in ids) or (bool(prefix) and user_id.startswith(prefix))


def _rule_covers(parent: Rule, child: Rule) -> bool:
    """Whether every call `child` allows is allowed by `parent`. The child's path glob is
    matched as text by the parent's: a `*` of the child can then only fall inside a `*` of
    the parent (a parent's literal characters are never `*`), so any expansion still matches."""
    return (
        parent.provider in ("*", child.provider)
        and ("*" in parent.methods or ("*" not in child.methods and set(child.methods) <= set(parent.methods)))
        and _glob(parent.path).fullmatch(child.path) is not None
    )


_OPEN = (Rule(provider="*", methods=("*",), path="/*"),)


def effective_rules(stored: list | None, default_policy: str) -> tuple[Rule, ...]:
    if stored is None:
        return _OPEN if default_policy == "open" else ()
    return tuple(_rule(r["provider"], r["methods"], r["path"]) for r in stored)


def subset_errors(
    *,
    parent: ApiKey,
    scopes: Iterable[str],
    restrictions: Restrictions,
    rules: list[Rule] | None,
    default_policy: str,
) -> list[str]:
    """What the requested key would hold beyond `parent` (empty: a subset)."""
    errors = []
    extra = sorted(set(scopes) - key_scopes(parent))
    if extra:
        errors.append(f"scopes beyond the parent key's: {', '.join(extra)}")
    granted = restrictions_of(parent)
    if granted.providers is not None and (
        restrictions.providers is None or not restrictions.providers <= granted.providers
    ):
        errors.append(f"providers must be a subset of {sorted(granted.providers)}")
    if granted.user_ids is not None or granted.user_id_prefix:
        ok = (restrictions.user_ids is not None or bool(restrictions.user_id_prefix)) and all(
            _user_allowed(u, granted.user_ids, granted.user_id_prefix) for u in restrictions.user_ids or ()
        )
        if restrictions.user_id_prefix and not (
            granted.user_id_prefix and restrictions.user_id_prefix.startswith(granted.user_id_prefix)
        ):
            ok = False
        if not ok:
            errors.append("user_ids / user_id_prefix must stay within the parent key's users")
    if granted.cidrs is not None and (
        restrictions.cidrs is None
        or not all(
            any(c.version == p.version and c.subnet_of(p) for p in granted.cidrs)  # type: ignore[arg-type]
            for c in restrictions.cidrs
        )
    ):
        errors.append(f"allowed_cidrs must lie within {[str(n) for n in granted.cidrs]}")
    if granted.expires_at is not None and (
        restrictions.expires_at is None or restrictions.expires_at > granted.expires_at
    ):
        errors.append(f"the key must expire no later than its parent ({granted.expires_at.isoformat()})")
    parent_rules = effective_rules(parent.egress_policy, default_policy)
    child_rules = effective_rules(None if rules is None else [r.as_dict() for r in rules], default_policy)
    if not all(any(_rule_covers(p, c) for p in parent_rules) for c in child_rules):
        errors.append("egress_policy must allow nothing the parent key's policy does not")
    return errors


def parse_rules(value: Any) -> list[Rule] | None:
    from gateway_app.egress import policy_parse

    if value is None:
        return None
    try:
        return policy_parse(value)
    except PolicyError as exc:
        raise RestrictionError(f"egress_policy: {exc}") from None


# -- enforcement on the request path ---------------------------------------------------------------


@lru_cache(maxsize=4096)
def _address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def check_address(principal, address: str) -> None:
    """403 when the key is limited to networks and `address` lies outside them."""
    networks = principal.networks
    if networks is None:
        return
    ip = _address(address)
    if ip is None or not any(ip in network for network in networks):
        raise Forbidden("this API key is not allowed from this address")


def check_target(principal, *, user_id: str | None = None, provider_name: str | None = None) -> None:
    """403 when the request itself names a user or provider outside the key's sets."""
    if user_id is not None and not principal.allows_user(user_id):
        raise Forbidden("this API key is not allowed for this user_id")
    if provider_name is not None and not principal.allows_provider(provider_name):
        raise Forbidden("this API key is not allowed for this provider")


# (workspace, connection_id) -> (user_id, provider name): both are fixed for a connection's life.
_owners: dict[tuple[str, str], tuple[str, str]] = {}
_owners_lock = threading.Lock()
_OWNERS_MAX = 50_000


def owners_clear() -> None:
    with _owners_lock:
        _owners.clear()


def check_connection(principal, connection_id: str, client_ip: str | None) -> None:
    """404 when the connection's user or provider is outside the key's sets (as if it did
    not exist). Unrestricted keys never come here."""
    owner = _owners.get((principal.workspace, connection_id))
    if owner is None:
        from gateway_app.broker_client import broker

        answer = broker().call(
            "GET", wire.internal_path(wire.CONNECTION, connection_id), principal=principal, client_ip=client_ip
        )
        if answer.status == 404:
            raise NotFound("connection not found")
        if answer.status != 200:
            raise BrokerUnavailable("the broker could not check this connection; retry shortly", retry_after=2)
        body = orjson.loads(answer.body)
        owner = (str(body.get("user_id", "")), str(body.get("provider_name", "")).lower())
        with _owners_lock:
            if len(_owners) >= _OWNERS_MAX:
                _owners.clear()
            _owners[(principal.workspace, connection_id)] = owner
    if not (principal.allows_user(owner[0]) and principal.allows_provider(owner[1])):
        raise NotFound("connection not found")


def enforce(request, view) -> None:
    """Run by every /v1 view after authentication, scope and throttle, before its handler
    calls the broker."""
    principal = request.user
    if principal is None or not getattr(principal, "is_authenticated", False):
        return
    if principal.networks is not None:
        check_address(principal, request.META.get("REMOTE_ADDR", ""))
    if not principal.narrow:
        return
    kwargs = view.kwargs
    if "connection_id" in kwargs and _CONNECTION_ID.fullmatch(kwargs["connection_id"]):
        check_connection(principal, kwargs["connection_id"], request.META.get("REMOTE_ADDR"))
    restrict = getattr(view, "restrict", None)
    if restrict is not None:
        restrict(request, principal)


def body_fields(request) -> dict:
    data = request.data
    return data if isinstance(data, dict) else {}


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def restrict_body(request, principal) -> None:
    """request-connection, static connections: the body's user_id and provider_name."""
    if request.method != "POST":
        return
    data = body_fields(request)
    user_id, provider = _string(data.get("user_id")), _string(data.get("provider_name"))
    check_target(principal, user_id=user_id, provider_name=provider)
    if principal.user_ids is not None or principal.user_prefix:
        if user_id is None:
            raise Forbidden("this API key is limited to some users: name the user_id")
    if principal.providers is not None and provider is None:
        raise Forbidden("this API key is limited to some providers: name the provider_name")


def restrict_listing(request, principal) -> None:
    """GET /v1/connections: a key limited to users or providers must filter by them (the
    broker's page would otherwise count and show the others)."""
    if request.method == "POST":
        restrict_body(request, principal)
        return
    user_id, provider = request.query_params.get("user_id") or None, request.query_params.get("provider_name") or None
    if (principal.user_ids is not None or principal.user_prefix) and user_id is None:
        raise Forbidden("this API key is limited to some users: filter the list by user_id")
    if principal.providers is not None and provider is None:
        raise Forbidden("this API key is limited to some providers: filter the list by provider_name")
    check_target(principal, user_id=user_id, provider_name=provider)


WORKSPACE_WIDE = "the audit log and webhooks need an admin key without user or provider limits"


def restrict_workspace_wide(request, principal) -> None:
    """The audit log and webhooks show every user's connections: a key limited to some users
    or providers may not read or change them (403)."""
    raise Forbidden(f"this API key is limited to some users or providers: {WORKSPACE_WIDE}")


def check_session(principal, body: bytes) -> None:
    """A connect session read by a narrow key: another user's session (or one offering a
    provider outside the key's) is a 404, as if it did not exist. Reading changes nothing,
    so this one is checked on the broker's answer."""
    session = orjson.loads(body)
    if not principal.allows_user(str(session.get("user_id", ""))) or not all(
        principal.allows_provider(str(name)) for name in session.get("allowed_providers") or []
    ):
        raise NotFound("connect session not found")


def restrict_session(request, principal) -> None:
    """POST /v1/connect-sessions: the user, the providers offered, the connection reconnected."""
    if request.method != "POST":
        return
    data = body_fields(request)
    reconnect = _string(data.get("reconnect"))
    if reconnect and _CONNECTION_ID.fullmatch(reconnect):
        check_connection(principal, reconnect, request.META.get("REMOTE_ADDR"))
    else:
        user_id = _string(data.get("user_id"))
        if (principal.user_ids is not None or principal.user_prefix) and user_id is None:
            raise Forbidden("this API key is limited to some users: name the user_id")
        check_target(principal, user_id=user_id)
    if principal.providers is not None:
        offered = data.get("allowed_providers")
        if not isinstance(offered, list) or not offered:
            raise Forbidden("this API key is limited to some providers: list them in allowed_providers")
        for name in offered:
            if isinstance(name, str):
                check_target(principal, provider_name=name)


# -- creating a narrow key (manage.py apikey create, POST /v1/keys) ---------------------------------


def key_create(
    *,
    workspace: str,
    name: str,
    scopes: list[str] | None = None,
    providers: Any = None,
    user_ids: Any = None,
    user_id_prefix: Any = None,
    cidrs: Any = None,
    expires_at: datetime | None = None,
    expires_in: int | None = None,
    egress_policy: Any = None,
    creator: ApiKey | None = None,
    default_policy: str = "open",
    environment: str | None = None,
) -> tuple[ApiKey, str]:
    """Validate and create a key (RestrictionError: nothing written). With `creator` (the
    admin key calling the management API) the new key must be a subset of the creator's
    rights; with `expires_in` it is minted: a child of the creator, revoked with it.
    Scopes omitted under a creator: the creator's, `admin` excepted."""
    from django.db import transaction
    from django.utils import timezone

    from gateway_app.egress import apikey_set_policy
    from gateway_app.keys import apikey_create

    if expires_in is not None:
        if isinstance(expires_in, bool) or not isinstance(expires_in, int):
            raise RestrictionError("expires_in must be a number of seconds")
        if not MINT_MIN_SECONDS <= expires_in <= MINT_MAX_SECONDS:
            raise RestrictionError(f"expires_in must be {MINT_MIN_SECONDS}-{MINT_MAX_SECONDS} seconds")
        if expires_at is not None:
            raise RestrictionError("give expires_in or expires_at, not both")
        if creator is None:
            raise RestrictionError("expires_in mints a key from an admin key (POST /v1/keys)")
        expires_at = timezone.now() + timedelta(seconds=expires_in)
    elif expires_at is not None and expires_at <= timezone.now():
        raise RestrictionError("expires_at must be in the future")
    requested = clean_scopes(scopes)
    if requested is None and creator is not None:
        requested = sorted(key_scopes(creator) - {ADMIN_SCOPE})
    restrictions = Restrictions(
        providers=clean_providers(providers),
        user_ids=clean_user_ids(user_ids),
        user_id_prefix=clean_prefix(user_id_prefix),
        cidrs=clean_cidrs(cidrs),
        expires_at=expires_at,
    )
    rules = parse_rules(egress_policy)
    if creator is not None:
        errors = subset_errors(
            parent=creator,
            scopes=requested or ALL_SCOPES,
            restrictions=restrictions,
            rules=rules,
            default_policy=default_policy,
        )
        if errors:
            raise RestrictionError("; ".join(errors))

    def configure(key: ApiKey) -> None:
        apply(key, restrictions)
        if creator is not None:
            key.created_by = creator.prefix
            key.parent = creator if expires_in is not None else None

    with transaction.atomic():
        if creator is not None:  # a key made through the API lives in its creator's environment
            environment = creator.environment
        extra = {"environment": environment} if environment is not None else {}
        key, plaintext = apikey_create(workspace=workspace, name=name, scopes=requested, configure=configure, **extra)
        if rules is not None:
            apikey_set_policy(key=key, rules=rules)
    return key, plaintext


def same_tenant(principal) -> dict:
    """The ApiKey filter of the principal's workspace and environment: another's key is a 404."""
    return {"workspace": principal.workspace, "environment": principal.environment}


def key_as_dict(key: ApiKey) -> dict:
    """A key as the management API lists it: never the key, never its digest."""
    return {
        "prefix": key.prefix,
        "name": key.name,
        "scopes": sorted(key_scopes(key)),
        "providers": key.allowed_providers,
        "user_ids": key.allowed_user_ids,
        "user_id_prefix": key.user_id_prefix or None,
        "allowed_cidrs": key.allowed_cidrs,
        "egress_policy": key.egress_policy,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "minted_from": key.parent.prefix if key.parent_id else None,
        "created_by": key.created_by or None,
    }
