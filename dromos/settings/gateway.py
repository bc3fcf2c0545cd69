"""Gateway process: the public /v1 API. No provider secrets, no encryption keys, no token tables."""

from dromos.env import env_int, env_str

from .base import *  # noqa: F403
from .base import INSTALLED_APPS, MIDDLEWARE
from .proxy import *  # noqa: F403

DROMOS_ROLE = "gateway"
MIDDLEWARE = [*MIDDLEWARE, "django.middleware.clickjacking.XFrameOptionsMiddleware"]
INSTALLED_APPS = [
    *INSTALLED_APPS,
    "django.contrib.staticfiles",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "gateway_app",
]
ROOT_URLCONF = "dromos.urls_gateway"

BROKER_INTERNAL_URL = env_str("BROKER_INTERNAL_URL", "http://127.0.0.1:8001").rstrip("/")
BROKER_CONNECT_TIMEOUT = float(env_str("BROKER_CONNECT_TIMEOUT", "2"))
BROKER_READ_TIMEOUT = float(env_str("BROKER_READ_TIMEOUT", "30"))
BROKER_POOL_SIZE = env_int("BROKER_POOL_SIZE", 32)

# API keys: seconds a verified key stays in the in-process cache (revocation reaches every
# process at its next request through a marker in the shared cache, and within this bound
# even if that marker were lost).
API_KEY_CACHE_SECONDS = env_int("API_KEY_CACHE_SECONDS", 5)
API_KEY_RATE_LIMIT = env_str("API_KEY_RATE_LIMIT", "600/min")

READINESS_EXTRA_CHECK = "gateway_app.broker_client.readiness"
