"""Broker process: providers, connections, encrypted tokens, OAuth flows, admin."""

from dromos.env import env_bool, env_int, env_list, env_str, require_secret

from .base import *  # noqa: F403
from .base import DEBUG, INSTALLED_APPS, MIDDLEWARE

DROMOS_ROLE = "broker"
INSTALLED_APPS = [
    "django.contrib.admin",
    *INSTALLED_APPS,
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "broker_app",
]
_STATIC_FILES = "whitenoise.middleware.WhiteNoiseMiddleware"
MIDDLEWARE = [
    # Access control before anything that answers (static files too), so the CIDR allowlist
    # covers every route; the security headers still wrap its 401/403 answers.
    *(m for m in MIDDLEWARE if m != _STATIC_FILES),
    "broker_app.middleware.BrokerAccessMiddleware",
    *([_STATIC_FILES] if _STATIC_FILES in MIDDLEWARE else []),
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "dromos.urls_broker"
METRICS_COLLECTORS = [
    "broker_app.collectors.ConnectionStatusCollector",
    "broker_app.metrics.refresh_outcomes_collector",
]
METRICS_CONNECTIONS_CACHE_SECONDS = env_int("METRICS_CONNECTIONS_CACHE_SECONDS", 15)

BASE_URL = env_str("BASE_URL", "http://127.0.0.1:8001").rstrip("/")
ENFORCE_RETURN_URL = env_bool("ENFORCE_RETURN_URL", True)
ALLOWED_RETURN_DOMAINS = env_list("ALLOWED_RETURN_DOMAINS", ["localhost", "127.0.0.1"] if DEBUG else [])
BROKER_ALLOWED_CIDRS = env_list("BROKER_ALLOWED_CIDRS")

# Comma-separated Fernet-format keys; the first encrypts, all decrypt.
TOKEN_ENCRYPTION_KEYS = require_secret(
    "TOKEN_ENCRYPTION_KEYS",
    debug=DEBUG,
    # A fixed development key, so `make run` needs no set-up; never valid outside DEBUG.
    dev_default="ZGV2LW9ubHktaW5zZWN1cmUta2V5LTAwMDAwMDAwMDA=",
)

OAUTH_STATE_TTL_SECONDS = env_int("OAUTH_STATE_TTL_SECONDS", 600)
PROVIDER_HTTP_TIMEOUT = float(env_str("PROVIDER_HTTP_TIMEOUT", "10"))
# Callback redirects to http:// return URLs are allowed only for these hosts (local dev).
ALLOW_HTTP_RETURN_HOSTS = env_list("ALLOW_HTTP_RETURN_HOSTS", ["localhost", "127.0.0.1"])
# Provider endpoints over plain http are refused unless the host is listed (tests, demo).
ALLOW_HTTP_PROVIDER_HOSTS = env_list("ALLOW_HTTP_PROVIDER_HOSTS", ["localhost", "127.0.0.1"] if DEBUG else [])
ID_TOKEN_LEEWAY_SECONDS = env_int("ID_TOKEN_LEEWAY_SECONDS", 60)

# Refresh
REFRESH_LOCK_TIMEOUT_SECONDS = env_int("REFRESH_LOCK_TIMEOUT_SECONDS", 20)
# How long a refresh may hold the row lock (0: 3 × PROVIDER_HTTP_TIMEOUT + 15 s).
REFRESH_HOLD_SECONDS = env_int("REFRESH_HOLD_SECONDS", 0)
# Callers that may wait for a refresh in progress on one connection (the rest answer at once).
REFRESH_MAX_WAITERS = env_int("REFRESH_MAX_WAITERS", 2)
REFRESH_SWEEP_WINDOW_SECONDS = env_int("REFRESH_SWEEP_WINDOW_SECONDS", 600)
REFRESH_SWEEP_BATCH = env_int("REFRESH_SWEEP_BATCH", 500)
REFRESH_PROVIDER_CONCURRENCY = env_int("REFRESH_PROVIDER_CONCURRENCY", 8)

# Connection-event webhooks (broker_app/webhooks.py)
WEBHOOK_ALLOW_HTTP_HOSTS = env_list("WEBHOOK_ALLOW_HTTP_HOSTS", ["localhost", "127.0.0.1"] if DEBUG else [])
WEBHOOK_TIMEOUT_SECONDS = float(env_str("WEBHOOK_TIMEOUT_SECONDS", "10"))
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 10)
WEBHOOK_RETRY_BASE_SECONDS = env_int("WEBHOOK_RETRY_BASE_SECONDS", 30)
WEBHOOK_RETRY_MAX_SECONDS = env_int("WEBHOOK_RETRY_MAX_SECONDS", 3600)

# Paths the broker access middleware lets through besides the callback; only the test
# settings (one process serving both apps' routes) use it.
BROKER_ACCESS_EXEMPT: tuple[str, ...] = ()
# The hosted connect page answers a CSRF failure with its own page, without logging its path.
CSRF_FAILURE_VIEW = "broker_app.connect_views.csrf_failure"
