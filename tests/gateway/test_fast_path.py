"""The token read's lean pipeline (dromos/fastpath.py, gateway_app/fast_token.py,
broker_app/fast_token.py, issue 20): for the requests it answers, the same status, body and
headers as Django's pipeline, the same audit row; everything else falls through to Django
unchanged (its errors, its counting). The WSGI application under test is dromos.wsgi's
wrapper around Django's own handler, as gunicorn or granian run it."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler

from broker_app.models import AuditEvent, Connection
from dromos.fastpath import FastPaths, parse_token_query
from tests.conftest import connect

pytestmark = pytest.mark.django_db(transaction=True)

GATEWAY = ("/v1/token/", "/v1/token/<str:connection_id>", "gateway_app.fast_token.serve")
BROKER = (
    "/internal/v1/connections/",
    "/internal/v1/connections/<str:connection_id>/token",
    "broker_app.fast_token.serve",
)
PROXY_CREDENTIAL = (
    "/internal/v1/connections/",
    "/internal/v1/connections/<str:connection_id>/proxy-credential",
    "broker_app.fast_token.serve_proxy_credential",
)


class App:
    """Django's WSGI handler, with or without the fast paths in front; counts what reached Django."""

    def __init__(self, *, fast: bool) -> None:
        from django.utils.module_loading import import_string

        self.django_calls = 0
        django = WSGIHandler()

        def counting(environ, start_response):
            self.django_calls += 1
            return django(environ, start_response)

        handlers = [(p, r, import_string(h)) for p, r, h in (GATEWAY, BROKER, PROXY_CREDENTIAL)]
        self.app = FastPaths(counting, handlers) if fast else counting

    def get(self, path: str, headers: dict[str, str] | None = None, query: str = "", remote: str = "127.0.0.1"):
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SCRIPT_NAME": "",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "testserver",
            "REMOTE_ADDR": remote,
            "wsgi.input": io.BytesIO(b""),
            "wsgi.url_scheme": "http",
            "wsgi.errors": io.StringIO(),
        }
        for name, value in (headers or {}).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        seen = {}

        def start_response(status, response_headers, exc_info=None):
            seen["status"], seen["headers"] = status, response_headers

        body = b"".join(self.app(environ, start_response))
        return int(seen["status"].split()[0]), {k.lower(): v for k, v in seen["headers"]}, body


# Framing and the per-request id differ by nature; everything else must be identical.
_PER_REQUEST = {"x-request-id", "content-length", "date", "server"}


def same_answer(fast, slow) -> None:
    assert fast[0] == slow[0]
    assert fast[2] == slow[2]
    assert {k: v for k, v in fast[1].items() if k not in _PER_REQUEST} == {
        k: v for k, v in slow[1].items() if k not in _PER_REQUEST
    }
    assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", fast[1]["x-request-id"])
    if "content-length" in fast[1]:  # the fast path's own answers (Django leaves framing to the server)
        assert int(fast[1]["content-length"]) == len(fast[2])


@pytest.fixture
def connected(stack, fake_provider, fake_provider_row):
    key = stack.key("ws-fast")
    cid = connect(stack, fake_provider, key)
    return stack, key, cid


def test_gateway_token_fetch_answers_as_django_does_without_reaching_it(connected):
    stack, key, cid = connected
    fast, slow = App(fast=True), App(fast=False)
    auth = {"Authorization": f"Bearer {key}"}
    first = slow.get(f"/v1/token/{cid}", auth)  # Django verifies the key: now in this process's cache
    assert first[0] == 200
    reads_before = AuditEvent.objects.filter(connection_id=cid, action="token.read").count()
    for query in ("", "auto_refresh=true", "auto_refresh=true&min_ttl=30"):
        answer = fast.get(f"/v1/token/{cid}", auth, query=query)
        same_answer(answer, slow.get(f"/v1/token/{cid}", auth, query=query))
        assert answer[1]["cache-control"] == "no-store"
    assert fast.django_calls == 0
    # Every read served is audited: one row per fetch, through either pipeline.
    assert AuditEvent.objects.filter(connection_id=cid, action="token.read").count() == reads_before + 6
    # The request id given is echoed and reaches the broker's audit-free access log as well.
    answer = fast.get(f"/v1/token/{cid}", {**auth, "X-Request-ID": "req-12345678"})
    assert answer[1]["x-request-id"] == "req-12345678"


