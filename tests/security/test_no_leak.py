"""No token, code, secret or key anywhere it should not be.

One test drives the whole life of connections over real HTTP (agent → gateway → broker →
fake provider), with every logger at DEBUG, through the happy path and the unhappy ones —
including a provider that echoes the refresh token, the authorization code and our client
secret back in its error descriptions. Then it searches, for every secret value it saw
(the provider's access, refresh and id tokens, authorization codes, PKCE verifiers, state
and nonce, our client secret and its Basic-auth form, TOKEN_ENCRYPTION_KEYS, BROKER_API_KEY,
the Django secret key, the agent's API key, the webhook signing secret, RFC 8628 device
codes, static API keys, Basic passwords and their Basic header value, connect-link tokens of
the hosted connect page and the state, nonce, code and PKCE verifier of its flows and of
reconnects; issue 18's client secrets given per connection, app private keys (per provider
and per connection), the JWT assertions signed with them, and the installation and
service-account tokens they bought):

- every captured log record (formatted as the JSON log line, and its raw attributes);
- every error body, redirect and non-token answer the agent or the browser got;
- every page of the hosted connect page (provider list, parameter form, inline error, spent,
  expired, unknown link, CSRF refusal, reconnect): no secret but its own link's token, and
  that only in the page's own path (`/connect/{token}`, the "choose another service" link);
- every Celery task message published (args, kwargs, headers) and the whole Redis database
  (queues, cache, locks);
- every admin page (changelists and change pages of connections, providers, audit events,
  cached documents, webhooks) as a logged-in superuser;
- a `pg_dump` of the database;
- every OpenTelemetry span the run made (dromos/tracing.py on, every instrumentation, the
  spans as the exporter would send them: names, attributes, events, resource).

None may be found."""

from __future__ import annotations

import base64
import http.client
import logging
import re
import secrets
import shutil
import subprocess
from datetime import timedelta
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest
import redis
import requests
from celery import signals
from django.conf import settings
from django.contrib.admin.utils import quote as admin_quote
from django.contrib.auth.models import User
from django.db import connection as db_connection
from django.test import Client
from django.utils import timezone
from fake_app_providers import new_key_pem
from fake_provider import CLIENT_ID, CLIENT_SECRET, api_cut_short, api_hang, api_raw, api_status

from broker_app.models import (
    AuditEvent,
    CachedDocument,
    ConnectAttempt,
    Connection,
    ConnectSession,
    Provider,
    WebhookDelivery,
    WebhookEndpoint,
)
from broker_app.oauth import assertions
from broker_app.providers.registry import set_private_key
from broker_app.providers.spec import builtin_catalog
from broker_app.services.device import device_poll_one, device_poll_sweep
from broker_app.services.sweep import refresh_one, sweep_due
from broker_app.tasks import retry_revocations
from broker_app.webhooks import webhook_deliver, webhook_endpoint_create
from dromos.logging import JsonFormatter
from tests.conftest import auth_params, make_provider, start_connection

pytestmark = pytest.mark.django_db(transaction=True)

DEBUG_LOGGERS = (
    "",
    "django",
    "django.request",
    "django.server",
    "django.db.backends",
    "urllib3",
    "requests",
    "celery",
    "kombu",
    "broker_app",
    "gateway_app",
    "dromos",
    "dromos.events",
    "dromos.request",
)


class _Task:
    def retry(self, countdown, **_):
        return RuntimeError("retry")


