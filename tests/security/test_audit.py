"""The audit trail: every token read and every state change, with who (workspace and API
key prefix, or admin user, or the system), what, when and from which address; readable
(never writable) in the admin; never holding a token. Driven over real HTTP (gateway →
broker), the admin through Django's test client as a logged-in superuser."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from fake_provider import respond

from broker_app import crypto
from broker_app.models import AuditEvent, Connection
from broker_app.services.sweep import refresh_one
from tests.conftest import auth_params, connect, start_connection

pytestmark = pytest.mark.django_db(transaction=True)


def prefix_of(key: str) -> str:
    return key.split("_")[1]


def events(cid: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(connection_id=cid).order_by("id"))


def tokens_of(cid: str) -> list[str]:
    row = Connection.objects.get(pk=cid)
    values = [
        crypto.decrypt(getattr(row, f"{name}_enc"), aad=row.aad(name))
        for name in ("access_token", "refresh_token", "id_token")
    ]
    return [value for value in values if value]


class _Task:
    def retry(self, countdown, **_):
        return RuntimeError("retry")


@pytest.fixture
def superuser_client():
    admin = User.objects.create_superuser("auditor", "auditor@example.test", "pw-not-used")
    client = Client(REMOTE_ADDR="10.0.0.7")
    client.force_login(admin)
    return client


def test_every_token_read_and_state_change_is_recorded_with_who_what_when_where(
    stack, fake_provider, fake_provider_row
):
    key = stack.key("ws-audit")
    before = timezone.now()
    cid = connect(stack, fake_provider, key)
    seen = []
    for method, path in (
        ("GET", f"/v1/token/{cid}"),
        ("GET", f"/v1/token/{cid}?auto_refresh=true"),
        ("POST", f"/v1/refresh/{cid}"),
        ("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=86400"),
        ("DELETE", f"/v1/connections/{cid}"),
    ):
        if "min_ttl=86400" in path:  # past the coalescing window of the refresh just before
            Connection.objects.filter(pk=cid).update(last_refreshed_at=timezone.now() - timedelta(seconds=30))
        response = stack.call(method, path, key)
        assert response.status_code == 200, (path, response.text)
        if "access_token" in response.json():
            seen.append(response.json()["access_token"])
    actions = [(e.action, e.actor) for e in events(cid)]
    agent = f"apikey:{prefix_of(key)}"
    # Every call that hands out a token leaves exactly one event: `token.read`, or
    # `token.refreshed` when the token it handed out was refreshed for that call.
    assert actions == [
        ("connection.requested", agent),
        ("connection.activated", "system"),
        ("token.read", agent),
        ("token.read", agent),  # auto_refresh, token still fresh
        ("token.refreshed", agent),  # POST /v1/refresh
        ("token.refreshed", agent),  # auto_refresh with min_ttl above the token's lifetime
        ("connection.revoked", agent),
    ], actions
    assert len(seen) == 4
    for event in events(cid):
        assert event.workspace == "ws-audit"
        assert before - timedelta(seconds=1) <= event.created_at <= timezone.now()
        if event.actor.startswith("apikey:"):
            assert event.ip == "127.0.0.1"  # the agent's address, as the gateway saw it
    # A token read is recorded even when the token is served from the cache-free fast path;
    # and a read of another workspace's connection records nothing (it is a 404).
    other = stack.key("ws-other")
    assert stack.call("GET", f"/v1/token/{cid}", other).status_code == 404
    assert not AuditEvent.objects.filter(actor=f"apikey:{prefix_of(other)}").exists()
    flat = str(list(AuditEvent.objects.values()))
    for token in seen:
        assert token not in flat


def test_failed_consent_and_failed_refresh_are_recorded(stack, fake_provider, fake_provider_row):
    key = stack.key()
    started = start_connection(stack, key)
    params = auth_params(started["authUrl"])
    response = stack.callback(state=params["state"], error="access_denied", error_description="no")
    assert response.status_code == 302
    failed = events(started["connection_id"])[-1]
    assert (failed.action, failed.actor, failed.detail) == ("connection.failed", "system", {"error": "access_denied"})

    cid = connect(stack, fake_provider, key)
    fake_provider.script(respond(400, {"error": "invalid_grant"}))
    assert stack.call("POST", f"/v1/refresh/{cid}", key).status_code == 409
    last = events(cid)[-1]
    assert last.action == "connection.failed" and last.actor == f"apikey:{prefix_of(key)}"
    assert last.ip == "127.0.0.1" and last.detail["error"] == "invalid_grant"


def test_background_refresh_is_recorded_as_the_sweep(stack, fake_provider, fake_provider_row):
    cid = connect(stack, fake_provider, stack.key())
    now = timezone.now()  # the token looks an hour old with 30 s left: due
    Connection.objects.filter(pk=cid).update(
        expires_at=now + timedelta(seconds=30),
        last_refreshed_at=now - timedelta(seconds=3570),
        last_read_at=now - timedelta(seconds=3560),  # read since: in use
        next_refresh_attempt_at=None,
    )
    assert refresh_one(task=_Task(), connection_id=cid) == "success"
    last = events(cid)[-1]
    assert (last.action, last.actor, last.ip) == ("token.refreshed", "system:refresh-sweep", None)


def test_agents_cannot_forge_who_or_where(stack, fake_provider, fake_provider_row):
    """The gateway names the actor, workspace and address itself; headers an agent sends
    to look like another key, workspace or address are ignored."""
    key = stack.key("ws-a")
    cid = connect(stack, fake_provider, key)
    forged = {
        "X-Dromos-Actor": "admin:root",
        "X-Dromos-Workspace": "ws-b",
        "X-Dromos-Client-IP": "6.6.6.6",
        "X-Forwarded-For": "6.6.6.6",
        "X-Real-IP": "6.6.6.6",
    }
    assert stack.call("GET", f"/v1/token/{cid}", key, headers=forged).status_code == 200
    read = events(cid)[-1]
    assert (read.action, read.actor, read.workspace, read.ip) == (
        "token.read",
        f"apikey:{prefix_of(key)}",
        "ws-a",
        "127.0.0.1",
    )


def test_direct_broker_calls_are_recorded_as_the_broker_api(stack, fake_provider, fake_provider_row):
    cid = connect(stack, fake_provider, stack.key("ws-a"))
    response = stack.broker("GET", f"/internal/v1/connections/{cid}/token", headers={"X-Dromos-Workspace": "ws-a"})
    assert response.status_code == 200
    read = events(cid)[-1]
    assert (read.action, read.actor, read.ip) == ("token.read", "broker-api", "127.0.0.1")


def test_admin_operations_are_recorded_as_the_admin_user(stack, fake_provider, fake_provider_row, superuser_client):
    cid = connect(stack, fake_provider, stack.key())
    for operation, action in (("refresh", "token.refreshed"), ("revoke", "connection.revoked")):
        response = superuser_client.post(f"/admin/broker_app/connection/{quote(cid)}/{operation}/")
        assert response.status_code == 302
        last = events(cid)[-1]
        assert (last.action, last.actor, last.ip) == (action, "admin:auditor", "10.0.0.7")


def test_admin_buttons_work_for_ids_the_admin_must_quote(stack, fake_provider, fake_provider_row, superuser_client):
    """Connection ids hold "_"; the admin writes "_" as "_5F" in its URLs and reads "_3A" as
    ":". The buttons and the redirect after them quote the id, so an id such as c_x_3Ay… opens
    its own page again (not "doesn't exist")."""
    import re

    cid = connect(stack, fake_provider, stack.key())
    tricky = "c_x_3Ay" + cid[7:]
    Connection.objects.filter(pk=cid).update(id=tricky)
    page = superuser_client.get(f"/admin/broker_app/connection/{quote(tricky)}/change/")
    assert page.status_code == 200 and tricky in page.content.decode()
    action = re.search(r'action="([^"]+/refresh/)"', page.content.decode()).group(1)
    assert action == f"/admin/broker_app/connection/{quote(tricky)}/refresh/"
    done = superuser_client.post(action, follow=True)
    assert done.redirect_chain[-1][0] == f"/admin/broker_app/connection/{quote(tricky)}/change/"
    # (The refresh itself fails here: the ciphertexts stay bound to the id they were stored under.)
    assert done.status_code == 200 and tricky in done.content.decode() and "doesn" not in done.content.decode()


def test_audit_log_is_readable_in_the_admin_and_cannot_be_edited(
    stack, fake_provider, fake_provider_row, superuser_client
):
    key = stack.key("ws-admin")
    cid = connect(stack, fake_provider, key)
    served = stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"]
    listing = superuser_client.get("/admin/broker_app/auditevent/")
    assert listing.status_code == 200
    page = listing.content.decode()
    for text in ("token.read", "connection.activated", cid, "ws-admin", f"apikey:{prefix_of(key)}", "127.0.0.1"):
        assert text in page, text
    # Filter by connection, open one event: read-only.
    assert cid in superuser_client.get(f"/admin/broker_app/auditevent/?q={cid}").content.decode()
    read = events(cid)[-1]
    detail = superuser_client.get(f"/admin/broker_app/auditevent/{read.pk}/change/")
    assert detail.status_code == 200 and "token.read" in detail.content.decode()
    assert 'name="_save"' not in detail.content.decode()
    assert superuser_client.post(f"/admin/broker_app/auditevent/{read.pk}/change/", {"action": "x"}).status_code == 403
    assert superuser_client.get("/admin/broker_app/auditevent/add/").status_code == 403
    assert superuser_client.post(f"/admin/broker_app/auditevent/{read.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=read.pk, action="token.read").exists()
    # The connection page shows its trail too.
    trail = superuser_client.get(f"/admin/broker_app/connection/{quote(cid)}/change/").content.decode()
    assert "audit-trail" in trail and "token.read" in trail
    for html in (page, detail.content.decode(), trail):
        assert served not in html
        for token in tokens_of(cid):
            assert token not in html


def test_audit_rows_never_hold_a_token(stack, fake_provider, fake_provider_row):
    key = stack.key()
    cid = connect(stack, fake_provider, key)
    values = set(tokens_of(cid))
    values.add(stack.call("POST", f"/v1/refresh/{cid}", key).json()["access_token"])
    values.update(tokens_of(cid))
    stack.call("DELETE", f"/v1/connections/{cid}", key)
    rows = list(AuditEvent.objects.filter(connection_id=cid).values())
    assert len(rows) >= 4
    flat = str(rows)
    for value in values:
        assert value not in flat
    assert key.split("_", 2)[2] not in flat  # the key's secret part: only the prefix is recorded
