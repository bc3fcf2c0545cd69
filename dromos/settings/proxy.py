"""The gateway's API proxy (issue 15): /v1/proxy/{connection_id}/{path}. Imported by the
gateway's settings (and the test settings); docs/api.md describes each one."""

from django.core.exceptions import ImproperlyConfigured

from dromos.env import env_float, env_int, env_list, env_str

# Request bodies larger than this answer 413: a declared Content-Length before anything is
# read, a chunked body as soon as the count passes it.
PROXY_MAX_BODY_BYTES = env_int("PROXY_MAX_BODY_BYTES", 10 * 1024 * 1024)
# Bodies up to this size are kept in memory so that a 401 (after a refresh) or a
# Dromos-Proxy-Retries retry can send them again; larger ones are streamed once.
PROXY_REPLAY_MAX_BYTES = env_int("PROXY_REPLAY_MAX_BYTES", 1024 * 1024)
PROXY_CONNECT_TIMEOUT = env_float("PROXY_CONNECT_TIMEOUT", 5)
# Longest wait for the provider's answer (headers, then each read of the body): 504 after it.
PROXY_READ_TIMEOUT = env_float("PROXY_READ_TIMEOUT", 30)
# Hosts the proxy may reach although they resolve to private, loopback or link-local
# addresses (tests, the local demo provider). Everything else must resolve to public addresses.
PROXY_ALLOWED_PRIVATE_HOSTS = [h.lower() for h in env_list("PROXY_ALLOWED_PRIVATE_HOSTS", [])]
# Seconds a fetched credential stays in the gateway process (0: fetch it from the broker on
# every call). Revocation, failure and DELETE through another process take effect within
# this bound; DELETE through this process, and a 401 from the provider, at once.
PROXY_TOKEN_CACHE_SECONDS = env_int("PROXY_TOKEN_CACHE_SECONDS", 5)
# The egress policy of a key that has none: "open" (any provider, method and path) or
# "closed" (no proxied call until the key is given --allow rules).
PROXY_DEFAULT_POLICY = env_str("PROXY_DEFAULT_POLICY", "open")
# Dromos-Proxy-Retries is capped at this, and a Retry-After longer than
# PROXY_MAX_RETRY_WAIT_SECONDS is passed back to the agent instead of waited for.
PROXY_MAX_RETRIES = env_int("PROXY_MAX_RETRIES", 3)
PROXY_MAX_RETRY_WAIT_SECONDS = env_float("PROXY_MAX_RETRY_WAIT_SECONDS", 10)
# Idle keep-alive connections kept per provider API host and process.
PROXY_POOL_SIZE = env_int("PROXY_POOL_SIZE", 10)
# Seconds a checked DNS answer is reused (connections always go to the checked address).
PROXY_DNS_CACHE_SECONDS = env_int("PROXY_DNS_CACHE_SECONDS", 30)
# The proxy reads a chunked request body itself, counting it against PROXY_MAX_BODY_BYTES as
# it arrives: dromos.parsers.ChunkedBodyMiddleware leaves these paths alone.
CHUNKED_BODY_STREAMED_PATHS = ["/v1/proxy/"]
if PROXY_DEFAULT_POLICY not in ("open", "closed"):
    raise ImproperlyConfigured("PROXY_DEFAULT_POLICY must be open or closed")