@pytest.mark.parametrize(
    "path, headers, query",
    [
        ("/v1/token/{cid}", {}, ""),  # no key
        ("/v1/token/{cid}", {"Authorization": "Bearer dk_nope0000_" + "x" * 43}, ""),  # unknown key
        ("/v1/token/{cid}", {"Authorization": "Basic abc"}, ""),  # wrong scheme
        ("/v1/token/{cid}", {"Authorization": "Bearer {key}"}, "auto_refresh=maybe"),  # bad query
        ("/v1/token/{cid}", {"Authorization": "Bearer {key}"}, "min_ttl=-1"),
        ("/v1/token/{cid}", {"Authorization": "Bearer {key}"}, "auto_refresh=true&auto_refresh=false"),
        ("/v1/token/bad%20id", {"Authorization": "Bearer {key}"}, ""),  # malformed id
        ("/v1/token/{cid}/x", {"Authorization": "Bearer {key}"}, ""),  # another route
    ],
)
def test_what_the_fast_path_does_not_answer_django_answers_unchanged(connected, path, headers, query):
    stack, key, cid = connected
    fast, slow = App(fast=True), App(fast=False)
    auth = {"Authorization": f"Bearer {key}"}
    assert slow.get(f"/v1/token/{cid}", auth)[0] == 200  # the key cached
    headers = {k: v.replace("{key}", key) for k, v in headers.items()}
    path = path.replace("{cid}", cid)
    answer = fast.get(path, headers, query=query)
    assert fast.django_calls == 1
    same_answer(answer, slow.get(path, headers, query=query))
    assert answer[0] in (200, 400, 401, 404)  # a repeated auto_refresh: DRF reads the last one


def test_unknown_connection_and_another_workspace_are_the_brokers_404_relayed(connected):
    stack, key, cid = connected
    other = stack.key("ws-other")
    fast, slow = App(fast=True), App(fast=False)
    for presented, target in ((key, "c_doesnotexist"), (other, cid)):
        auth = {"Authorization": f"Bearer {presented}"}
        slow.get(f"/v1/token/{target}", auth)  # cache the key
        answer = fast.get(f"/v1/token/{target}", auth)
        assert answer[0] == 404
        same_answer(answer, slow.get(f"/v1/token/{target}", auth))


def test_another_environments_key_gets_the_same_404_on_the_fast_path(connected):
    """Environments (issue 19): the fast path sends the key's environment and the broker's
    fast path reads only that environment's connections."""
    stack, key, cid = connected
    development = stack.key("ws-fast", environment="development")
    fast, slow = App(fast=True), App(fast=False)
    auth = {"Authorization": f"Bearer {development}"}
    slow.get(f"/v1/token/{cid}", auth)  # cache the key
    reads_before = AuditEvent.objects.filter(connection_id=cid, action="token.read").count()
    answer = fast.get(f"/v1/token/{cid}", auth)
    assert answer[0] == 404
    same_answer(answer, slow.get(f"/v1/token/{cid}", auth))
    path = f"/internal/v1/connections/{cid}/token"
    internal = {"X-API-Key": settings.BROKER_API_KEY, "X-Dromos-Workspace": "ws-fast"}
    for environment in ("development", "bad/env"):
        headers = {**internal, "X-Dromos-Environment": environment}
        answer = fast.get(path, headers)
        assert answer[0] in (400, 404)
        same_answer(answer, slow.get(path, headers))
    assert AuditEvent.objects.filter(connection_id=cid, action="token.read").count() == reads_before


def test_a_narrow_key_is_left_to_django_which_checks_its_restriction(connected):
    """Narrow keys (issue 19): a key limited to other users, or expired, never gets a token
    from the fast path; Django's pipeline answers it as it answers without the fast path."""
    from datetime import timedelta

    from django.utils import timezone

    from gateway_app.restrictions import key_create

    stack, _, cid = connected
    other_user = key_create(workspace="ws-fast", name="narrow", scopes=["tokens:read"], user_ids=["someone-else"])[1]
    expiring = key_create(
        workspace="ws-fast", name="soon", scopes=["tokens:read"], expires_at=timezone.now() + timedelta(seconds=60)
    )[1]
    for presented in (other_user, expiring):
        fast, slow = App(fast=True), App(fast=False)
        auth = {"Authorization": f"Bearer {presented}"}
        expected = slow.get(f"/v1/token/{cid}", auth)
        answer = fast.get(f"/v1/token/{cid}", auth)
        assert fast.django_calls == 1
        same_answer(answer, expected)
    assert App(fast=False).get(f"/v1/token/{cid}", {"Authorization": f"Bearer {other_user}"})[0] in (403, 404)


