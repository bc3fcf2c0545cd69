"""Per-key egress policy for the API proxy (issue 15).

A policy is a list of allow rules; a proxied call must match one:

    {"provider": "google", "methods": ["GET"], "path": "/gmail/v1/users/me/messages*"}

written on the command line as `"google GET /gmail/v1/users/me/messages*"` (methods
comma-separated, `*` for any method; provider `*` for any provider). In `path`, `*` matches
any run of characters, `/` included; everything else matches itself, compared with the
request's path as sent (percent-encoding included, query string excluded), so a path the
rule does not spell out is refused. A key whose policy is null gets PROXY_DEFAULT_POLICY
(`open`: anything; `closed`: nothing); an empty list allows nothing."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings

from gateway_app.models import ApiKey

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_PROVIDER = re.compile(r"^(\*|[a-z0-9][a-z0-9_-]{0,63})$")


class PolicyError(ValueError):
    """A rule that cannot be stored (the message says which and why)."""


@dataclass(frozen=True)
class Rule:
    provider: str
    methods: tuple[str, ...]
    path: str

    def as_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "methods": list(self.methods), "path": self.path}

    def __str__(self) -> str:
        return f"{self.provider} {','.join(self.methods)} {self.path}"

    def allows(self, provider: str, method: str, path: str) -> bool:
        return (
            self.provider in ("*", provider)
            and ("*" in self.methods or method in self.methods)
            and _glob(self.path).fullmatch(path) is not None
        )


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def _rule(provider: Any, methods: Any, path: Any) -> Rule:
    if not isinstance(provider, str) or not _PROVIDER.fullmatch(provider.lower()):
        raise PolicyError(f"provider must be a provider name or *, got {str(provider)[:64]!r}")
    if isinstance(methods, str):
        methods = methods.split(",")
    if not isinstance(methods, list | tuple) or not methods:
        raise PolicyError("methods must be a list of HTTP methods (or *)")
    clean = tuple(sorted({str(m).strip().upper() for m in methods}))
    unknown = [m for m in clean if m != "*" and m not in METHODS]
    if unknown:
        raise PolicyError(f"unknown method(s) {', '.join(unknown)}; use {', '.join(METHODS)} or *")
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 1024:
        raise PolicyError(f"path must start with / (a glob such as /repos/acme/*), got {str(path)[:64]!r}")
    if any(ord(c) < 0x21 or c in "?#\\" for c in path):
        raise PolicyError("path must not hold spaces, control characters, ? # or \\")
    return Rule(provider=provider.lower(), methods=("*",) if "*" in clean else clean, path=path)


def rule_parse(text: str) -> Rule:
    """`"PROVIDER METHODS PATH_GLOB"`, e.g. `"github * /repos/acme/*"`."""
    parts = text.split()
    if len(parts) != 3:
        raise PolicyError(f"a rule is 'PROVIDER METHODS PATH_GLOB', e.g. 'google GET /gmail/v1/*'; got {text[:80]!r}")
    return _rule(*parts)


def policy_parse(document: Any) -> list[Rule]:
    """A policy file: `{"allow": [rule, …]}` or a bare list, each rule a string as on the
    command line or an object {"provider", "methods", "path"}."""
    rules = document.get("allow") if isinstance(document, dict) else document
    if not isinstance(rules, list):
        raise PolicyError('a policy is {"allow": [rules]} or a list of rules')
    parsed = []
    for rule in rules:
        if isinstance(rule, str):
            parsed.append(rule_parse(rule))
        elif isinstance(rule, dict) and set(rule) <= {"provider", "methods", "path"}:
            parsed.append(_rule(rule.get("provider"), rule.get("methods", ["*"]), rule.get("path")))
        else:
            raise PolicyError('each rule is "PROVIDER METHODS PATH" or {"provider", "methods", "path"}')
    return parsed


def policy_load(path: str) -> list[Rule]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        raise PolicyError(f"cannot read the policy file: {exc}") from None
    return policy_parse(document)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] | None  # None: open

    def allows_any(self, method: str, path: str) -> bool:
        """Whether some rule could allow this call for some provider (checked before the
        broker is asked which provider the connection belongs to)."""
        return self.rules is None or any(r.allows(r.provider, method, path) for r in self.rules)

    def allows(self, provider: str, method: str, path: str) -> bool:
        return self.rules is None or any(r.allows(provider, method, path) for r in self.rules)


_cache: dict[int, tuple[float, Policy]] = {}
_lock = threading.Lock()


def policy_for(key_id: int) -> Policy:
    """The key's policy; kept in process for API_KEY_CACHE_SECONDS, as the key itself is."""
    now = time.monotonic()
    cached = _cache.get(key_id)
    if cached and cached[0] > now:
        return cached[1]
    stored = ApiKey.objects.filter(pk=key_id).values_list("egress_policy", flat=True).first()
    if stored is None:
        policy = Policy(None if settings.PROXY_DEFAULT_POLICY == "open" else ())
    else:
        policy = Policy(tuple(_rule(r["provider"], r["methods"], r["path"]) for r in stored))
    with _lock:
        if len(_cache) >= 10_000:
            _cache.clear()
        _cache[key_id] = (now + settings.API_KEY_CACHE_SECONDS, policy)
    return policy


def cache_clear() -> None:
    with _lock:
        _cache.clear()


def apikey_set_policy(*, key: ApiKey, rules: list[Rule] | None) -> ApiKey:
    """Store the key's rules (None: back to PROXY_DEFAULT_POLICY). Other processes see the
    change within API_KEY_CACHE_SECONDS."""
    key.egress_policy = None if rules is None else [rule.as_dict() for rule in rules]
    key.save(update_fields=["egress_policy"])
    with _lock:
        _cache.pop(key.pk, None)
    return key
