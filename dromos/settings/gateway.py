"""Gateway process: the public /v1 API. No provider secrets, no encryption keys, no token tables."""

from dromos.env import env_bool, env_float, env_int, env_str

from .base import *  # noqa: F403
from .base import INSTALLED_APPS, MIDDLEWARE, TOKEN_FAST_PATH
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
BROKER_CONNECT_TIMEOUT = env_float("BROKER_CONNECT_TIMEOUT", 2.0)
BROKER_READ_TIMEOUT = env_float("BROKER_READ_TIMEOUT", 30.0)
BROKER_POOL_SIZE = env_int("BROKER_POOL_SIZE", 32)
# GETs to an http:// broker through gateway_app/broker_http.py (issue 20); false: urllib3 for all.
BROKER_LEAN_CLIENT = env_bool("BROKER_LEAN_CLIENT", True)

# API keys: seconds a verified key stays in the in-process cache (revocation reaches every
# process at its next request through a marker in the shared cache, and within this bound
# even if that marker were lost).
API_KEY_CACHE_SECONDS = env_int("API_KEY_CACHE_SECONDS", 5)
API_KEY_RATE_LIMIT = env_str("API_KEY_RATE_LIMIT", "600/min")
# Bulkheads (gateway_app/bulkhead.py): calls that may wait on a provider, in flight per process.
GATEWAY_SLOW_CALLS_PER_KEY = env_int("GATEWAY_SLOW_CALLS_PER_KEY", 4)
GATEWAY_SLOW_CALLS_PER_WORKSPACE = env_int("GATEWAY_SLOW_CALLS_PER_WORKSPACE", 6)
GATEWAY_SLOT_WAIT_SECONDS = float(env_str("GATEWAY_SLOT_WAIT_SECONDS", "0.1"))

READINESS_EXTRA_CHECK = "gateway_app.broker_client.readiness"

# /readyz and /metrics answer only to `Authorization: Bearer <GATEWAY_OPS_TOKEN>` (dromos/ops_auth.py).
# Unset: closed to everyone outside DEBUG (open in DEBUG). Management commands and the
# migrate role do not need it.
GATEWAY_OPS_TOKEN = env_str("GATEWAY_OPS_TOKEN", "")

# Failed API-key authentications per source address (gateway_app/auth_throttle.py): past
# this many in the window the address's lookups are refused with 429; "off" disables it.
API_KEY_AUTH_FAILURE_LIMIT = env_str("API_KEY_AUTH_FAILURE_LIMIT", "30/min")

FAST_PATHS = (
    [("/v1/token/", "/v1/token/<str:connection_id>", "gateway_app.fast_token.serve")] if TOKEN_FAST_PATH else []
)
