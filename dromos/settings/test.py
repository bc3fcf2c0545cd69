"""Test settings: both apps in one process so pytest-django can migrate everything into
one real PostgreSQL test database. The gateway still reaches the broker over HTTP
(a live server), exactly as in production."""

from dromos.env import env_default

env_default("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos")
env_default("REDIS_URL", "redis://127.0.0.1:6379/15")  # per xdist worker: tests/conftest.py
env_default("DEBUG", "false")
env_default("DJANGO_SECRET_KEY", "test-secret-key")
env_default("BROKER_API_KEY", "test-broker-api-key")
env_default("TOKEN_ENCRYPTION_KEYS", "r0Ot3xv2mQ0wJ9Lz1fGkq3yZC1u7Q2Wv4lJ8nU0pQ5E=")
env_default("ALLOWED_HOSTS", "*")
env_default("ALLOWED_RETURN_DOMAINS", "app.example.com,.allowed.test,127.0.0.1,localhost")
env_default("ALLOW_HTTP_PROVIDER_HOSTS", "127.0.0.1,localhost")
env_default("WEBHOOK_ALLOW_HTTP_HOSTS", "127.0.0.1,localhost")
env_default("GATEWAY_OPS_TOKEN", "test-ops-token")
env_default("PROXY_ALLOWED_PRIVATE_HOSTS", "127.0.0.1")

from .broker import *  # noqa: E402,F403
from .broker import INSTALLED_APPS  # noqa: E402
from .gateway import (  # noqa: E402,F401
    API_KEY_AUTH_FAILURE_LIMIT,
    API_KEY_CACHE_SECONDS,
    API_KEY_RATE_LIMIT,
    BROKER_CONNECT_TIMEOUT,
    BROKER_INTERNAL_URL,
    BROKER_LEAN_CLIENT,
    BROKER_POOL_SIZE,
    BROKER_READ_TIMEOUT,
    GATEWAY_OPS_TOKEN,
    GATEWAY_SLOT_WAIT_SECONDS,
    GATEWAY_SLOW_CALLS_PER_KEY,
    GATEWAY_SLOW_CALLS_PER_WORKSPACE,
)
from .gateway import FAST_PATHS as _GATEWAY_FAST_PATHS  # noqa: E402
from .proxy import *  # noqa: E402,F403

DROMOS_ROLE = "test"
INSTALLED_APPS = [*INSTALLED_APPS, "drf_spectacular", "drf_spectacular_sidecar", "gateway_app"]
ROOT_URLCONF = "dromos.urls_test"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
BROKER_ACCESS_EXEMPT = ("/v1/", "/openapi.json", "/docs", "/redoc")
PROVIDER_HTTP_TIMEOUT = 3.0
FAST_PATHS = [*_GATEWAY_FAST_PATHS, *FAST_PATHS]  # noqa: F405  (both roles in one process)
STARTUP_CHECKS: list[str] = []  # as before: only a process on the broker settings runs them

# Tests never need a commit to survive a PostgreSQL crash: without waiting for each commit's
# WAL flush, the transactional tests' flushes and the per-test setup run several times faster.
if DATABASES["default"]["ENGINE"] == "dromos.db":  # noqa: F405
    DATABASES["default"]["OPTIONS"]["options"] = "-c synchronous_commit=off"  # noqa: F405