def test_a_key_this_process_has_not_verified_yet_is_verified_on_the_fast_path(connected):
    from gateway_app import keys

    stack, key, cid = connected
    keys.cache_clear()  # a new process, or the cached entry expired (API_KEY_CACHE_SECONDS)
    fast = App(fast=True)
    answer = fast.get(f"/v1/token/{cid}", {"Authorization": f"Bearer {key}"})
    assert answer[0] == 200 and fast.django_calls == 0
    assert keys.cached_principal(key) is not None


def test_an_address_over_its_failed_authentications_gets_the_same_429(connected, settings):
    from gateway_app import keys

    stack, key, cid = connected
    settings.API_KEY_AUTH_FAILURE_LIMIT = "2/min"
    fast, slow = App(fast=True), App(fast=False)
    wrong = {"Authorization": "Bearer dk_nope0000_" + "x" * 43}
    for _ in range(2):
        assert fast.get(f"/v1/token/{cid}", wrong, remote="192.0.2.7")[0] == 401
    keys.cache_clear()  # the good key needs a lookup: refused before it
    auth = {"Authorization": f"Bearer {key}"}
    refused = fast.get(f"/v1/token/{cid}", auth, remote="192.0.2.7")
    full = slow.get(f"/v1/token/{cid}", auth, remote="192.0.2.7")
    assert refused[0] == full[0] == 429 and fast.django_calls == 2  # the two 401s
    refused[1]["retry-after"] = full[1]["retry-after"]
    same_answer(refused, full)


def test_a_key_without_the_scope_gets_djangos_403(connected):
    stack, _, cid = connected
    narrow = stack.key("ws-fast", scopes=["connections:read"])
    fast, slow = App(fast=True), App(fast=False)
    auth = {"Authorization": f"Bearer {narrow}"}
    assert slow.get(f"/v1/token/{cid}", auth)[0] == 403
    answer = fast.get(f"/v1/token/{cid}", auth)
    assert answer[0] == 403 and fast.django_calls == 1
    same_answer(answer, slow.get(f"/v1/token/{cid}", auth))


def test_a_key_revoked_by_another_process_is_refused_at_the_next_request(connected):
    """The revocation marker is read in the same Redis round trip as the rate limit."""
    from django.core.cache import cache

    from gateway_app import keys

    stack, key, cid = connected
    fast = App(fast=True)
    auth = {"Authorization": f"Bearer {key}"}
    App(fast=False).get(f"/v1/token/{cid}", auth)
    assert fast.get(f"/v1/token/{cid}", auth)[0] == 200 and fast.django_calls == 0
    prefix = key.split("_")[1]
    # What apikey_revoke in another gateway process does: the row, then the shared marker.
    from django.utils import timezone

    from gateway_app.models import ApiKey

    ApiKey.objects.filter(prefix=prefix).update(revoked_at=timezone.now())
    cache.set(keys._revoked_marker(prefix), True, timeout=60)
    answer = fast.get(f"/v1/token/{cid}", auth)
    assert answer[0] == 401 and fast.django_calls == 1
    assert b"Invalid or revoked API key." in answer[2]
    assert keys.cached_principal(key) is None


def test_the_rate_limit_counts_fast_and_full_requests_alike(connected, settings):
    stack, key, cid = connected
    settings.API_KEY_RATE_LIMIT = "4/min"  # the fixture's request-connection call was the first
    fast, slow = App(fast=True), App(fast=False)
    auth = {"Authorization": f"Bearer {key}"}
    assert slow.get(f"/v1/token/{cid}", auth)[0] == 200  # 2 (and the key cached)
    assert [fast.get(f"/v1/token/{cid}", auth)[0] for _ in range(2)] == [200, 200]  # 3, 4
    refused = fast.get(f"/v1/token/{cid}", auth)
    full = slow.get(f"/v1/token/{cid}", auth)
    assert refused[0] == full[0] == 429
    assert int(refused[1]["retry-after"]) >= 1
    refused[1]["retry-after"] = full[1]["retry-after"]  # the seconds left move on between the two
    same_answer(refused, full)
    assert fast.django_calls == 0


