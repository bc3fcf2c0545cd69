"""API key lifecycle and verification.

A key is `dk_<prefix>_<secret>`: the 8-character prefix is public (logs, audit, admin)
and finds the row; the whole key is stored only as a SHA-256 digest and compared in
constant time. Revocation reaches this process at once, every other process through a
marker in the shared cache (Redis) at the next request, and, failing that, within
API_KEY_CACHE_SECONDS.

A key may carry restrictions (issue 19; gateway_app.restrictions): they ride on the cached
Principal, and an expired key is refused (None: 401) on the cached path too. Revoking a key
revokes the keys minted from it, each with its own marker.

Redis unreachable: the gateway keeps serving (REDIS_TIMEOUT_SECONDS bounds each call). The
revocation marker cannot be read, so a key revoked meanwhile is refused by the other processes
within API_KEY_CACHE_SECONDS (their cache entries expire and the database is read again); the
rate limit (gateway_app.ratelimit) is not enforced. Both are logged (at most every 10 s per
process) and counted in dromos_degraded_total; after a failed call the process leaves Redis
alone for a moment (dromos.redis)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

from django.conf import settings
from django.core.cache import cache
from django.core.signals import setting_changed
from django.db import transaction
from django.dispatch import receiver
from django.utils import timezone

from dromos import redis as shared_redis
from dromos.wire import DEFAULT_ENVIRONMENT, valid_environment
from gateway_app.metrics import degraded
from gateway_app.models import ALL_SCOPES, KNOWN_SCOPES, ApiKey

KEY_PATTERN = re.compile(r"^dk_([a-z0-9]{8})_([A-Za-z0-9_-]{43})$")
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: its workspace and environment, key prefix and scopes."""

    key_id: int
    workspace: str
    prefix: str
    scopes: frozenset[str]
    environment: str = DEFAULT_ENVIRONMENT
    # Narrow keys (issue 19; gateway_app.restrictions): None / "" means unrestricted.
    expires_at: float | None = None  # time.time() from which the key is refused (401)
    providers: frozenset[str] | None = None
    user_ids: frozenset[str] | None = None
    user_prefix: str = ""
    networks: tuple | None = None
    narrow: bool = False  # limited to some users or providers

    @property
    def tenant(self) -> str:
        """One string for (workspace, environment): "environment:workspace" (an environment
        name has no colon), for per-tenant caches in this process."""
        return f"{self.environment}:{self.workspace}"

    @property
    def is_authenticated(self) -> bool:
        return True

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def allows_user(self, user_id: str) -> bool:
        if self.user_ids is None and not self.user_prefix:
            return True
        return (self.user_ids is not None and user_id in self.user_ids) or (
            bool(self.user_prefix) and user_id.startswith(self.user_prefix)
        )

    def allows_provider(self, name: str) -> bool:
        return self.providers is None or name.lower() in self.providers


RESTRICTION_FIELDS = ("expires_at", "allowed_providers", "allowed_user_ids", "user_id_prefix", "allowed_cidrs")


