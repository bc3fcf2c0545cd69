"""The admin by workspace and environment (issue 19): columns and filters, and a staff user
limited to some workspaces sees, opens and acts on only their rows (another workspace's
object by its direct URL: 404)."""

from __future__ import annotations

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.test import Client

from broker_app.audit import SYSTEM, audit_record
from broker_app.models import AuditEvent, CachedDocument, Connection, Provider, StaffWorkspace, WebhookEndpoint
from broker_app.providers.registry import set_client_secret
from broker_app.webhooks import webhook_endpoint_create

pytestmark = pytest.mark.django_db

SECRETS = {"ws-a": "client-secret-of-ws-a-0123456789", "ws-b": "client-secret-of-ws-b-0123456789"}


def _provider(workspace: str, environment: str = "production") -> Provider:
    provider = Provider(
        name="google",
        template="google",
        client_id=f"{workspace or 'shared'}.apps.googleusercontent.com",
        workspace=workspace,
        environment=environment if workspace else "",
    )
    set_client_secret(provider, SECRETS.get(workspace, "shared-secret-0123456789"))
    provider.save()
    return provider


@pytest.fixture
def rows(settings):
    settings.WEBHOOK_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    providers = {ws: _provider(ws) for ws in ("", "ws-a", "ws-b")}
    connections = {}
    for ws, env in (("ws-a", "production"), ("ws-a", "development"), ("ws-b", "production")):
        connection = Connection.objects.create(
            workspace=ws, environment=env, user_id=f"user-{ws}-{env}", provider=providers[ws], return_url="https://x"
        )
        connections[(ws, env)] = connection
        audit_record(connection_id=connection.id, workspace=ws, actor=SYSTEM, action=f"test.{ws}")
    hooks = {ws: webhook_endpoint_create(workspace=ws, url=f"http://127.0.0.1:9/{ws}")[0] for ws in ("ws-a", "ws-b")}
    return providers, connections, hooks


def _staff(username: str, *workspaces: str, all_workspaces: bool = False) -> Client:
    user = User.objects.create_user(username, f"{username}@example.test", "pw-not-used", is_staff=True)
    codenames = [
        f"{action}_{model}"
        for model in ("connection", "provider", "auditevent", "webhookendpoint", "webhookdelivery", "cacheddocument")
        for action in ("view", "change")
    ]
    if all_workspaces:
        codenames.append("view_all_workspaces")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="broker_app", codename__in=codenames))
    for workspace in workspaces:
        StaffWorkspace.objects.create(user=user, workspace=workspace)
    client = Client()
    client.force_login(user)
    return client


def _change(model: str, pk) -> str:
    return f"/admin/broker_app/{model}/{quote(pk)}/change/"