class Evidence:
    """Secret values seen during the run, and every place they must not be."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.places: dict[str, list[tuple[str, str]]] = {}

    def secret(self, name: str, value: str | None) -> None:
        if value:
            assert len(value) >= 12, f"{name} is too short to search for reliably"
            self.secrets.setdefault(value, name)

    def place(self, kind: str, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        self.places.setdefault(kind, []).append((where, text))

    def leaks(self) -> list[str]:
        found = []
        for value, name in self.secrets.items():
            needles = {value, quote(value, safe=""), value.replace("/", "\\/")}
            for kind, entries in self.places.items():
                for where, text in entries:
                    if any(needle in text for needle in needles):
                        found.append(f"{name} found in {kind}: {where}")
        return found


@pytest.fixture
def evidence(fake_provider, monkeypatch):
    seen = Evidence()
    seen.secret("client secret", CLIENT_SECRET)
    seen.secret("client credentials (Basic auth)", base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode())
    seen.secret("BROKER_API_KEY", settings.BROKER_API_KEY)
    seen.secret("DJANGO_SECRET_KEY", settings.SECRET_KEY)
    seen.secret("TOKEN_ENCRYPTION_KEYS", settings.TOKEN_ENCRYPTION_KEYS)
    for index, key in enumerate(settings.TOKEN_ENCRYPTION_KEYS.split(",")):
        seen.secret(f"token encryption key {index + 1}", key.strip())
        seen.secret(f"token encryption key {index + 1} (unpadded)", key.strip().rstrip("="))
        raw = base64.urlsafe_b64decode(key.strip())
        seen.secret(f"token encryption key {index + 1} (hex)", raw.hex())

    real = fake_provider.token_endpoint

    def recording(form):
        for field in ("code", "code_verifier", "refresh_token", "client_secret"):
            seen.secret(f"provider-side {field}", form.get(field))
        status, body, headers = real(form)
        for field in ("access_token", "refresh_token", "id_token"):
            if isinstance(body.get(field), str):
                seen.secret(field, body[field])
                if field == "id_token":
                    seen.secret("id_token signature", body[field].rsplit(".", 1)[1])
        return status, body, headers

    monkeypatch.setattr(fake_provider, "token_endpoint", recording)
    return seen


@pytest.fixture
def published_tasks():
    messages: list[str] = []

    def record(sender=None, body=None, headers=None, routing_key=None, **_):
        messages.append(f"{sender} {routing_key} body={body!r} headers={headers!r}")

    signals.before_task_publish.connect(record, weak=False)
    yield messages
    signals.before_task_publish.disconnect(record)


class BrowserAnswer:
    def __init__(self, status: int, headers: dict[str, str], text: str) -> None:
        self.status_code, self.headers, self.text = status, headers, text


def _browser(stack, **params: str) -> BrowserAnswer:
    """The user's browser following the provider's redirect. Plain http.client, which logs
    nothing: the browser is not part of the system, its own request line would hold the code."""
    host, port = stack.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", "/auth/callback?" + urlencode(params))
        response = connection.getresponse()
        return BrowserAnswer(response.status, dict(response.getheaders()), response.read().decode())
    finally:
        connection.close()


class _Page:
    """The end user's browser on the hosted connect page: plain http.client (logs nothing, as
    `_browser`), its cookies kept, the form's CSRF token sent back."""

    def __init__(self, stack, url: str) -> None:
        self.origin, self.path = stack.url, urlsplit(url).path
        self.cookies: dict[str, str] = {}
        self.text = ""

    def request(self, method: str, form: dict[str, str] | None = None) -> BrowserAnswer:
        host, port = self.origin.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if form is not None:
            headers |= {"Content-Type": "application/x-www-form-urlencoded", "Referer": self.origin + self.path}
        try:
            connection.request(method, self.path, body=urlencode(form) if form is not None else None, headers=headers)
            response = connection.getresponse()
            answer = BrowserAnswer(response.status, dict(response.getheaders()), response.read().decode())
            for name, value in response.getheaders():
                if name.lower() == "set-cookie":
                    cookie, _, rest = value.partition(";")
                    self.cookies[cookie.split("=", 1)[0]] = cookie.split("=", 1)[1]
        finally:
            connection.close()
        self.text = answer.text
        return answer

    def open(self) -> BrowserAnswer:
        return self.request("GET")

    def post(self, **fields: str) -> BrowserAnswer:
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', self.text)
        assert csrf, self.text[:300]
        return self.request("POST", {"csrfmiddlewaretoken": csrf.group(1), **fields})


def _consent(stack, fake_provider, evidence, key, responses, **issue) -> tuple[str, BrowserAnswer]:
    started = start_connection(stack, key)
    params = auth_params(started["authUrl"])
    evidence.secret("state", params["state"])
    evidence.secret("nonce", params["nonce"])
    code = fake_provider.issue_code(code_challenge=params["code_challenge"], nonce=params["nonce"], **issue)
    evidence.secret("authorization code", code)
    response = _browser(stack, code=code, state=params["state"], iss=fake_provider.issuer)
    responses.append(("callback", response))
    # The same redirect again (a reload, or an attacker replaying it).
    responses.append(("replayed callback", _browser(stack, code=code, state=params["state"], iss=fake_provider.issuer)))
    return started["connection_id"], response


def _age(cid: str) -> None:
    now = timezone.now()
    Connection.objects.filter(pk=cid).update(
        expires_at=now + timedelta(seconds=30),
        last_refreshed_at=now - timedelta(seconds=3570),
        last_read_at=now - timedelta(seconds=3560),  # read since: in use
        next_refresh_attempt_at=None,
        refresh_failures=0,
    )


def _echo(status: int, error: str):
    """A provider that puts what it received into its error description."""

    def answer(form):
        echoed = " ".join(
            f"{name}={form.get(name)}"
            for name in ("refresh_token", "code", "code_verifier", "client_secret", "device_code")
            if form.get(name)
        )
        return status, {"error": error, "error_description": f"rejected: {echoed}", "received": form}, {}

    return answer


def _echo_presented_token(handler) -> bool:
    """A tokeninfo-like API: answers with the token it was sent, in the body and a header."""
    token = handler.headers.get("Authorization", "").removeprefix("Bearer ")
    return api_raw(200, f'{{"token": "{token}"}}'.encode(), {"X-Token": token})(handler)


def _echo_received(handler) -> bool:
    """An API that answers with everything it was sent: its request line and headers, in
    the body and in a header (a Location, as a redirect would carry the query)."""
    received = f"{handler.path} {handler.headers.get('Authorization', '')}"
    return api_raw(200, received.encode(), {"X-Received": received, "Location": handler.path})(handler)


