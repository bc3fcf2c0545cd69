"""API key lifecycle and verification.

A key is `dk_<prefix>_<secret>`: the 8-character prefix is public (logs, audit, admin)
and finds the row; the whole key is stored only as a SHA-256 digest and compared in
constant time. Revocation reaches this process at once, every other process through a
marker in the shared cache (Redis) at the next request, and, failing that, within
API_KEY_CACHE_SECONDS.

Redis unreachable: the gateway keeps serving (REDIS_TIMEOUT_SECONDS bounds each call). The
revocation marker cannot be read, so a key revoked meanwhile is refused by the other processes
within API_KEY_CACHE_SECONDS (their cache entries expire and the database is read again); the
rate limit (gateway_app.ratelimit) is not enforced. Both are logged (at most every 10 s per
process) and counted in dromos_degraded_total; after a failed call the process leaves Redis
alone for a moment (dromos.redis)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from dromos import redis as shared_redis
from gateway_app.metrics import degraded
from gateway_app.models import ALL_SCOPES, ApiKey

KEY_PATTERN = re.compile(r"^dk_([a-z0-9]{8})_([A-Za-z0-9_-]{43})$")
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: its workspace, key prefix and scopes."""

    key_id: int
    workspace: str
    prefix: str
    scopes: frozenset[str]

    @property
    def is_authenticated(self) -> bool:
        return True

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def apikey_create(*, workspace: str, name: str, scopes: list[str] | None = None) -> tuple[ApiKey, str]:
    """Create a key; return the row and the plaintext key (shown once, never stored)."""
    unknown = set(scopes or []) - set(ALL_SCOPES)
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
    key = ApiKey.objects.create(
        workspace=workspace, name=name, prefix=prefix, key_digest=_digest(plaintext), scopes=sorted(scopes or [])
    )
    return key, plaintext


@transaction.atomic
def apikey_revoke(*, prefix: str) -> ApiKey:
    key = ApiKey.objects.select_for_update().get(prefix=prefix)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    transaction.on_commit(lambda: _announce_revocation(prefix))
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


def revocation_marker_key(prefix: str) -> str:
    """The revocation marker's key in Redis (written through Django's cache)."""
    return cache.make_key(_revoked_marker(prefix))


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
        if _revoked_elsewhere(prefix):
            _cache_forget(prefix)
            return None
        return principal
    if before_lookup is not None:
        before_lookup()
    key = (
        ApiKey.objects.filter(prefix=prefix)
        .only("id", "workspace", "prefix", "key_digest", "scopes", "revoked_at", "last_used_at")
        .first()
    )
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.key_digest, presented_digest):
        return None
    principal = Principal(
        key_id=key.id, workspace=key.workspace, prefix=key.prefix, scopes=frozenset(key.scopes or ALL_SCOPES)
    )
    if key.last_used_at is None or timezone.now() - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[prefix] = (now + settings.API_KEY_CACHE_SECONDS, key.key_digest, principal, now)
    return principal