def test_broker_token_read_answers_as_django_does_and_audits_each_read(connected):
    stack, _, cid = connected
    fast, slow = App(fast=True), App(fast=False)
    headers = {"X-API-Key": settings.BROKER_API_KEY, "X-Dromos-Workspace": "ws-fast", "X-Dromos-Actor": "apikey:t"}
    path = f"/internal/v1/connections/{cid}/token"
    before = AuditEvent.objects.filter(connection_id=cid, action="token.read").count()
    for query in ("", "auto_refresh=true&min_ttl=60"):
        same_answer(fast.get(path, headers, query=query), slow.get(path, headers, query=query))
    assert fast.django_calls == 0
    rows = list(AuditEvent.objects.filter(connection_id=cid, action="token.read").order_by("id"))[before:]
    assert len(rows) == 4
    assert [(r.actor, r.workspace, str(r.ip), r.detail) for r in rows] == [("apikey:t", "ws-fast", "127.0.0.1", {})] * 4


@pytest.mark.parametrize(
    "change, headers",
    [
        (None, {"X-API-Key": "wrong"}),  # the broker key
        (None, {"X-Dromos-Workspace": ""}),  # no workspace
        (None, {"X-Dromos-Workspace": "ws-other"}),  # another workspace: 404
        ({"status": Connection.Status.REVOKED}, {}),  # not active: 409
    ],
)
def test_broker_cases_the_fast_path_leaves_to_django(connected, change, headers):
    stack, _, cid = connected
    if change:
        Connection.objects.filter(pk=cid).update(**change)
    fast, slow = App(fast=True), App(fast=False)
    base = {"X-API-Key": settings.BROKER_API_KEY, "X-Dromos-Workspace": "ws-fast"}
    path = f"/internal/v1/connections/{cid}/token"
    before = AuditEvent.objects.filter(connection_id=cid, action="token.read").count()
    answer = fast.get(path, {**base, **headers})
    assert fast.django_calls == 1 and answer[0] in (400, 401, 404, 409)
    same_answer(answer, slow.get(path, {**base, **headers}))
    assert AuditEvent.objects.filter(connection_id=cid, action="token.read").count() == before


@pytest.fixture
def proxied(connected, fake_provider):
    """`connected` with an API base URL on its provider: the proxy can use it."""
    from broker_app.models import Provider

    Provider.objects.filter(name="fake").update(api_base_url=f"{fake_provider.url}/api")
    return connected


def _proxy_reads(cid: str) -> list:
    rows = AuditEvent.objects.filter(connection_id=cid, action="token.read", detail__via="proxy").order_by("id")
    return [(r.actor, r.workspace, str(r.ip), r.detail) for r in rows]


def test_broker_proxy_credential_answers_as_django_does_and_audits_each_read(proxied):
    stack, _, cid = proxied
    fast, slow = App(fast=True), App(fast=False)
    headers = {
        "X-API-Key": settings.BROKER_API_KEY,
        "X-Dromos-Workspace": "ws-fast",
        "X-Dromos-Actor": "proxy:apikey:t",
        "X-Dromos-Client-Ip": "192.0.2.7",
    }
    path = f"/internal/v1/connections/{cid}/proxy-credential"
    answer = fast.get(path, headers)
    same_answer(answer, slow.get(path, headers))
    assert fast.django_calls == 0 and answer[0] == 200
    body = json.loads(answer[2])
    assert body["connection_id"] == cid and body["access_token"] and body["api_base_url"].endswith("/api")
    assert answer[1]["cache-control"] == "no-store"
    assert _proxy_reads(cid) == [("proxy:apikey:t", "ws-fast", "192.0.2.7", {"via": "proxy"})] * 2


@pytest.mark.parametrize(
    "change, headers, query",
    [
        (None, {"X-API-Key": "wrong"}, ""),  # the broker key: 401
        (None, {"X-Dromos-Workspace": ""}, ""),  # no workspace: 400
        (None, {"X-Dromos-Workspace": "ws-other"}, ""),  # another workspace: 404
        (None, {"X-Dromos-Environment": "staging"}, ""),  # another environment: 404
        (None, {"X-Dromos-Environment": "Bad Env!"}, ""),  # malformed environment: 400
        ({"status": Connection.Status.REVOKED}, {}, ""),  # not active: 409
        ("no-api", {}, ""),  # the provider has no API base URL: 409
        (None, {}, "x=1"),  # a query: left to the view (which ignores it)
    ],
)
def test_broker_proxy_credential_cases_the_fast_path_leaves_to_django(proxied, change, headers, query):
    stack, _, cid = proxied
    if change == "no-api":
        from broker_app.models import Provider

        Provider.objects.filter(name="fake").update(api_base_url="")
    elif change:
        Connection.objects.filter(pk=cid).update(**change)
    fast, slow = App(fast=True), App(fast=False)
    base = {"X-API-Key": settings.BROKER_API_KEY, "X-Dromos-Workspace": "ws-fast"}
    path = f"/internal/v1/connections/{cid}/proxy-credential"
    answer = fast.get(path, {**base, **headers}, query=query)
    assert fast.django_calls == 1
    if query:
        assert answer[0] == 200 and len(_proxy_reads(cid)) == 1  # Django's read, audited once
        return
    assert answer[0] in (400, 401, 404, 409)
    same_answer(answer, slow.get(path, {**base, **headers}))
    assert _proxy_reads(cid) == []


