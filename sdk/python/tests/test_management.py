"""The management API calls (admin keys), on both clients: what goes on the wire and what
comes back."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from conftest import BASE_URL, MakeHarness
from dromos_sdk import APIError

KEY = {
    "prefix": "abcd1234",
    "name": "run-42",
    "scopes": ["tokens:read"],
    "providers": ["google"],
    "user_ids": ["u1"],
    "user_id_prefix": None,
    "allowed_cidrs": None,
    "egress_policy": None,
    "created_at": "2026-11-29T20:00:00Z",
    "last_used_at": None,
    "expires_at": "2026-11-29T21:00:00Z",
    "revoked_at": None,
    "minted_from": "admin123",
    "created_by": "admin123",
}
HOOK = "0f8fad5b-d9cb-469f-a165-70867728950e"
DELIVERY = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def test_create_key_sends_only_what_is_given(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(201, json={**KEY, "key": "dk_abcd1234_secret"}))
    created = h.call(
        "create_key",
        "run-42",
        scopes=["tokens:read"],
        providers=["google"],
        user_ids=["u1"],
        expires_in=3600,
    )
    assert created["key"] == "dk_abcd1234_secret" and created["minted_from"] == "admin123"
    assert h.gateway.last.method == "POST"
    assert str(h.gateway.last.url) == f"{BASE_URL}/v1/keys"
    assert h.gateway.body() == {
        "name": "run-42",
        "scopes": ["tokens:read"],
        "providers": ["google"],
        "user_ids": ["u1"],
        "expires_in": 3600,
    }


def test_create_key_with_an_expiry_date(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(201, json={**KEY, "key": "dk_x"}))
    h.call(
        "create_key", "k", expires_at=datetime(2027, 1, 1, tzinfo=UTC), allowed_cidrs=["10.0.0.0/8"]
    )
    assert h.gateway.body() == {
        "name": "k",
        "allowed_cidrs": ["10.0.0.0/8"],
        "expires_at": "2027-01-01T00:00:00+00:00",
    }


@pytest.mark.parametrize(
    ("method", "args", "verb", "path"),
    [
        ("get_key", ("abcd1234",), "GET", "/v1/keys/abcd1234"),
        ("revoke_key", ("abcd1234",), "DELETE", "/v1/keys/abcd1234"),
        ("delete_webhook", (HOOK,), "DELETE", f"/v1/webhooks/{HOOK}"),
        ("rotate_webhook_secret", (HOOK,), "POST", f"/v1/webhooks/{HOOK}/rotate-secret"),
        (
            "redeliver_webhook_delivery",
            (HOOK, DELIVERY),
            "POST",
            f"/v1/webhooks/{HOOK}/deliveries/{DELIVERY}/redeliver",
        ),
    ],
)
def test_id_calls(
    make_harness: MakeHarness, method: str, args: tuple[str, ...], verb: str, path: str
) -> None:
    h = make_harness(httpx.Response(200, json={"id": HOOK}))
    assert h.call(method, *args) == {"id": HOOK}
    assert h.gateway.last.method == verb and str(h.gateway.last.url) == BASE_URL + path


def test_list_calls_send_their_filters(make_harness: MakeHarness) -> None:
    page = {"count": 1, "next": None, "previous": None, "results": [KEY]}
    h = make_harness(httpx.Response(200, json=page))
    assert (
        h.call("list_keys", include_revoked=True, page_size=10)["results"][0]["prefix"]
        == "abcd1234"
    )
    assert dict(h.gateway.last.url.params) == {"include_revoked": "true", "page_size": "10"}

    h = make_harness(
        httpx.Response(200, json={"count": 0, "next": None, "previous": None, "results": []})
    )
    h.call("list_webhook_deliveries", HOOK, status="failed")
    assert h.gateway.last.url.path == f"/v1/webhooks/{HOOK}/deliveries"
    assert dict(h.gateway.last.url.params) == {"status": "failed"}

    h = make_harness(httpx.Response(200, json={"next": None, "results": []}))
    h.call(
        "list_audit_events", connection_id="c_1", action="token.read", since="2026-11-01", limit=5
    )
    assert dict(h.gateway.last.url.params) == {
        "connection_id": "c_1",
        "action": "token.read",
        "since": "2026-11-01",
        "limit": "5",
    }


def test_webhooks(make_harness: MakeHarness) -> None:
    hook = {
        "id": HOOK,
        "url": "https://hooks.example/x",
        "events": [],
        "enabled": True,
        "created_at": "2026-11-29T20:00:00Z",
        "updated_at": "2026-11-29T20:00:00Z",
    }
    h = make_harness(httpx.Response(201, json={**hook, "secret": "whsec_1"}))
    assert (
        h.call("create_webhook", "https://hooks.example/x", ["connection.revoked"])["secret"]
        == "whsec_1"
    )
    assert h.gateway.body() == {"url": "https://hooks.example/x", "events": ["connection.revoked"]}
    h = make_harness(httpx.Response(200, json={"results": [hook]}))
    assert h.call("list_webhooks") == [hook]


def test_audit_export_reads_ndjson(make_harness: MakeHarness) -> None:
    lines = '{"id":1,"action":"token.read"}\n{"id":2,"action":"token.refreshed"}\n'
    answer = httpx.Response(200, text=lines, headers={"Content-Type": "application/x-ndjson"})
    h = make_harness(answer)
    rows = h.call("export_audit_events", datetime(2026, 11, 1, tzinfo=UTC), actor="system")
    assert [row["action"] for row in rows] == ["token.read", "token.refreshed"]
    assert dict(h.gateway.last.url.params) == {
        "since": "2026-11-01T00:00:00+00:00",
        "actor": "system",
    }


def test_a_non_admin_key_gets_a_403(make_harness: MakeHarness) -> None:
    body = {
        "error": "forbidden",
        "message": "This API key is not allowed to perform this operation.",
    }
    h = make_harness(httpx.Response(403, json=body))
    with pytest.raises(APIError) as caught:
        h.call("list_keys")
    assert caught.value.status_code == 403 and caught.value.code == "forbidden"


def test_workspace_providers(make_harness: MakeHarness) -> None:
    row = {"name": "google", "shared": False, "client_id": "c", "client_secret_set": True}
    h = make_harness(httpx.Response(201, json=row))
    assert h.call("upsert_workspace_provider", "google", client_id="c", client_secret="s") == row
    assert h.gateway.last.method == "PUT"
    assert h.gateway.last.url.path == "/v1/workspace-providers/google"
    assert h.gateway.body() == {"client_id": "c", "client_secret": "s"}
    h = make_harness(httpx.Response(200, json={"providers": [row]}))
    assert h.call("list_workspace_providers") == [row]
    h = make_harness(httpx.Response(200, json=row))
    assert h.call("get_workspace_provider", "google") == row
    h = make_harness(httpx.Response(204))
    assert h.call("delete_workspace_provider", "google") is None
    assert h.gateway.last.method == "DELETE"