def _restrictions(key: ApiKey) -> dict:
    """The Principal's restriction fields (gateway_app.restrictions), read once per cache fill."""
    if not (key.expires_at or key.allowed_providers is not None or key.allowed_user_ids is not None) and not (
        key.user_id_prefix or key.allowed_cidrs is not None
    ):
        return {}
    providers = frozenset(key.allowed_providers) if key.allowed_providers is not None else None
    user_ids = frozenset(key.allowed_user_ids) if key.allowed_user_ids is not None else None
    return {
        "expires_at": key.expires_at.timestamp() if key.expires_at else None,
        "providers": providers,
        "user_ids": user_ids,
        "user_prefix": key.user_id_prefix or "",
        "networks": tuple(ipaddress.ip_network(c, strict=False) for c in key.allowed_cidrs)
        if key.allowed_cidrs is not None
        else None,
        "narrow": providers is not None or user_ids is not None or bool(key.user_id_prefix),
    }


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def apikey_create(
    *,
    workspace: str,
    name: str,
    scopes: list[str] | None = None,
    environment: str = DEFAULT_ENVIRONMENT,
    configure: Callable[[ApiKey], None] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for the workspace's environment; return the row and the plaintext key
    (shown once, never stored). `configure` sets more fields (restrictions, parent) on the
    row before it is saved."""
    valid_environment(environment)  # ValueError: no path or SQL character gets through
    unknown = set(scopes or []) - set(KNOWN_SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(sorted(unknown))}")
    if not workspace or not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", workspace):
        raise ValueError("workspace must be 1-128 characters of letters, digits, . _ : -")
    if not name or len(name) > 128:
        raise ValueError("name must be 1-128 characters")
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    while True:
        prefix = "".join(secrets.choice(alphabet) for _ in range(8))
        if not ApiKey.objects.filter(prefix=prefix).exists():
            break
    plaintext = f"dk_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        workspace=workspace,
        environment=environment,
        name=name,
        prefix=prefix,
        key_digest=_digest(plaintext),
        scopes=sorted(scopes or []),
    )
    if configure is not None:
        configure(key)
    key.save(force_insert=True)
    return key, plaintext


@transaction.atomic
def apikey_revoke(*, prefix: str, workspace: str | None = None) -> ApiKey:
    """Revoke a key and every key minted from it (and from those, …): a minted key never
    outlives its parent. `workspace` scopes the lookup (DoesNotExist otherwise)."""
    keys = ApiKey.objects.select_for_update()
    key = (keys.filter(workspace=workspace) if workspace is not None else keys).get(prefix=prefix)
    now, prefixes, level = timezone.now(), [key.prefix], [key.pk]
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now)
    while level:  # minted keys (issue 19), revoked in the same transaction
        children = list(ApiKey.objects.select_for_update().filter(parent_id__in=level).values_list("pk", "prefix"))
        ApiKey.objects.filter(pk__in=[pk for pk, _ in children], revoked_at__isnull=True).update(revoked_at=now)
        prefixes += [p for _, p in children]
        level = [pk for pk, _ in children]
    key.refresh_from_db(fields=["revoked_at"])
    transaction.on_commit(lambda: [_announce_revocation(p) for p in prefixes])
    return key


def _announce_revocation(prefix: str) -> None:
    # Other processes may hold the key in their in-process cache: tell them through the
    # shared cache. After API_KEY_CACHE_SECONDS every cache entry has been re-read anyway.
    _cache_forget(prefix)
    try:
        cache.set(_revoked_marker(prefix), True, timeout=settings.API_KEY_CACHE_SECONDS + 60)
    except shared_redis.RedisError:
        degraded(
            "revocation_marker",
            "Redis unreachable: the revocation is saved; other gateway processes "
            "refuse the key once their cached copy expires (API_KEY_CACHE_SECONDS)",
            always=True,
            failed=True,
        )


def _revoked_marker(prefix: str) -> str:
    return f"apikey:revoked:{prefix}"


# A short in-process cache keeps the database off the hot path; the revocation marker
# (one shared-cache read) keeps it honest across processes.
_cache: dict[str, tuple[float, str, Principal, float]] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 10_000


def _revoked_elsewhere(prefix: str) -> bool:
    client = shared_redis.client()
    if client is None:
        return bool(cache.get(_revoked_marker(prefix)))
    message = "Redis unreachable: revocations by other processes reach this one within API_KEY_CACHE_SECONDS"
    if shared_redis.resting():
        degraded("revocation_marker", message)
        return False
    try:
        # The marker was written through Django's cache: same key, any value means revoked.
        return bool(client.exists(cache.make_key(_revoked_marker(prefix))))
    except shared_redis.RedisError:
        degraded("revocation_marker", message, failed=True)
        return False


def _cache_forget(prefix: str) -> None:
    with _cache_lock:
        _cache.pop(prefix, None)


def cache_clear() -> None:
    with _cache_lock:
        _cache.clear()


def cached_principal(presented: str) -> Principal | None:
    """The principal of a key this process verified within API_KEY_CACHE_SECONDS, when the
    presented key matches its digest (constant time); None otherwise (not cached, expired,
    malformed, wrong secret): apikey_verify decides those. The caller must still check the
    revocation marker (revocation_marker_key) before trusting it (gateway_app/fast_token.py
    reads it in the same Redis round trip as the rate-limit counter)."""
    match = KEY_PATTERN.match(presented)
    if not match:
        return None
    cached = _cache.get(match.group(1))
    if not cached or cached[0] <= time.monotonic():
        return None
    _, stored_digest, principal, _ = cached
    return principal if hmac.compare_digest(stored_digest, _digest(presented)) else None


@lru_cache(maxsize=_CACHE_MAX)
def revocation_marker_key(prefix: str) -> str:
    """The revocation marker's key in Redis (written through Django's cache; the cache's key
    function applied once per prefix)."""
    return cache.make_key(_revoked_marker(prefix))


@receiver(setting_changed)
def _cache_settings_changed(*, setting: str, **kwargs) -> None:  # tests' override_settings
    if setting == "CACHES":
        revocation_marker_key.cache_clear()


def forget(prefix: str) -> None:
    """Drop a key from this process's cache (its revocation marker was seen)."""
    _cache_forget(prefix)


def apikey_verify(presented: str, *, before_lookup: Callable[[], None] | None = None) -> Principal | None:
    """The principal for a presented key, or None. Constant-time digest comparison.
    `before_lookup` runs just before the database is read (and may raise)."""
    match = KEY_PATTERN.match(presented)
    if not match:
        return None
    prefix = match.group(1)
    presented_digest = _digest(presented)
    now = time.monotonic()
    cached = _cache.get(prefix)
    if cached and cached[0] > now:
        _, stored_digest, principal, _ = cached
        if not hmac.compare_digest(stored_digest, presented_digest):
            return None
        if principal.expires_at is not None and principal.expires_at <= time.time():
            return None  # expired (issue 19): 401 like a revoked key
        if _revoked_elsewhere(prefix):
            _cache_forget(prefix)
            return None
        return principal
    if before_lookup is not None:
        before_lookup()
    key = (
        ApiKey.objects.filter(prefix=prefix)
        .only(
            "id",
            "workspace",
            "environment",
            "prefix",
            "key_digest",
            "scopes",
            "revoked_at",
            "last_used_at",
            *RESTRICTION_FIELDS,
        )
        .first()
    )
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.key_digest, presented_digest):
        return None
    if key.expires_at is not None and key.expires_at <= timezone.now():
        return None
    principal = Principal(
        key_id=key.id,
        workspace=key.workspace,
        prefix=key.prefix,
        scopes=frozenset(key.scopes or ALL_SCOPES),
        environment=key.environment,
        **_restrictions(key),
    )
    if key.last_used_at is None or timezone.now() - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[prefix] = (now + settings.API_KEY_CACHE_SECONDS, key.key_digest, principal, now)
    return principal