def test_a_proxy_credential_due_for_refresh_takes_the_full_path(proxied):
    """Within a minute of expiry the view refreshes it first (from the fake provider)."""
    from datetime import timedelta

    from django.utils import timezone

    stack, _, cid = proxied
    Connection.objects.filter(pk=cid).update(expires_at=timezone.now() + timedelta(seconds=30))
    version = Connection.objects.get(pk=cid).token_version
    fast = App(fast=True)
    headers = {"X-API-Key": settings.BROKER_API_KEY, "X-Dromos-Workspace": "ws-fast"}
    answer = fast.get(f"/internal/v1/connections/{cid}/proxy-credential", headers)
    assert answer[0] == 200 and fast.django_calls == 1
    assert Connection.objects.get(pk=cid).token_version == version + 1


def test_broker_addresses_outside_the_allowlist_are_refused_by_django(connected, settings):
    stack, _, cid = connected
    settings.BROKER_ALLOWED_CIDRS = ["10.0.0.0/8"]
    fast = App(fast=True)
    headers = {"X-API-Key": settings.BROKER_API_KEY, "X-Dromos-Workspace": "ws-fast"}
    answer = fast.get(f"/internal/v1/connections/{cid}/token", headers, remote="192.0.2.1")
    assert answer[0] == 403 and fast.django_calls == 1


def test_a_token_due_for_refresh_takes_the_full_path(connected):
    """auto_refresh on a token expiring within min_ttl: Django's view runs the refresh."""
    from datetime import timedelta

    from django.utils import timezone

    stack, _, cid = connected
    Connection.objects.filter(pk=cid).update(expires_at=timezone.now() + timedelta(seconds=30))
    fast = App(fast=True)
    headers = {"X-API-Key": settings.BROKER_API_KEY, "X-Dromos-Workspace": "ws-fast"}
    answer = fast.get(f"/internal/v1/connections/{cid}/token", headers, query="auto_refresh=true&min_ttl=60")
    assert answer[0] == 200 and fast.django_calls == 1


def test_hosts_not_allowed_get_djangos_400(connected, settings):
    stack, key, cid = connected
    settings.ALLOWED_HOSTS = ["gateway.example.com"]
    fast = App(fast=True)
    answer = fast.get(f"/v1/token/{cid}", {"Authorization": f"Bearer {key}"})
    assert answer[0] == 400 and fast.django_calls == 1


def test_hsts_behind_a_tls_proxy_as_securitymiddleware_sends_it(connected, settings):
    stack, key, cid = connected
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    fast, slow = App(fast=True), App(fast=False)
    headers = {"X-API-Key": settings.BROKER_API_KEY, "X-Dromos-Workspace": "ws-fast", "X-Forwarded-Proto": "https"}
    path = f"/internal/v1/connections/{cid}/token"
    answer = fast.get(path, headers)
    assert "strict-transport-security" in answer[1] and fast.django_calls == 0
    same_answer(answer, slow.get(path, headers))


@pytest.mark.parametrize(
    "query, parsed",
    [
        ("", {}),
        ("auto_refresh=true", {"auto_refresh": True}),
        ("min_ttl=30&auto_refresh=0", {"auto_refresh": False, "min_ttl": 30}),
        ("auto_refresh=yes", None),  # DRF accepts it; the full path validates it
        ("min_ttl=", None),
        ("min_ttl=99999999999", None),
        ("x=1", None),
        ("auto_refresh=true&auto_refresh=true", None),
    ],
)
def test_query_strings_the_fast_path_reads(query, parsed):
    assert parse_token_query(query) == parsed
