"""Settings shared by the gateway and the broker. Each process imports this and adds its own."""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from dromos.env import env_bool, env_float, env_int, env_list, env_str, require_secret

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(env_str("DROMOS_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = require_secret("DJANGO_SECRET_KEY", debug=DEBUG)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])

# Embedded default: without DATABASE_URL one SQLite file (no external services).
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {
        "default": {
            **dj_database_url.parse(
                DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 600), conn_health_checks=True
            ),
            # Persistent connections, pinged only after DB_HEALTH_CHECK_IDLE_SECONDS idle; the hot
            # path's fixed statements prepared unless DB_PREPARED_STATEMENTS=false (dromos/db/base.py).
            "HEALTH_CHECK_IDLE_SECONDS": env_float("DB_HEALTH_CHECK_IDLE_SECONDS", 1.0),
            "PREPARED_STATEMENTS": env_bool("DB_PREPARED_STATEMENTS", True),
        }
    }
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"]["ENGINE"] = "dromos.db"
        # An unreachable server fails the request in seconds (503, dromos.errors), not after
        # the kernel's TCP timeout of minutes that would outlast gunicorn's worker timeout.
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", env_int("DB_CONNECT_TIMEOUT", 5))
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "dromos.sqlite3"),
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
# Every Redis call gives up after this long (one client per process: dromos.redis): an
# unreachable Redis degrades the gateway's rate limit and revocation marker
# (gateway_app.ratelimit, gateway_app.keys) instead of hanging requests.
REDIS_TIMEOUT_SECONDS = env_float("REDIS_TIMEOUT_SECONDS", 1.0)
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_timeout": REDIS_TIMEOUT_SECONDS, "socket_connect_timeout": REDIS_TIMEOUT_SECONDS},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "dromos",
]

MIDDLEWARE = [
    "dromos.middleware.RequestIdMiddleware",
    "dromos.middleware.RequestMetricsMiddleware",
    "dromos.middleware.AllowedHostMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin CSS, the offline API docs' assets) from the app, no web server needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
]
STATIC_URL = "/static/"
STATIC_ROOT = env_str("STATIC_ROOT")  # set where `collectstatic` ran (the Docker image does)
WHITENOISE_USE_FINDERS = True  # otherwise serve straight from the apps

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

WSGI_APPLICATION = "dromos.wsgi.application"
# Filled by each process's settings (shared code names the apps' parts only through these):
# callables run by dromos.wsgi before the first request, one returning {name: ok} more for
# /readyz, and scrape-time Prometheus collectors for /metrics.
STARTUP_CHECKS: list[str] = []
# The token read's lean pipeline (dromos/fastpath.py): (path prefix, route, handler) per role,
# answered in front of Django by dromos.wsgi. TOKEN_FAST_PATH=false sends everything through Django.
TOKEN_FAST_PATH = env_bool("TOKEN_FAST_PATH", True)
FAST_PATHS: list[tuple[str, str, str]] = []
READINESS_EXTRA_CHECK: str | None = None
METRICS_COLLECTORS: list[str] = []
# OpenTelemetry traces (dromos/tracing.py): off unless an exporter is named
# (OTEL_TRACES_EXPORTER=otlp|console) or an OTLP endpoint is set, and OTEL_SDK_DISABLED is not
# true. Off, nothing of OpenTelemetry is imported. The SDK reads the other OTEL_* variables
# (headers, sampler, resource attributes, batching) itself; OTLP goes over HTTP/protobuf.
OTEL_SDK_DISABLED = env_bool("OTEL_SDK_DISABLED", False)
OTEL_TRACES_EXPORTER = env_str("OTEL_TRACES_EXPORTER")
OTEL_EXPORTER_OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env_str("OTEL_EXPORTER_OTLP_ENDPOINT")
OTEL_EXPORTER_OTLP_PROTOCOL = env_str("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env_str(
    "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
)
OTEL_SERVICE_NAME = env_str("OTEL_SERVICE_NAME")  # default dromos-gateway / dromos-broker / dromos-worker
# Requests not traced (regular expressions searched in the URL without its query).
OTEL_PYTHON_DJANGO_EXCLUDED_URLS = env_str("OTEL_PYTHON_DJANGO_EXCLUDED_URLS", "/healthz$,/readyz$,/metrics$")
TRACING_ENABLED = (
    not OTEL_SDK_DISABLED
    and (OTEL_TRACES_EXPORTER or "") != "none"
    and bool(OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_ENDPOINT)
)
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Request size limit: no legitimate API body comes near this.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BYTES", 64 * 1024)
# Paths whose views read a chunked body themselves (dromos.parsers.ChunkedBodyMiddleware
# skips them): the gateway's API proxy sets its own (settings/proxy.py).
CHUNKED_BODY_STREAMED_PATHS: list[str] = []

SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "no-referrer"
X_FRAME_OPTIONS = "DENY"
BEHIND_TLS_PROXY = env_bool("BEHIND_TLS_PROXY", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_TLS_PROXY else None
# Sent only on requests that arrived over TLS (SecurityMiddleware checks request.is_secure()).
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = BEHIND_TLS_PROXY

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["dromos.renderers.FastJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["dromos.parsers.JSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "dromos.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The broker's shared secret: the gateway sends it, the broker checks it.
BROKER_API_KEY = require_secret("BROKER_API_KEY", debug=DEBUG)

CELERY_BROKER_URL = REDIS_URL or "filesystem://"
if not REDIS_URL:
    for _folder in ("celery", "celery-processed", "celery-control"):
        (VAR_DIR / _folder).mkdir(parents=True, exist_ok=True)
CELERY_BROKER_TRANSPORT_OPTIONS = (
    # Bounded waits on a Redis that hangs (publishing from a request included). The worker's
    # BRPOP blocks for 1 s (kombu's polling_interval), well within the read timeout.
    {"socket_timeout": 5.0, "socket_connect_timeout": max(REDIS_TIMEOUT_SECONDS, 2.0)}
    if REDIS_URL
    else {
        "data_folder_in": str(VAR_DIR / "celery"),
        "data_folder_out": str(VAR_DIR / "celery"),
        "processed_folder": str(VAR_DIR / "celery-processed"),
        "control_folder": str(VAR_DIR / "celery-control"),
        "store_processed": False,
    }
)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# Workers and beat log through LOGGING below (JSON), not Celery's own plain-text format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "dromos.logging.RequestIdFilter"},
        "url_query": {"()": "dromos.logging.UrlQueryFilter"},
    },
    "formatters": {"json": {"()": "dromos.logging.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "urllib3": {"level": "INFO"},
        "urllib3.connectionpool": {"filters": ["url_query"]},  # no query strings (credentials)
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Dromos gateway API",
    "DESCRIPTION": "OAuth token broker for AI agents: connections, consent, fresh tokens.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI and ReDoc assets come from drf-spectacular-sidecar: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Two `status` enums (a connection's, a connect session's): each keeps a stable name.
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "dromos.wire.CONNECTION_STATUSES",
        "ConnectSessionStatusEnum": "dromos.wire.SESSION_STATUSES",
    },
}