def _admin_pages(evidence: Evidence, connection_ids: list[str]) -> int:
    admin = User.objects.create_superuser("leakcheck", "leakcheck@example.test", "pw-not-used")
    client = Client()
    client.force_login(admin)
    urls = [
        "/admin/",
        "/admin/broker_app/connection/",
        "/admin/broker_app/provider/",
        "/admin/broker_app/auditevent/",
        "/admin/broker_app/cacheddocument/",
        "/admin/broker_app/webhookendpoint/",
        "/admin/broker_app/webhookdelivery/",
        "/admin/broker_app/connection/?status__exact=failed",
        "/admin/broker_app/auditevent/?action=token.read",
    ]
    urls += [f"/admin/broker_app/connection/{admin_quote(cid)}/change/" for cid in connection_ids]
    from broker_app.models import Provider

    urls += [f"/admin/broker_app/provider/{pk}/change/" for pk in Provider.objects.values_list("pk", flat=True)]
    urls += [f"/admin/broker_app/auditevent/{pk}/change/" for pk in AuditEvent.objects.values_list("pk", flat=True)]
    urls += [
        f"/admin/broker_app/cacheddocument/{pk}/change/" for pk in CachedDocument.objects.values_list("pk", flat=True)
    ]
    urls += [
        f"/admin/broker_app/webhookendpoint/{pk}/change/" for pk in WebhookEndpoint.objects.values_list("pk", flat=True)
    ]
    urls += [
        f"/admin/broker_app/webhookdelivery/{pk}/change/" for pk in WebhookDelivery.objects.values_list("pk", flat=True)
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        evidence.place("admin page", url, response.content)
    return len(urls)


def _redis_dump(evidence: Evidence) -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    count = 0
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            value = repr(client.get(key))
        elif kind == "list":
            value = repr(client.lrange(key, 0, -1))
        elif kind == "hash":
            value = repr(client.hgetall(key))
        elif kind == "set":
            value = repr(client.smembers(key))
        elif kind == "zset":
            value = repr(client.zrange(key, 0, -1, withscores=True))
        else:
            value = kind
        evidence.place("redis", key.decode(errors="replace"), f"{key!r} {value}")
        count += 1
    return count


def _pg_dump() -> str:
    binary = shutil.which("pg_dump")
    assert binary, "pg_dump is missing: scripts/ensure-system-packages.sh installs postgresql-client"
    db = settings.DATABASES["default"]
    done = subprocess.run(
        [
            binary,
            "--no-owner",
            "-h",
            db["HOST"],
            "-p",
            str(db["PORT"]),
            "-U",
            db["USER"],
            db_connection.settings_dict["NAME"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def _pem_secrets(evidence: Evidence, name: str, pem: str) -> None:
    """A private key in every form it might leak in: as given, as stored (PKCS#8), and a line
    of its base64 body."""
    evidence.secret(name, pem)
    evidence.secret(f"{name} (PKCS#8)", assertions.normalised_pem(pem))
    for form in (pem, assertions.normalised_pem(pem)):
        body = "".join(line for line in form.splitlines() if "-----" not in line)
        evidence.secret(f"{name} (base64 body)", body[100:164])


def _machine_connections(stack, fake_provider, fake_app, evidence, key, responses, served) -> list[str]:
    own_secret = "cc-secret-" + secrets.token_urlsafe(24)
    wrong_secret = "cc-wrong-" + secrets.token_urlsafe(24)
    fake_provider.cc_clients = {"tenant-leak": own_secret}
    evidence.secret("connection client secret", own_secret)
    evidence.secret("connection client secret (wrong)", wrong_secret)
    for value in (own_secret, wrong_secret):
        evidence.secret("connection client (Basic auth)", base64.b64encode(f"tenant-leak:{value}".encode()).decode())
    github_pem, github_public = new_key_pem()
    own_pem, own_public = new_key_pem()
    google_pem, google_public = new_key_pem()
    for name, pem in (("GitHub App key", github_pem), ("connection key", own_pem), ("service account key", google_pem)):
        _pem_secrets(evidence, name, pem)
    fake_app.app_keys.update({"Iv23liLeak": github_public, "424242": own_public})
    fake_app.installations.add("31337")
    fake_app.service_accounts["leak@p.iam.gserviceaccount.com"] = google_public
    fake_app.delegation["leak@p.iam.gserviceaccount.com"] = {"alice@acme.example"}
    github = Provider(
        name="gh-bot",
        template="github_app_installation",
        client_id="Iv23liLeak",
        token_url=f"{fake_app.url}/app/installations/{{installation_id}}/access_tokens",
    )
    set_private_key(github, github_pem)
    github.save()
    google = Provider(
        name="gsa",
        template="google_service_account",
        client_id="leak@p.iam.gserviceaccount.com",
        token_url=fake_app.google_token_url,
    )
    set_private_key(google, google_pem)
    google.save()
    requests_made = [
        {
            "provider_name": "fake",
            "flow": "client_credentials",
            "client_id": "tenant-leak",
            "client_secret": own_secret,
        },
        {"provider_name": "gh-bot", "flow": "github_app", "params": {"installation_id": "31337"}},
        {
            "provider_name": "gh-bot",
            "flow": "github_app",
            "client_id": "424242",
            "private_key": own_pem,
            "params": {"installation_id": "31337"},
        },
        {
            "provider_name": "gsa",
            "flow": "jwt_bearer",
            "scopes": ["https://x.example/s"],
            "subject": "alice@acme.example",
        },
        {"provider_name": "gsa", "flow": "jwt_bearer", "scopes": ["https://x.example/s"], "private_key": own_pem},
    ]
    ids = []
    for body in requests_made:
        made = stack.call("POST", "/v1/request-connection", key, json={"user_id": "m", **body})
        assert made.status_code == 201, made.text
        responses.append((f"machine {body['flow']} ({made.json()['status']})", made))
        ids.append(made.json()["connection_id"])
    assert [Connection.objects.get(pk=c).status for c in ids] == ["active", "active", "active", "active", "failed"]
    fake_provider.script(_echo(401, "invalid_client"))
    refused = stack.call(
        "POST",
        "/v1/request-connection",
        key,
        json={"user_id": "m", "provider_name": "fake", "flow": "client_credentials", "client_id": "tenant-leak",
              "client_secret": wrong_secret},
    )  # fmt: skip
    assert refused.json()["status"] == "failed"
    responses.append(("machine refused", refused))
    malformed = stack.call(
        "POST",
        "/v1/request-connection",
        key,
        json={"user_id": "m", "provider_name": "gh-bot", "flow": "github_app", "private_key": own_pem[:-80],
              "params": {"installation_id": "31337"}},
    )  # fmt: skip
    assert malformed.status_code == 400
    responses.append(("machine malformed key", malformed))
    for cid_machine in ids[:4]:
        served.append(stack.call("GET", f"/v1/token/{cid_machine}", key))
        responses.append(("machine check", stack.call("GET", f"/v1/check-connection/{cid_machine}", key)))
        _age(cid_machine)
        assert sweep_due().queued >= 1  # publishes a refresh_connection task
        assert refresh_one(task=_Task(), connection_id=cid_machine) == "success"
    for token in fake_app.issued:
        evidence.secret("installation or service-account token", token)
    for seen in fake_app.seen:
        evidence.secret("app JWT assertion", seen.raw)
        evidence.secret("app JWT assertion signature", seen.raw.rsplit(".", 1)[1])
    assert len(fake_app.issued) == 6 and all(s.raw for s in fake_app.seen)
    return [*ids, refused.json()["connection_id"]]


def test_no_secret_in_logs_errors_tasks_admin_or_database(
    stack, traced, fake_provider, fake_provider_row, fake_app, evidence, published_tasks, caplog, monkeypatch
):
    for name in DEBUG_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    key = stack.key("ws-a")
    evidence.secret("agent API key", key)
    evidence.secret("agent API key secret part", key.split("_", 2)[2])
    dead_port = _free_port()
    _, webhook_secret = webhook_endpoint_create(workspace="ws-a", url=f"http://127.0.0.1:{dead_port}/hook")
    evidence.secret("webhook signing secret", webhook_secret)
    responses: list[tuple[str, requests.Response | BrowserAnswer]] = []
    served: list[requests.Response] = []

    # 1. A consent that works, then every way of reading and refreshing the token.
    cid, done = _consent(stack, fake_provider, evidence, key, responses)
    assert "status=success" in done.headers["Location"]
    served.append(stack.call("GET", f"/v1/token/{cid}", key))
    served.append(stack.call("POST", f"/v1/refresh/{cid}", key))
    _age(cid)  # past the coalescing window: the next read refreshes again
    served.append(stack.call("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=86400", key))
    assert all(r.status_code == 200 for r in served), [r.text for r in served]
    for what, path in (
        ("check-connection", f"/v1/check-connection/{cid}"),
        ("list", "/v1/connections"),
        ("providers", "/v1/providers"),
    ):
        responses.append((what, stack.call("GET", path, key)))

    # 1b. The API proxy (issue 15): ordinary calls, a 401 that refreshes and retries, a second
    # 401, a provider echoing the token in its body and a header, timeouts, refusals.
    fake_provider_row.api_base_url = f"{fake_provider.url}/api"
    fake_provider_row.save()
    monkeypatch.setattr(settings, "PROXY_READ_TIMEOUT", 0.5)
    proxied = [
        ("proxied GET", stack.call("GET", f"/v1/proxy/{cid}/users/me?q=1", key)),
        ("proxied POST", stack.call("POST", f"/v1/proxy/{cid}/items", key, data=b"{}")),
    ]
    fake_provider.expire_access_tokens()
    proxied.append(("proxied after 401 + refresh", stack.call("GET", f"/v1/proxy/{cid}/users/me", key)))
    fake_provider.api_answer(api_status(401), api_status(401, {"error": "insufficient_scope"}))
    proxied.append(("proxied second 401", stack.call("GET", f"/v1/proxy/{cid}/users/me", key)))
    fake_provider.api_answer(_echo_presented_token)
    proxied.append(("proxied echo", stack.call("GET", f"/v1/proxy/{cid}/tokeninfo", key)))
    fake_provider.api_answer(api_hang(2))
    proxied.append(("proxied timeout", stack.call("GET", f"/v1/proxy/{cid}/slow", key)))
    proxied.append(("proxied bad path", stack.call("GET", f"/v1/proxy/{cid}/a/%2e%2e/b", key)))
    proxied.append(("proxied unknown", stack.call("GET", "/v1/proxy/c_" + "x" * 32 + "/users/me", key)))
    assert [r.status_code for _, r in proxied] == [200, 200, 200, 401, 200, 504, 400, 404], [r.text for _, r in proxied]
    fake_provider.api_answer(api_cut_short())
    cut = requests.get(
        f"{stack.url}/v1/proxy/{cid}/download", headers={"Authorization": f"Bearer {key}"}, timeout=10, stream=True
    )
    assert cut.status_code == 200
    with pytest.raises(requests.RequestException):
        cut.content  # noqa: B018  (the answer breaks off, as the provider's did)
    responses.extend(proxied)
    assert any(c["token_valid"] for c in fake_provider.api_calls)

    # 2. The provider fails transiently and echoes the refresh token and our secret.
    _age(cid)  # (a forced refresh right after another one returns that one's result)
    fake_provider.script(_echo(500, "server_error"))
    failed = stack.call("POST", f"/v1/refresh/{cid}", key)
    assert failed.status_code == 503, failed.text
    responses.append(("transient refresh failure", failed))
    _age(cid)
    fake_provider.script(_echo(400, "invalid_request"))
    responses.append(("refresh rejected", stack.call("POST", f"/v1/refresh/{cid}", key)))

    # 3. The background sweep: a Celery task is published, then run.
    _age(cid)
    assert sweep_due().queued >= 1
    assert refresh_one(task=_Task(), connection_id=cid) == "success"

    # 4. A consent whose code exchange fails, the provider echoing code, verifier and secret.
    fake_provider.script(_echo(400, "invalid_grant"))
    failed_cid, failed_cb = _consent(stack, fake_provider, evidence, key, responses)
    assert "error=code_exchange_failed" in failed_cb.headers["Location"]

    # 5. A consent whose id_token is refused.
    bad_cid, bad_cb = _consent(
        stack, fake_provider, evidence, key, responses, id_token=fake_provider.id_token(nonce="not-the-nonce")
    )
    assert "error=invalid_id_token" in bad_cb.headers["Location"]

    # 6. Wrong credentials, at the gateway and at the broker.
    responses.append(("wrong key secret", stack.call("GET", f"/v1/token/{cid}", key[:-6] + "AAAAAA")))
    responses.append(("garbage authorization", stack.call("GET", "/v1/connections", "not-a-key " + key)))
    responses.append(
        (
            "wrong broker key",
            stack.call(
                "GET",
                f"/internal/v1/connections/{cid}/token",
                headers={"X-API-Key": settings.BROKER_API_KEY[:-1] + "x"},
            ),
        )
    )
    responses.append(("unknown connection", stack.call("GET", "/v1/token/c_" + "x" * 32, key)))
    responses.append(
        (
            "bad input",
            stack.call(
                "POST", "/v1/request-connection", key, json={"user_id": "u", "provider_name": "fake", "return_url": key}
            ),
        )
    )

    # 7. A ciphertext that no longer decrypts (tampered row).
    row = Connection.objects.get(pk=cid)
    Connection.objects.filter(pk=cid).update(access_token_enc=row.access_token_enc[:-4] + "AAAA")
    unreadable = stack.call("GET", f"/v1/token/{cid}", key)
    assert unreadable.status_code >= 500
    responses.append(("unreadable token", unreadable))
    Connection.objects.filter(pk=cid).update(access_token_enc=row.access_token_enc)

    # 8. A second active connection refused at refresh with invalid_grant (echoing the token).
    second, _ = _consent(stack, fake_provider, evidence, key, responses)
    _age(second)
    fake_provider.script(_echo(400, "invalid_grant"))
    gone = stack.call("POST", f"/v1/refresh/{second}", key)
    assert gone.status_code == 409, gone.text
    responses.append(("invalid_grant", gone))

    # 9. Revocation that fails at first, then succeeds from the Celery task.
    fake_provider.revocation_status = 503
    responses.append(("revoke deferred", stack.call("DELETE", f"/v1/connections/{cid}", key)))
    fake_provider.revocation_status = 200
    assert retry_revocations.apply().result == 1
    assert not Connection.objects.get(pk=cid).revoke_pending

    # 10. Webhook deliveries (their tasks were published on commit): one attempt each.
    deliveries = list(WebhookDelivery.objects.values_list("pk", flat=True))
    assert deliveries
    for delivery_id in deliveries:
        webhook_deliver(delivery_id=str(delivery_id))

    # 11. Device flow (RFC 8628): one code polled by a published task and approved, one
    # refused by a provider that echoes the device code and our secret.
    device_ids = []
    for outcome in ("approved", "refused"):
        started = stack.call(
            "POST", "/v1/request-connection", key, json={"user_id": "d", "provider_name": "fake", "flow": "device"}
        )
        assert started.status_code == 201, started.text
        responses.append(("device start", started))
        device_ids.append(started.json()["connection_id"])
        device_code = next(c for c, e in fake_provider.devices.items() if e["user_code"] == started.json()["user_code"])
        evidence.secret("device code", device_code)
        Connection.objects.filter(pk=device_ids[-1]).update(device_next_poll_at=timezone.now())
        assert device_poll_sweep() == [device_ids[-1]]  # publishes a device_poll task
        if outcome == "approved":
            fake_provider.device_set(started.json()["user_code"], "approved")
        else:
            fake_provider.script(_echo(400, "access_denied"))
        device_poll_one(connection_id=device_ids[-1])
        responses.append(("device check", stack.call("GET", f"/v1/check-connection/{device_ids[-1]}", key)))
    assert [Connection.objects.get(pk=c).status for c in device_ids] == ["active", "failed"]

    # 12. Static credentials: an API key and a Basic login verified and stored, a wrong key
    # refused, a verification endpoint down, a key replaced, each served once.
    # (openai_query: the openai template with its key as a query parameter, for the proxy)
    monkeypatch.setitem(
        builtin_catalog(), "openai_query", {**builtin_catalog()["openai"], "credential_query_param": "key"}
    )
    for template in ("openai", "twilio", "openai_query"):
        monkeypatch.setitem(builtin_catalog()[template], "verify_url", f"{fake_provider.url}/verify")
        Provider.objects.create(name=template, template=template, api_base_url=f"{fake_provider.url}/api")
    api_key, new_key, wrong_key, query_key = (
        f"sk-{what}-" + secrets.token_urlsafe(24) for what in ("live", "next", "wrong", "query")
    )
    password = "pw-" + secrets.token_urlsafe(24)
    basic = base64.b64encode(f"AC0123456789:{password}".encode()).decode()
    for name, value in (
        ("API key", api_key),
        ("API key", new_key),
        ("API key", wrong_key),
        ("API key (query)", query_key),
        ("password", password),
    ):
        evidence.secret(name, value)
    evidence.secret("Basic credential", basic)
    fake_provider.valid_credentials = {f"Bearer {api_key}", f"Bearer {new_key}", f"Basic {basic}", query_key}
    static_ids = []
    for provider_name, credentials in (
        ("openai", {"type": "api_key", "api_key": api_key}),
        ("openai", {"type": "api_key", "api_key": wrong_key}),
        ("twilio", {"type": "basic", "username": "AC0123456789", "password": password}),
        ("openai_query", {"type": "api_key", "api_key": query_key}),
    ):
        made = stack.call(
            "POST",
            "/v1/connections",
            key,
            json={"user_id": "s", "provider_name": provider_name, "credentials": credentials},
        )
        responses.append((f"static {credentials['type']} ({made.status_code})", made))
        if made.status_code == 201:
            static_ids.append(made.json()["connection_id"])
    assert len(static_ids) == 3
    fake_provider.verify_status = 503
    down = stack.call(
        "POST",
        "/v1/connections",
        key,
        json={"user_id": "s", "provider_name": "openai", "credentials": {"type": "api_key", "api_key": wrong_key}},
    )
    assert down.status_code == 503
    responses.append(("static verification down", down))
    fake_provider.verify_status = None
    replaced = stack.call(
        "PUT",
        f"/v1/connections/{static_ids[0]}/credentials",
        key,
        json={"credentials": {"type": "api_key", "api_key": new_key}},
    )
    assert replaced.status_code == 200, replaced.text
    responses.append(("credentials replaced", replaced))
    for cid_static in static_ids:
        served.append(stack.call("GET", f"/v1/token/{cid_static}", key))
        responses.append(("static check", stack.call("GET", f"/v1/check-connection/{cid_static}", key)))
    assert served[-3].json()["access_token"] == new_key and served[-2].json()["password"] == password

    # 12b. The proxy with each static kind (header, Basic, query parameter): ordinary calls,
    # a provider echoing what it received (the header, the query) in its body and headers, a
    # key the provider refuses, an agent query naming the credential's parameter.
    key_cid, basic_cid, query_cid = static_ids
    static_proxied = []
    for what, cid_static in (("key", key_cid), ("basic", basic_cid), ("query", query_cid)):
        static_proxied.append((f"proxied {what}", stack.call("GET", f"/v1/proxy/{cid_static}/me?q=1", key)))
        fake_provider.api_answer(_echo_received)
        static_proxied.append((f"proxied {what} echo", stack.call("GET", f"/v1/proxy/{cid_static}/echo?x=1", key)))
    static_proxied.append(("proxied query clash", stack.call("GET", f"/v1/proxy/{query_cid}/me?key=mine", key)))
    fake_provider.valid_credentials = set()
    static_proxied.append(("proxied key refused", stack.call("GET", f"/v1/proxy/{key_cid}/me", key)))
    static_proxied.append(("proxied query refused", stack.call("GET", f"/v1/proxy/{query_cid}/me", key)))
    assert [r.status_code for _, r in static_proxied] == [200, 200, 200, 200, 200, 200, 400, 401, 401], [
        r.text for _, r in static_proxied
    ]
    received = [c for c in fake_provider.api_calls if c["path"] in ("/api/me", "/api/echo")]
    assert any(c["headers"].get("authorization") == f"Bearer {new_key}" for c in received)
    assert any(c["headers"].get("authorization") == f"Basic {basic}" for c in received)
    assert any(c["query"] == f"q=1&key={query_key}" for c in received)
    responses.extend(static_proxied)

    # 13. A workspace's own provider app (issue 19): its secret written, rotated, the row read
    # back and listed; refused writes echo nothing.
    own_secret, rotated_secret = ("ws-secret-" + secrets.token_urlsafe(24) for _ in range(2))
    evidence.secret("workspace provider client secret", own_secret)
    evidence.secret("workspace provider client secret (rotated)", rotated_secret)
    own_path = "/internal/v1/workspace-providers/google"
    ws_headers = {"X-Dromos-Workspace": "ws-a"}
    for what, method, body in (
        ("workspace provider created", "PUT", {"template": "google", "client_id": "c", "client_secret": own_secret}),
        ("workspace provider rotated", "PUT", {"client_secret": rotated_secret}),
        ("workspace provider refused", "PUT", {"client_secret": own_secret, "token_url": "https://x.example"}),
        ("workspace provider read", "GET", None),
    ):
        answer = stack.broker(method, own_path, headers=ws_headers, json=body)
        assert answer.status_code < 500, answer.text
        responses.append((what, answer))
    responses.append(
        ("workspace providers", stack.broker("GET", "/internal/v1/workspace-providers", headers=ws_headers))
    )
    # 14. The management API (issue 19): an admin key mints a key and makes and rotates a
    # webhook secret. Each secret is in its own creation answer only (by design, not kept
    # here); lists, reads, revocation, the audit log and its export never hold one.
    admin = stack.key("ws-a", scopes=["admin", "tokens:read", "connections:read"])
    evidence.secret("admin API key", admin)
    minted = stack.call("POST", "/v1/keys", admin, json={"name": "run", "expires_in": 600})
    assert minted.status_code == 201, minted.text
    evidence.secret("minted API key", minted.json()["key"])
    evidence.secret("minted API key secret part", minted.json()["key"].split("_", 2)[2])
    responses.append(("minted key used", stack.call("GET", "/v1/connections", minted.json()["key"])))
    hook = stack.call("POST", "/v1/webhooks", admin, json={"url": f"http://127.0.0.1:{dead_port}/managed"})
    assert hook.status_code == 201, hook.text
    evidence.secret("webhook secret (management API)", hook.json()["secret"])
    rotated = stack.call("POST", f"/v1/webhooks/{hook.json()['id']}/rotate-secret", admin)
    evidence.secret("webhook secret (rotated)", rotated.json()["secret"])
    for what, method, path in (
        ("key list", "GET", "/v1/keys?include_revoked=true"),
        ("key read", "GET", f"/v1/keys/{minted.json()['prefix']}"),
        ("key revoked", "DELETE", f"/v1/keys/{minted.json()['prefix']}"),
        ("webhook list", "GET", "/v1/webhooks"),
        ("audit log", "GET", "/v1/audit?limit=500"),
        ("audit export", "GET", "/v1/audit/export?since=2000-01-01"),
    ):
        answer = stack.call(method, path, admin)
        assert answer.status_code == 200, (what, answer.text)
        responses.append((what, answer))

    # 13. Machine connections (issue 18): a connection's own client secret (used, then a wrong
    # one echoed back by the provider), GitHub App installation tokens and a Google service
    # account with private keys given per connection and per provider, their JWT assertions,
    # a re-request by the sweep's task, a malformed key refused.
    machine_ids = _machine_connections(stack, fake_provider, fake_app, evidence, key, responses, served)

    # Every token the provider issued was seen, and some were really served.
    assert sum(name == "access_token" for name in evidence.secrets.values()) >= 6
    assert any(r.json().get("access_token") in evidence.secrets for r in served)
    assert {Connection.objects.get(pk=c).status for c in (failed_cid, bad_cid, second)} == {"failed"}

    # 13. Connect sessions and the hosted page (issue 16): a session offering a provider whose
    # template asks for a parameter; its page opened, a bad value refused inline, the flow
    # started, consented, returned; the spent link reopened; an expired link, an unknown one,
    # a form without its CSRF token; the session read back. Then reconnects: through a
    # reconnect session as the same account, by another account, and for a provider whose
    # account id comes from its userinfo endpoint (that endpoint failing, then answering).
    back_to = "https://app.example.com/oauth/return"
    endpoints = {
        "discovery_url": "",
        "authorize_url": f"{fake_provider.url}/authorize",
        "token_url": f"{fake_provider.url}/token",
        "userinfo_url": f"{fake_provider.url}/userinfo",
        "revocation_url": f"{fake_provider.url}/revoke",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    make_provider(name="helpdesk", template="zendesk", default_scopes=["read"], **endpoints)
    make_provider(name="gh", template="github", default_scopes=["read:user"], **endpoints)
    pages: list[tuple[str, str, int, BrowserAnswer]] = []  # what, its link's token, expected status, answer

    def connect_session(**body) -> tuple[dict, str]:
        made = stack.call("POST", "/v1/connect-sessions", key, json={"user_id": "page", "return_url": back_to, **body})
        assert made.status_code == 201, made.text
        token = made.json()["connect_url"].rsplit("/", 1)[1]
        evidence.secret("connect link token", token)
        return made.json(), token

    def provider_consent(what: str, auth_url: str, sub: str = "user-1") -> dict[str, str]:
        params = auth_params(auth_url)
        evidence.secret("state", params["state"])
        evidence.secret("nonce", params.get("nonce"))
        code = fake_provider.issue_code(code_challenge=params["code_challenge"], nonce=params.get("nonce"), sub=sub)
        evidence.secret("authorization code", code)
        iss = {"iss": fake_provider.issuer} if params.get("nonce") else {}
        answer = _browser(stack, code=code, state=params["state"], **iss)
        responses.append((what, answer))
        assert answer.status_code == 302, answer.text
        return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}

    created, token = connect_session(allowed_providers=["helpdesk", "fake"], tags={"team": "support"})
    page = _Page(stack, created["connect_url"])
    pages.append(("provider list", token, 200, page.open()))
    pages.append(("parameter form", token, 200, page.post(provider="helpdesk")))
    refused = page.post(provider="helpdesk", step="connect", param_subdomain="evil.com#")
    pages.append(("parameter refused", token, 400, refused))
    started = page.post(provider="helpdesk", step="connect", param_subdomain="acme")
    assert started.status_code == 303, started.text
    back = provider_consent("connect page callback", started.headers["Location"])
    assert back["status"] == "success", back
    page_cid = back["connection_id"]
    pages.append(("spent link", token, 410, _Page(stack, created["connect_url"]).open()))
    responses.append(("connect session", stack.call("GET", f"/v1/connect-sessions/{created['session_id']}", key)))
    expired, expired_token = connect_session()
    ConnectSession.objects.filter(pk=expired["session_id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    pages.append(("expired link", expired_token, 410, _Page(stack, expired["connect_url"]).open()))
    responses.append(("expired session", stack.call("GET", f"/v1/connect-sessions/{expired['session_id']}", key)))
    pages.append(("unknown link", "", 404, _Page(stack, stack.url + "/connect/" + "A" * 43).open()))
    unforged, unforged_token = connect_session(allowed_providers=["fake"])
    no_csrf = _Page(stack, unforged["connect_url"]).request("POST", {"provider": "fake"})
    pages.append(("form without CSRF token", unforged_token, 403, no_csrf))

    # Reconnect of the failed OIDC connection (8.) through a reconnect session, same account.
    again, again_token = connect_session(reconnect=second, user_id="user-1")
    page = _Page(stack, again["connect_url"])
    pages.append(("reconnect page", again_token, 200, page.open()))
    started = page.post(provider="fake")
    assert started.status_code == 303, started.text
    assert provider_consent("reconnect callback", started.headers["Location"]) == {
        "status": "success",
        "connection_id": second,
    }
    # …and by another account: refused, nothing changed.
    direct = stack.call("POST", f"/v1/connections/{second}/reconnect", key, json={"scopes": ["profile"]})
    assert direct.status_code == 201, direct.text
    mismatch = provider_consent("reconnect by another account", direct.json()["authUrl"], sub="someone-else")
    assert mismatch["error"] == "account_mismatch"
    # A GitHub-like provider: the account id from its userinfo endpoint, which fails once.
    gh = start_connection(stack, key, provider="gh", scopes=["read:user"])
    assert provider_consent("userinfo provider callback", gh["authUrl"])["status"] == "success"
    fake_provider.userinfo_answer(_echo_presented_token)  # echoes the access token, names no account
    fake_provider.userinfo_answer(api_status(500, {"message": "down"}))
    for expected in ("account_unverifiable", "userinfo_unavailable", "success"):
        direct = stack.call("POST", f"/v1/connections/{gh['connection_id']}/reconnect", key, json={})
        assert direct.status_code == 201, direct.text
        answer = provider_consent(f"userinfo reconnect ({expected})", direct.json()["authUrl"])
        assert answer.get("error", answer["status"]) == expected, answer
    assert len(fake_provider.userinfo_calls) == 5  # two first consents, three reconnects
    assert ConnectAttempt.objects.filter(status="failed").count() == 3
    for what, link_token, status, answer in pages:
        assert answer.status_code == status, (what, answer.text[:300])
        assert "Traceback" not in answer.text, what
        text = f"{answer.headers}\n{answer.text}"
        if link_token:
            # The page's own path (the "choose another service" link) is the one place it may be.
            text = text.replace(f'href="/connect/{link_token}"', 'href="/connect/[own link]"')
        evidence.place("connect page", f"{what} ({answer.status_code})", text)
    assert AuditEvent.objects.filter(action="connection.reconnect_failed").count() == 3

    # -- now look everywhere ------------------------------------------------------------------------
    formatter = JsonFormatter()
    assert len(caplog.records) > 50
    for index, record in enumerate(caplog.records):
        where = f"record {index} ({record.name}: {record.getMessage()[:60]})"
        evidence.place("log line", where, formatter.format(record))
        # Django's `request` attribute is written as method and path by the formatter (above).
        evidence.place(
            "log record attributes",
            where,
            repr({k: v for k, v in vars(record).items() if k not in ("request", "args", "msg")}),
        )
        if record.exc_info:
            evidence.place("log traceback", where, logging.Formatter().formatException(record.exc_info))
    for what, response in responses:
        assert response.status_code != 200 or "access_token" not in response.text, what
        evidence.place(
            "HTTP answer",
            f"{what} ({response.status_code})",
            f"{response.headers.get('Location', '')}\n{response.text}",
        )
    for response in served:
        assert response.headers["Cache-Control"] == "no-store"
    assert published_tasks, "no Celery task was published: the task-argument check saw nothing"
    for index, message in enumerate(published_tasks):
        evidence.place("Celery task message", str(index), message)
    evidence.place("metrics", "/metrics", stack.broker("GET", "/metrics").text)
    for response in (cut,):
        evidence.place("HTTP answer", "proxied answer cut short", f"{response.headers}")
    redis_keys = _redis_dump(evidence)
    admin_pages = _admin_pages(
        evidence,
        [cid, failed_cid, bad_cid, second, *device_ids, *static_ids, *machine_ids, page_cid, gh["connection_id"]],
    )
    evidence.place("pg_dump", "database", _pg_dump())
    spans = traced.get_finished_spans()
    for span in spans:
        evidence.place("span", span.name, span.to_json() + repr(dict(span.resource.attributes)))

    leaks = evidence.leaks()
    assert not leaks, "\n".join(leaks)
    # The search really looked at something in every place (spans: the gateway's, the broker's,
    # PostgreSQL's, Redis's and the provider calls', the callbacks' among them).
    kinds = {span.instrumentation_scope.name.rsplit(".", 1)[-1] for span in spans}
    assert {"django", "urllib3", "requests", "psycopg", "redis"} <= kinds, kinds
    assert any(span.name == "GET auth/callback" for span in spans)
    assert len(evidence.secrets) >= 30 and redis_keys > 0 and admin_pages >= 20 and len(spans) > 200, (
        len(evidence.secrets),
        redis_keys,
        admin_pages,
        len(spans),
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_search_finds_a_planted_secret(caplog):
    """The haystack search is not blind: a token that does reach a log line, an answer or
    the dump is reported."""
    seen = Evidence()
    seen.secret("access_token", "at-planted-0123456789abcdef")
    logging.getLogger("broker_app").warning("oops %s", "at-planted-0123456789abcdef")
    seen.place("log line", "planted", JsonFormatter().format(caplog.records[-1]))
    seen.place("pg_dump", "planted", "COPY x FROM stdin;\nat-planted-0123456789abcdef%2F\n")
    assert seen.leaks() == ["access_token found in log line: planted", "access_token found in pg_dump: planted"]
