"""The management API (issue 19) for workspace admins: API keys (shown once, listed without
secret, revoked at once), webhooks (create, list, rotate, delete, redeliver a failed
delivery) and the audit log (filtered, paginated, NDJSON export), each scoped to the admin
key's workspace: another workspace's object is a 404, a key without `admin` gets 403."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from broker_app.models import AuditEvent, WebhookDelivery, WebhookEndpoint
from broker_app.webhooks import endpoint_secret, sign, verify_signature
from gateway_app.keys import _revoked_marker
from gateway_app.models import ApiKey
from tests.conftest import connect

pytestmark = pytest.mark.django_db(transaction=True)

MANAGEMENT = (
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys"),
    ("GET", "/v1/keys/abcdefgh"),
    ("DELETE", "/v1/keys/abcdefgh"),
    ("GET", "/v1/webhooks"),
    ("POST", "/v1/webhooks"),
    ("DELETE", f"/v1/webhooks/{uuid.uuid4()}"),
    ("POST", f"/v1/webhooks/{uuid.uuid4()}/rotate-secret"),
    ("GET", f"/v1/webhooks/{uuid.uuid4()}/deliveries"),
    ("POST", f"/v1/webhooks/{uuid.uuid4()}/deliveries/{uuid.uuid4()}/redeliver"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/export?since=2026-01-01T00:00:00Z"),
    ("GET", "/v1/workspace-providers"),
    ("GET", "/v1/workspace-providers/google"),
    ("PUT", "/v1/workspace-providers/google"),
    ("DELETE", "/v1/workspace-providers/google"),
)


def admin(stack, workspace="ws-a") -> str:
    return stack.key(workspace, scopes=["admin", "connections:read", "connections:write", "tokens:read"])


def test_a_key_without_admin_gets_403_on_every_management_endpoint(stack):
    for scopes in (None, ["connections:read", "connections:write", "tokens:read", "tokens:refresh", "proxy"]):
        key = stack.key("ws-a", scopes=scopes)  # None: every scope but admin
        for method, path in MANAGEMENT:
            response = stack.call(method, path, key, json={"name": "x"} if method in ("POST", "PUT") else None)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"] == "forbidden"
    assert ApiKey.objects.count() == 2 and not WebhookEndpoint.objects.exists()


def test_no_key_is_401_on_management_endpoints(stack):
    for method, path in MANAGEMENT:
        assert stack.call(method, path).status_code == 401


def test_created_key_is_shown_once_and_listed_without_its_secret(stack, fake_provider_row):
    key = admin(stack)
    created = stack.call("POST", "/v1/keys", key, json={"name": "agent-1", "scopes": ["connections:read"]})
    assert created.status_code == 201, created.text
    assert created.headers["Cache-Control"].startswith("no-store")
    body = created.json()
    plaintext, prefix = body["key"], body["prefix"]
    assert plaintext.startswith(f"dk_{prefix}_") and body["scopes"] == ["connections:read"]
    assert body["created_by"] == key.split("_")[1] and body["minted_from"] is None
    assert stack.call("GET", "/v1/providers", plaintext).status_code == 200
    assert stack.call("GET", "/v1/connections", plaintext).status_code == 200
    assert stack.call("GET", "/v1/token/abc", plaintext).status_code == 403  # its scopes only

    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    secret = plaintext.split("_", 2)[2]
    listing = stack.call("GET", "/v1/keys", key)
    detail = stack.call("GET", f"/v1/keys/{prefix}", key)
    for answer in (listing, detail):
        assert answer.status_code == 200
        assert secret not in answer.text and digest not in answer.text and '"key"' not in answer.text
    row = next(r for r in listing.json()["results"] if r["prefix"] == prefix)
    assert row["name"] == "agent-1" and row["last_used_at"] is not None and row["revoked_at"] is None
    assert set(row) == {
        "prefix",
        "name",
        "scopes",
        "providers",
        "user_ids",
        "user_id_prefix",
        "allowed_cidrs",
        "egress_policy",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
        "minted_from",
        "created_by",
    }
    assert listing.json()["count"] == 2


def test_key_list_pages_and_hides_revoked_keys_unless_asked(stack):
    key = admin(stack)
    prefixes = [stack.call("POST", "/v1/keys", key, json={"name": f"k{i}"}).json()["prefix"] for i in range(3)]
    assert stack.call("DELETE", f"/v1/keys/{prefixes[0]}", key).status_code == 200
    first = stack.call("GET", "/v1/keys?page_size=2", key).json()
    assert first["count"] == 3 and len(first["results"]) == 2 and first["previous"] is None
    second = stack.call("GET", "/v1/" + first["next"].split("/v1/", 1)[1], key).json()
    assert len(second["results"]) == 1 and second["next"] is None
    everything = stack.call("GET", "/v1/keys?include_revoked=true", key).json()
    assert everything["count"] == 4
    assert [r["revoked_at"] is not None for r in everything["results"] if r["prefix"] == prefixes[0]] == [True]
    assert stack.call("GET", "/v1/keys?page_size=0", key).status_code == 400


def test_revoking_through_the_api_refuses_a_cached_key_at_once(stack, fake_provider_row, settings):
    settings.API_KEY_CACHE_SECONDS = 300
    key = admin(stack)
    created = stack.call("POST", "/v1/keys", key, json={"name": "agent"}).json()
    assert stack.call("GET", "/v1/providers", created["key"]).status_code == 200  # now cached
    revoked = stack.call("DELETE", f"/v1/keys/{created['prefix']}", key)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert stack.call("GET", "/v1/providers", created["key"]).status_code == 401
    # the marker other gateway processes read before trusting their cached copy
    assert cache.get(_revoked_marker(created["prefix"])) is True
    assert stack.call("DELETE", f"/v1/keys/{created['prefix']}", key).status_code == 200  # idempotent


def test_bad_key_inputs_are_400_and_write_nothing(stack):
    key = admin(stack)
    before = ApiKey.objects.count()
    for body in (
        {},
        {"name": ""},
        {"name": "x", "scopes": ["tokens:everything"]},
        {"name": "x", "scopes": []},
        {"name": "x", "providers": []},
        {"name": "x", "providers": ["no spaces allowed"]},
        {"name": "x", "allowed_cidrs": ["not-a-network"]},
        {"name": "x", "user_ids": [""]},
        {"name": "x", "expires_at": "2001-01-01T00:00:00Z"},
        {"name": "x", "expires_in": 10},
        {"name": "x", "expires_in": 3600, "expires_at": "2099-01-01T00:00:00Z"},
        {"name": "x", "egress_policy": ["nonsense"]},
        {"name": "x", "egress_policy": [{"provider": "x", "methods": ["FETCH"], "path": "/"}]},
    ):
        response = stack.call("POST", "/v1/keys", key, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"] == "invalid_request"
    assert ApiKey.objects.count() == before
    assert stack.call("GET", "/v1/keys/NOT-A-PREFIX", key).status_code == 400


def test_an_admin_cannot_read_or_change_another_workspaces_keys_webhooks_or_audit(
    stack, fake_provider, fake_provider_row
):
    a, b = admin(stack, "ws-a"), admin(stack, "ws-b")
    theirs = stack.call("POST", "/v1/keys", a, json={"name": "a-agent"}).json()
    hook = stack.call("POST", "/v1/webhooks", a, json={"url": "https://hooks.example.com/a"}).json()
    cid = connect(stack, fake_provider, a)
    delivery = WebhookDelivery.objects.create(
        endpoint_id=hook["id"], event="connection.activated", connection_id=cid, payload={}, status="failed"
    )
    for method, path in (
        ("GET", f"/v1/keys/{theirs['prefix']}"),
        ("DELETE", f"/v1/keys/{theirs['prefix']}"),
        ("DELETE", f"/v1/webhooks/{hook['id']}"),
        ("POST", f"/v1/webhooks/{hook['id']}/rotate-secret"),
        ("GET", f"/v1/webhooks/{hook['id']}/deliveries"),
        ("POST", f"/v1/webhooks/{hook['id']}/deliveries/{delivery.pk}/redeliver"),
        ("GET", f"/v1/audit?connection_id={cid}"),
        ("GET", f"/v1/audit/export?since=2000-01-01T00:00:00Z&connection_id={cid}"),
    ):
        response = stack.call(method, path, b)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"] == "not_found"
    assert ApiKey.objects.get(prefix=theirs["prefix"]).revoked_at is None
    assert WebhookEndpoint.objects.filter(pk=hook["id"]).exists()
    assert WebhookDelivery.objects.get(pk=delivery.pk).status == "failed"
    assert theirs["prefix"] not in stack.call("GET", "/v1/keys?include_revoked=true", b).text
    assert stack.call("GET", "/v1/webhooks", b).json() == {"results": []}
    b_log = stack.call("GET", "/v1/audit", b).json()["results"]
    assert all(row["connection_id"] != cid for row in b_log)
    export = stack.call("GET", "/v1/audit/export?since=2000-01-01T00:00:00Z", b)
    assert cid not in export.text and "ws-a" not in export.text


def test_webhook_lifecycle(stack, fake_provider, fake_provider_row):
    key = admin(stack)
    created = stack.call(
        "POST", "/v1/webhooks", key, json={"url": "https://hooks.example.com/in", "events": ["connection.revoked"]}
    )
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["connection.revoked"]
    endpoint = WebhookEndpoint.objects.get(pk=hook["id"])
    assert endpoint.workspace == "ws-a" and endpoint_secret(endpoint) == hook["secret"]
    assert hook["secret"] not in endpoint.secret_enc

    listing = stack.call("GET", "/v1/webhooks", key)
    assert listing.json()["results"][0]["id"] == hook["id"] and hook["secret"] not in listing.text
    assert "secret" not in listing.json()["results"][0]

    rotated = stack.call("POST", f"/v1/webhooks/{hook['id']}/rotate-secret", key)
    assert rotated.status_code == 200 and rotated.headers["Cache-Control"].startswith("no-store")
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != hook["secret"]
    endpoint.refresh_from_db()
    assert endpoint_secret(endpoint) == new_secret
    body = b'{"x":1}'
    assert verify_signature(new_secret, sign(endpoint_secret(endpoint), body), body)
    assert not verify_signature(hook["secret"], sign(endpoint_secret(endpoint), body), body)

    cid = connect(stack, fake_provider, key)
    failed = WebhookDelivery.objects.create(
        endpoint=endpoint, event="connection.revoked", connection_id=cid, payload={}, status="failed", attempts=5
    )
    delivered = WebhookDelivery.objects.create(
        endpoint=endpoint, event="connection.revoked", connection_id=cid, payload={}, status="delivered"
    )
    page = stack.call("GET", f"/v1/webhooks/{hook['id']}/deliveries?status=failed", key).json()
    assert [d["id"] for d in page["results"]] == [str(failed.pk)] and page["count"] == 1
    again = stack.call("POST", f"/v1/webhooks/{hook['id']}/deliveries/{failed.pk}/redeliver", key)
    assert again.status_code == 202, again.text
    failed.refresh_from_db()  # queued again from scratch (no worker runs in this test)
    assert (failed.status, failed.attempts) == ("pending", 0)
    assert again.json()["status"] == "pending" and again.json()["attempts"] == 0
    refused = stack.call("POST", f"/v1/webhooks/{hook['id']}/deliveries/{delivered.pk}/redeliver", key)
    assert refused.status_code == 409 and refused.json()["error"] == "conflict"
    unknown = stack.call("POST", f"/v1/webhooks/{hook['id']}/deliveries/{uuid.uuid4()}/redeliver", key)
    assert unknown.status_code == 404

    actions = set(AuditEvent.objects.filter(workspace="ws-a", connection_id="").values_list("action", flat=True))
    assert {"webhook.created", "webhook.secret_rotated", "webhook.redelivered"} <= actions

    deleted = stack.call("DELETE", f"/v1/webhooks/{hook['id']}", key)
    assert deleted.status_code == 200 and not WebhookEndpoint.objects.filter(pk=hook["id"]).exists()
    assert stack.call("DELETE", f"/v1/webhooks/{hook['id']}", key).status_code == 404


def test_bad_webhook_inputs(stack):
    key = admin(stack)
    for body in (
        {"url": "ftp://x.example.com"},
        {"url": "http://plain.example.com/hook"},
        {"url": "https://user:pw@x.example.com/"},
        {"url": "https://x.example.com/", "events": ["connection.exploded"]},
        {},
    ):
        response = stack.call("POST", "/v1/webhooks", key, json=body)
        assert response.status_code == 400, (body, response.text)
    assert stack.call("POST", "/v1/webhooks", key, json={"url": "https://x.example.com/"}).status_code == 201
    assert stack.call("POST", "/v1/webhooks", key, json={"url": "https://x.example.com/"}).status_code == 400
    assert stack.call("DELETE", "/v1/webhooks/not-a-uuid", key).status_code == 400
    assert WebhookEndpoint.objects.count() == 1


def test_audit_log_filters_pages_and_exports(stack, fake_provider, fake_provider_row):
    key = admin(stack)
    prefix = key.split("_")[1]
    cid = connect(stack, fake_provider, key)
    other = connect(stack, fake_provider, key, user_id="user-2")
    for _ in range(3):
        assert stack.call("GET", f"/v1/token/{cid}", key).status_code == 200
    AuditEvent.objects.create(
        connection_id=cid, workspace="ws-a", actor="system", action="token.refreshed", detail={"old": True}
    )
    AuditEvent.objects.filter(workspace="ws-a", action="token.refreshed").update(
        created_at=timezone.now() - timedelta(days=3)
    )

    everything = stack.call("GET", "/v1/audit", key).json()
    assert {row["connection_id"] for row in everything["results"]} >= {cid, other}
    ids = [row["id"] for row in everything["results"]]
    assert ids == sorted(ids, reverse=True)

    reads = stack.call("GET", f"/v1/audit?connection_id={cid}&action=token.read", key).json()
    assert len(reads["results"]) == 3 and {r["actor"] for r in reads["results"]} == {f"apikey:{prefix}"}
    assert "token.refreshed" in {
        r["action"] for r in stack.call("GET", "/v1/audit?actor=system", key).json()["results"]
    }
    since = (timezone.now() - timedelta(days=1)).isoformat()
    recent = stack.call("GET", "/v1/audit", key, params={"since": since, "connection_id": cid}).json()
    assert "token.refreshed" not in {r["action"] for r in recent["results"]}
    old = stack.call("GET", "/v1/audit", key, params={"until": since}).json()
    assert [r["action"] for r in old["results"]] == ["token.refreshed"]

    page = stack.call("GET", "/v1/audit?limit=2", key).json()
    seen = [row["id"] for row in page["results"]]
    while page["next"]:
        page = stack.call("GET", "/v1/" + page["next"].split("/v1/", 1)[1], key).json()
        seen += [row["id"] for row in page["results"]]
    assert seen == ids and len(set(seen)) == len(seen)

    export = stack.call("GET", "/v1/audit/export", key, params={"since": "2000-01-01", "connection_id": cid})
    assert export.status_code == 200 and export.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert len(lines) >= 5 and {line["connection_id"] for line in lines} == {cid}
    assert [line["created_at"] for line in lines] == sorted(line["created_at"] for line in lines)  # oldest first
    assert lines[0]["action"] == "token.refreshed"  # the backdated row
    assert {"token.read", "token.refreshed", "connection.activated"} <= {line["action"] for line in lines}

    for query in (
        "/v1/audit/export",  # since is required
        "/v1/audit?since=yesterday",
        "/v1/audit?limit=0",
        "/v1/audit?cursor=abc",
        "/v1/audit?connection_id=../etc",
        "/v1/audit?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
    ):
        response = stack.call("GET", query, key)
        assert response.status_code == 400, (query, response.text)


def test_workspace_provider_inputs_are_checked_before_the_broker(stack, settings):
    settings.BROKER_INTERNAL_URL = "http://127.0.0.1:9"  # nothing listens: any broker call would be a 503
    from gateway_app import broker_client

    broker_client.reset()
    key = admin(stack)
    for name in ("-google", "go%20ogle", "x" * 65):
        assert stack.call("GET", f"/v1/workspace-providers/{name}", key).status_code == 400, name
    for body in (
        {"client_id": "c", "token_url": "https://evil.example/token"},  # endpoint URLs are the operator's
        {"client_id": "c", "discovery_url": "http://169.254.169.254/"},
        {"token_auth": "private_key_jwt"},
        {"default_scopes": ["has space"]},
        {"enabled": "perhaps"},
    ):
        response = stack.call("PUT", "/v1/workspace-providers/google", key, json=body)
        assert response.status_code == 400, (body, response.text)
        assert "evil" not in response.text
    limited = key_create_admin(stack, providers=["github"])
    for method in ("GET", "PUT", "DELETE"):
        response = stack.call(method, "/v1/workspace-providers/google", limited, json={} if method == "PUT" else None)
        assert response.status_code == 403, (method, response.text)
    # the broker is reached only for a well-formed call of a key allowed to make it
    assert stack.call("GET", "/v1/workspace-providers/github", limited).status_code == 503


def key_create_admin(stack, **restrictions) -> str:
    from gateway_app.restrictions import key_create

    return key_create(workspace="ws-a", name="admin", scopes=["admin"], **restrictions)[1]


def test_workspace_provider_crud_through_the_gateway(stack, fake_provider_row):
    """The broker side is per-workspace providers (broker_app/services/providers.py)."""
    a, b = admin(stack, "ws-a"), admin(stack, "ws-b")
    secret = "ws-secret-" + uuid.uuid4().hex
    created = stack.call(
        "PUT",
        "/v1/workspace-providers/google",
        a,
        json={"template": "google", "client_id": "ws-a-client", "client_secret": secret},
    )
    assert created.status_code == 201, created.text
    assert created.json()["client_secret_set"] is True and created.json()["shared"] is False
    read = stack.call("GET", "/v1/workspace-providers/google", a)
    listing = stack.call("GET", "/v1/workspace-providers", a)
    for answer in (created, read, listing):
        assert secret not in answer.text and 'client_secret"' not in answer.text
    names = {p["name"]: p["shared"] for p in listing.json()["providers"]}
    assert names["google"] is False and names["fake"] is True
    assert stack.call("GET", "/v1/workspace-providers/google", b).status_code == 404
    assert stack.call("DELETE", "/v1/workspace-providers/google", b).status_code == 404
    assert stack.call("PUT", "/v1/workspace-providers/google", a, json={"enabled": False}).status_code == 200
    deleted = stack.call("DELETE", "/v1/workspace-providers/google", a)
    assert deleted.status_code == 204 and deleted.content == b""
    assert stack.call("GET", "/v1/workspace-providers/google", a).status_code == 404


def test_webhooks_and_keys_stay_in_the_admin_keys_environment(stack):
    """Environments: a development admin key never sees production's webhooks, keys or audit rows."""
    from gateway_app.keys import apikey_create

    dev = apikey_create(workspace="ws-a", name="dev", scopes=["admin", "tokens:read"], environment="development")[1]
    prod = admin(stack, "ws-a")
    hook = stack.call("POST", "/v1/webhooks", dev, json={"url": "https://hooks.example.com/dev"}).json()
    assert WebhookEndpoint.objects.get(pk=hook["id"]).environment == "development"
    assert stack.call("GET", "/v1/webhooks", prod).json() == {"results": []}
    assert stack.call("POST", f"/v1/webhooks/{hook['id']}/rotate-secret", prod).status_code == 404
    minted = stack.call("POST", "/v1/keys", dev, json={"name": "run", "expires_in": 600}).json()
    assert ApiKey.objects.get(prefix=minted["prefix"]).environment == "development"
    assert stack.call("GET", f"/v1/keys/{minted['prefix']}", prod).status_code == 404
    assert minted["prefix"] not in stack.call("GET", "/v1/keys", prod).text
    dev_log = stack.call("GET", "/v1/audit", dev).json()["results"]
    assert {"webhook.created", "webhook.secret_rotated"} & {row["action"] for row in dev_log}
    prod_log = stack.call("GET", "/v1/audit", prod).json()["results"]
    assert not {"webhook.created", "webhook.secret_rotated"} & {row["action"] for row in prod_log}
    assert hook["id"] not in stack.call("GET", "/v1/audit/export?since=2000-01-01", prod).text
