"""Broker process: providers, connections, encrypted tokens, OAuth flows, admin."""

from datetime import timedelta

from celery.schedules import crontab

from dromos.env import env_bool, env_float, env_int, env_list, env_str, require_secret

from .base import *  # noqa: F403
from .base import DEBUG, INSTALLED_APPS, MIDDLEWARE, TOKEN_FAST_PATH

DROMOS_ROLE = "broker"
INSTALLED_APPS = [
    "django.contrib.admin",
    *INSTALLED_APPS,
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "broker_app",
    "axes",
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
    # Last, as django-axes asks: it turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
]
ROOT_URLCONF = "dromos.urls_broker"
# Before the first request: a key ring that cannot read the stored tokens stops the broker.
STARTUP_CHECKS = ["broker_app.checks.assert_keys_match_data"]
METRICS_COLLECTORS = [
    "broker_app.collectors.ConnectionStatusCollector",
    "broker_app.collectors.GrantEndCollector",
    "broker_app.metrics.refresh_outcomes_collector",
]
METRICS_CONNECTIONS_CACHE_SECONDS = env_int("METRICS_CONNECTIONS_CACHE_SECONDS", 15)

# Admin login throttle (django-axes): ADMIN_LOGIN_FAILURE_LIMIT wrong passwords for one
# username, or from one address, lock it for ADMIN_LOCKOUT_MINUTES (the right password is
# refused meanwhile); `manage.py axes_reset_username NAME` / `axes_reset_ip ADDR` /
# `axes_reset` unlock at once (docs/operations.md).
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("ADMIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_CLIENT_IP_CALLABLE = "broker_app.middleware.client_ip"  # REMOTE_ADDR, as the CIDR allowlist
AXES_LOCKOUT_TEMPLATE = "admin_locked.html"

BASE_URL = env_str("BASE_URL", "http://127.0.0.1:8001").rstrip("/")
ENFORCE_RETURN_URL = env_bool("ENFORCE_RETURN_URL", True)
ALLOWED_RETURN_DOMAINS = env_list("ALLOWED_RETURN_DOMAINS", ["localhost", "127.0.0.1"] if DEBUG else [])
BROKER_ALLOWED_CIDRS = env_list("BROKER_ALLOWED_CIDRS")

# Comma-separated Fernet-format keys; the first encrypts, all decrypt.
# In DEBUG a fixed development key (dromos.env.DEV_SECRETS) stands in; never valid outside DEBUG.
TOKEN_ENCRYPTION_KEYS = require_secret("TOKEN_ENCRYPTION_KEYS", debug=DEBUG)

OAUTH_STATE_TTL_SECONDS = env_int("OAUTH_STATE_TTL_SECONDS", 600)
PROVIDER_HTTP_TIMEOUT = env_float("PROVIDER_HTTP_TIMEOUT", 10.0)
# Callback redirects to http:// return URLs are allowed only for these hosts (local dev).
ALLOW_HTTP_RETURN_HOSTS = env_list("ALLOW_HTTP_RETURN_HOSTS", ["localhost", "127.0.0.1"])
# Provider endpoints over plain http are refused unless the host is listed (tests, demo).
ALLOW_HTTP_PROVIDER_HOSTS = env_list("ALLOW_HTTP_PROVIDER_HOSTS", ["localhost", "127.0.0.1"] if DEBUG else [])
# The file `manage.py provider import` writes operator templates to (merged into the catalog;
# unset: import refuses). Put it on persistent storage shared by every broker process.
PROVIDER_CATALOG_EXTRA = env_str("PROVIDER_CATALOG_EXTRA", "")
ID_TOKEN_LEEWAY_SECONDS = env_int("ID_TOKEN_LEEWAY_SECONDS", 60)

# Refresh
REFRESH_LOCK_TIMEOUT_SECONDS = env_int("REFRESH_LOCK_TIMEOUT_SECONDS", 20)
# How long a refresh may hold the row lock (0: 3 × PROVIDER_HTTP_TIMEOUT + 15 s).
REFRESH_HOLD_SECONDS = env_int("REFRESH_HOLD_SECONDS", 0)
# Callers that may wait for a refresh in progress on one connection (the rest answer at once).
REFRESH_MAX_WAITERS = env_int("REFRESH_MAX_WAITERS", 2)
REFRESH_SWEEP_WINDOW_SECONDS = env_int("REFRESH_SWEEP_WINDOW_SECONDS", 600)
REFRESH_SWEEP_BATCH = env_int("REFRESH_SWEEP_BATCH", 500)
# Device flow (RFC 8628): how often beat looks for due polls, and the ceiling slow_down may
# raise a connection's polling interval to.
DEVICE_POLL_SWEEP_SECONDS = env_int("DEVICE_POLL_SWEEP_SECONDS", 2)
DEVICE_MAX_INTERVAL = env_int("DEVICE_MAX_INTERVAL", 120)
REFRESH_PROVIDER_CONCURRENCY = env_int("REFRESH_PROVIDER_CONCURRENCY", 8)
# Per-provider values of REFRESH_PROVIDER_CONCURRENCY, by provider name (settings only).
REFRESH_PROVIDER_CONCURRENCY_OVERRIDES: dict[str, int] = {}
# Usage-aware proactive refresh (broker_app/services/refresh_policy.py): the sweep refreshes
# ahead of expiry only a connection whose current token has been read and whose last read is
# within REFRESH_ACTIVE_WINDOW seconds; idle ones get keep-alive refreshes only, as their
# provider's idle policy needs, never more often than REFRESH_KEEPALIVE_MIN_SECONDS, and every
# REFRESH_KEEPALIVE_DEFAULT_DAYS where the provider's idle policy is unknown (0: never).
# REFRESH_USAGE_AWARE=false restores the old rule (every connection, before every expiry).
REFRESH_USAGE_AWARE = env_bool("REFRESH_USAGE_AWARE", True)
REFRESH_ACTIVE_WINDOW = env_int("REFRESH_ACTIVE_WINDOW", 24 * 3600)
REFRESH_KEEPALIVE_MIN_SECONDS = env_int("REFRESH_KEEPALIVE_MIN_SECONDS", 24 * 3600)
REFRESH_KEEPALIVE_DEFAULT_DAYS = env_int("REFRESH_KEEPALIVE_DEFAULT_DAYS", 0)
# connection.expiring is sent (and check-connection warns) this many days before a refresh
# token's absolute end; connection.expired when it ends (beat: grant-expiry).
EXPIRY_WARNING_DAYS = env_int("EXPIRY_WARNING_DAYS", 14)


def _every(minutes: str, task: str, expires: int) -> dict:
    return {"task": f"broker_app.tasks.{task}", "schedule": crontab(minute=minutes), "options": {"expires": expires}}


# Exactly one beat runs this schedule. Each entry expires before its next run so a
# backlog never piles up sweeps.
CELERY_BEAT_SCHEDULE = {
    "refresh-sweep": _every("*", "refresh_sweep", expires=50),
    "prune-pending": _every("*/5", "prune_pending", expires=240),
    "retry-revocations": _every("*/10", "retry_revocations", expires=500),
    "webhook-requeue-stale": _every("*/5", "webhook_requeue_stale", expires=240),
    "audit-partitions": _every("7", "audit_partitions", expires=3000),
    "audit-seal": _every("*", "audit_seal_chain", expires=50),
    # RFC 8628 polling: the rows say when each poll is due; this only looks.
    "device-poll-sweep": {
        "task": "broker_app.tasks.device_poll_sweep",
        "schedule": float(DEVICE_POLL_SWEEP_SECONDS),
        "options": {"expires": max(1, DEVICE_POLL_SWEEP_SECONDS)},
    },
    "grant-expiry": _every("*/5", "grant_expiry", expires=240),
}

# Audit log (broker_app/services/audit_partitions.py, audit_chain.py; docs/operations.md#audit-log).
# Days of audit rows kept: on PostgreSQL, daily partitions wholly older are dropped (0: keep all).
AUDIT_RETENTION_DAYS = env_int("AUDIT_RETENTION_DAYS", 90)
AUDIT_PARTITIONS_AHEAD_DAYS = 7
# The longest the partition maintenance waits for a lock on the audit table (token reads
# queue behind a waiting DETACH for at most this long); retried on the next run.
AUDIT_PARTITION_LOCK_TIMEOUT_MS = env_int("AUDIT_PARTITION_LOCK_TIMEOUT_MS", 2000)
# Rows are sealed into the hash chain once at least this old (covers clock skew).
AUDIT_SEAL_DELAY_SECONDS = env_int("AUDIT_SEAL_DELAY_SECONDS", 10)

# Connection-event webhooks (broker_app/webhooks.py)
WEBHOOK_ALLOW_HTTP_HOSTS = env_list("WEBHOOK_ALLOW_HTTP_HOSTS", ["localhost", "127.0.0.1"] if DEBUG else [])
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0)
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 10)
WEBHOOK_RETRY_BASE_SECONDS = env_int("WEBHOOK_RETRY_BASE_SECONDS", 30)
WEBHOOK_RETRY_MAX_SECONDS = env_int("WEBHOOK_RETRY_MAX_SECONDS", 3600)

# Paths the broker access middleware lets through besides the callback; only the test
# settings (one process serving both apps' routes) use it.
BROKER_ACCESS_EXEMPT: tuple[str, ...] = ()
# The hosted connect page answers a CSRF failure with its own page, without logging its path.
CSRF_FAILURE_VIEW = "broker_app.connect_views.csrf_failure"

FAST_PATHS = (
    [
        (
            "/internal/v1/connections/",
            "/internal/v1/connections/<str:connection_id>/token",
            "broker_app.fast_token.serve",
        ),
        (
            "/internal/v1/connections/",
            "/internal/v1/connections/<str:connection_id>/proxy-credential",
            "broker_app.fast_token.serve_proxy_credential",
        ),
    ]
    if TOKEN_FAST_PATH
    else []
)
