"""Return URL policy. The broker only ever redirects to the exact URL stored at request
time, and that URL must pass this check when it is stored.

ALLOWED_RETURN_DOMAINS entries: `app.example.com` (that host, default port),
`.example.com` (the host and its subdomains, as Django's ALLOWED_HOSTS reads it),
`host:8443` (that port), `host:*` (any port).

The check is deliberately narrower than what browsers accept: plain ASCII, no control
characters, backslashes or encoded line breaks anywhere, an absolute `http(s)://` URL,
no credentials, no fragment, a host made of DNS labels (or a dotted IPv4 address), plain
`http` only for ALLOW_HTTP_RETURN_HOSTS (local development), punycode hosts only when listed
exactly. Every URL that passes is read the same way by every parser we know of, so the
host we checked is the host the browser goes to.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from django.conf import settings

_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]|%0[0-9a-f]|%1[0-9a-f]|%7f|%5c|%2f%2f", re.IGNORECASE)
# \Z, never $: "$" also matches before a trailing newline.
_HOST = re.compile(r"^(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}\Z")
DEFAULT_PORTS = {"http": 80, "https": 443}


class ReturnUrlError(ValueError):
    pass


def _host_matches(host: str, port: int, scheme: str, entry: str) -> bool:
    entry = entry.strip().lower()
    entry_host, _, entry_port = entry.partition(":") if not entry.startswith("[") else (entry, "", "")
    if entry_port == "*":
        port_ok = True
    elif entry_port:
        port_ok = entry_port.isdigit() and int(entry_port) == port
    else:
        port_ok = port == DEFAULT_PORTS[scheme]
    if not port_ok:
        return False
    if entry_host.startswith("."):
        return host == entry_host[1:] or host.endswith(entry_host)
    return host == entry_host


def validate_return_url(url: object) -> str:
    """Return the URL unchanged if it may be redirected to, else raise ReturnUrlError."""
    if not isinstance(url, str) or not url:
        raise ReturnUrlError("return_url must be a non-empty string")
    if len(url) > 2048:
        raise ReturnUrlError("return_url is too long")
    if _FORBIDDEN_CHARS.search(url) or not url.isascii():
        raise ReturnUrlError("return_url contains forbidden characters")
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ReturnUrlError("return_url must be an http(s) URL")
    if not url.lower().startswith(parts.scheme + "://"):
        raise ReturnUrlError("return_url must be an absolute http(s) URL")
    if "@" in parts.netloc or parts.username or parts.password:
        raise ReturnUrlError("return_url must not carry credentials")
    try:
        host = (parts.hostname or "").lower()
        port = parts.port if parts.port is not None else DEFAULT_PORTS[parts.scheme]  # :0 is not the default
    except ValueError:
        raise ReturnUrlError("return_url has an invalid port") from None
    if not host or host.startswith("xn--") or ".xn--" in host:
        # Punycode hosts are look-alike territory; admit them only when listed exactly.
        if not host or not any(e.strip().lower().split(":")[0] == host for e in settings.ALLOWED_RETURN_DOMAINS):
            raise ReturnUrlError("return_url host is not allowed")
    if not (_HOST.match(host) or _IPV4.match(host)):
        raise ReturnUrlError("return_url host is invalid")
    if parts.fragment:
        raise ReturnUrlError("return_url must not contain a fragment")
    if parts.scheme == "http" and host not in {h.strip().lower() for h in settings.ALLOW_HTTP_RETURN_HOSTS}:
        raise ReturnUrlError("return_url must use https")
    if settings.ENFORCE_RETURN_URL and not any(
        _host_matches(host, port, parts.scheme, entry) for entry in settings.ALLOWED_RETURN_DOMAINS
    ):
        raise ReturnUrlError("return_url host is not in ALLOWED_RETURN_DOMAINS")
    return url