def test_a_staff_user_limited_to_a_workspace_sees_only_its_rows(rows):
    providers, connections, hooks = rows
    alice = _staff("alice", "ws-a")
    own = [c for (ws, _), c in connections.items() if ws == "ws-a"]
    other = connections[("ws-b", "production")]

    listing = alice.get("/admin/broker_app/connection/").content.decode()
    assert all(c.id in listing for c in own) and other.id not in listing
    # Filtering by the other workspace by hand finds nothing of it either.
    assert other.id not in alice.get("/admin/broker_app/connection/?workspace=ws-b").content.decode()
    # Its own environment filter works.
    dev = alice.get("/admin/broker_app/connection/?environment__exact=development").content.decode()
    assert connections[("ws-a", "development")].id in dev and connections[("ws-a", "production")].id not in dev

    for connection in own:
        assert alice.get(_change("connection", connection.pk)).status_code == 200
    # Another workspace's objects by their direct URL: 404, and the buttons do nothing.
    assert alice.get(_change("connection", other.pk)).status_code == 404
    for operation in ("refresh", "revoke"):
        assert alice.post(f"/admin/broker_app/connection/{quote(other.pk)}/{operation}/").status_code == 404
    assert Connection.objects.get(pk=other.pk).status == "pending"
    # The list action with another workspace's id selected acts on none of it.
    alice.post(
        "/admin/broker_app/connection/", {"action": "revoke", "_selected_action": [other.pk], "index": 0}, follow=True
    )
    assert Connection.objects.get(pk=other.pk).status == "pending"

    # Providers: its workspace's own only (the shared ones are the operator's).
    provider_list = alice.get("/admin/broker_app/provider/").content.decode()
    assert "ws-a.apps.googleusercontent.com" in provider_list
    assert "ws-b.apps" not in provider_list and "shared.apps" not in provider_list
    assert alice.get(_change("provider", providers["ws-a"].pk)).status_code == 200
    assert alice.get(_change("provider", providers["ws-b"].pk)).status_code == 404
    assert alice.get(_change("provider", providers[""].pk)).status_code == 404
    assert alice.get("/admin/broker_app/provider/add/").status_code == 403
    # The owner and the URLs the broker fetches are not theirs to change.
    page = alice.get(_change("provider", providers["ws-a"].pk)).content.decode()
    assert 'name="workspace"' not in page and 'name="token_url"' not in page and 'name="client_id"' in page
    # The connection list's provider filter names no other workspace's app.
    assert "ws-b/production" not in listing

    # Audit, webhooks, deliveries: the same rule.
    audit = alice.get("/admin/broker_app/auditevent/").content.decode()
    assert "test.ws-a" in audit and "test.ws-b" not in audit
    other_event = AuditEvent.objects.get(action="test.ws-b")
    assert alice.get(_change("auditevent", other_event.pk)).status_code == 404
    hooks_page = alice.get("/admin/broker_app/webhookendpoint/").content.decode()
    assert "127.0.0.1:9/ws-a" in hooks_page and "127.0.0.1:9/ws-b" not in hooks_page
    assert alice.get(_change("webhookendpoint", hooks["ws-b"].pk)).status_code == 404
    assert alice.get(_change("webhookendpoint", hooks["ws-a"].pk)).status_code == 200
    # Operator-wide rows are not shown to a limited user at all.
    doc = CachedDocument.objects.create(
        url="https://idp.example/x", body={}, fetched_at="2026-01-01T00:00:00Z", expires_at="2026-01-01T00:00:00Z"
    )
    assert alice.get("/admin/broker_app/cacheddocument/").status_code == 403
    assert alice.get(_change("cacheddocument", doc.pk)).status_code == 403
    assert alice.get("/admin/broker_app/staffworkspace/").status_code == 403
    index = alice.get("/admin/").content.decode()
    assert "Cached documents" not in index and "Staff workspaces" not in index


def test_staff_without_a_workspace_sees_none_and_view_all_sees_every_one(rows):
    _providers, connections, _hooks = rows
    nobody = _staff("nobody")
    listing = nobody.get("/admin/broker_app/connection/").content.decode()
    assert not any(c.id in listing for c in connections.values())
    assert nobody.get(_change("connection", connections[("ws-a", "production")].pk)).status_code == 404
    everyone = _staff("ops", all_workspaces=True)
    listing = everyone.get("/admin/broker_app/connection/").content.decode()
    assert all(c.id in listing for c in connections.values())
    two = _staff("two", "ws-a", "ws-b")
    listing = two.get("/admin/broker_app/connection/").content.decode()
    assert all(c.id in listing for c in connections.values())


def test_the_admin_shows_and_filters_by_workspace_and_environment_and_never_a_secret(rows):
    providers, connections, hooks = rows
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.test", "pw-not-used"))
    pages = {
        url: admin.get(url)
        for url in (
            "/admin/broker_app/connection/",
            "/admin/broker_app/connection/?environment__exact=production&workspace=ws-a",
            "/admin/broker_app/provider/",
            "/admin/broker_app/provider/?workspace=ws-b",
            "/admin/broker_app/webhookendpoint/?environment__exact=production",
            *(_change("provider", p.pk) for p in providers.values()),
            *(_change("connection", c.pk) for c in connections.values()),
        )
    }
    assert all(r.status_code == 200 for r in pages.values()), {u: r.status_code for u, r in pages.items()}
    filtered = pages["/admin/broker_app/connection/?environment__exact=production&workspace=ws-a"].content.decode()
    assert connections[("ws-a", "production")].id in filtered
    assert connections[("ws-a", "development")].id not in filtered
    assert connections[("ws-b", "production")].id not in filtered
    providers_page = pages["/admin/broker_app/provider/"].content.decode()
    assert "(shared)" in providers_page and "ws-a" in providers_page
    assert "shared.apps" not in pages["/admin/broker_app/provider/?workspace=ws-b"].content.decode()
    assert "development" in pages[_change("connection", connections[("ws-a", "development")].pk)].content.decode()
    for url, response in pages.items():
        body = response.content.decode()
        for secret in (*SECRETS.values(), "shared-secret-0123456789"):
            assert secret not in body, url
    assert WebhookEndpoint.objects.count() == 2
