"""Narrow keys and minted keys (issue 19): a key limited to providers, user_ids (or a
prefix), source networks, an expiry date and an egress policy is refused outside them
before the broker does anything for the request; a key minted from an admin key never holds
more than its parent and dies with it."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone

from broker_app.models import AuditEvent, Connection
from gateway_app.keys import _revoked_marker, apikey_create
from gateway_app.models import ApiKey
from gateway_app.restrictions import key_create
from tests.conftest import connect

pytestmark = pytest.mark.django_db(transaction=True)

RETURN = "https://app.example.com/oauth/return"


def narrow(**restrictions) -> str:
    return key_create(workspace="ws-a", name="narrow", **restrictions)[1]


def request_connection(stack, key, user_id="user-1", provider="fake"):
    return stack.call(
        "POST",
        "/v1/request-connection",
        key,
        json={"user_id": user_id, "provider_name": provider, "scopes": ["openid"], "return_url": RETURN},
    )


def reads_of(cid: str) -> int:
    return AuditEvent.objects.filter(connection_id=cid, action="token.read").count()


@pytest.fixture
def two_users(stack, fake_provider, fake_provider_row):
    full = stack.key("ws-a")
    mine = connect(stack, fake_provider, full, user_id="team-1:alice")
    theirs = connect(stack, fake_provider, full, user_id="team-2:bob")
    return mine, theirs


def test_a_key_limited_to_users_sees_only_their_connections(stack, two_users):
    mine, theirs = two_users
    for key in (narrow(user_ids=["team-1:alice"]), narrow(user_id_prefix="team-1:")):
        assert stack.call("GET", f"/v1/token/{mine}", key).status_code == 200
        assert stack.call("GET", f"/v1/check-connection/{mine}", key).json()["user_id"] == "team-1:alice"
        before = reads_of(theirs)
        # Another user's connection is answered as if it did not exist (its existence must not
        # leak), and nothing happens to it: no token read, no refresh, no revocation.
        for method, path in (
            ("GET", f"/v1/token/{theirs}"),
            ("GET", f"/v1/check-connection/{theirs}"),
            ("POST", f"/v1/refresh/{theirs}"),
            ("DELETE", f"/v1/connections/{theirs}"),
            ("GET", f"/v1/proxy/{theirs}/userinfo"),
            ("PUT", f"/v1/connections/{theirs}/credentials"),
            ("POST", f"/v1/connections/{theirs}/reconnect"),
        ):
            response = stack.call(method, path, key)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"] == "not_found"
        assert reads_of(theirs) == before and Connection.objects.get(pk=theirs).status == "active"
        # What the request names itself is refused with 403, before the broker is called.
        refused = request_connection(stack, key, user_id="team-2:bob")
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        assert "user_id" in refused.json()["message"]
        assert request_connection(stack, key, user_id="team-1:alice").status_code == 201
        assert stack.call("GET", "/v1/connections", key).status_code == 403  # must filter by its user
        assert stack.call("GET", "/v1/connections?user_id=team-2:bob", key).status_code == 403
        listed = stack.call("GET", "/v1/connections?user_id=team-1:alice", key)
        assert listed.status_code == 200 and {c["user_id"] for c in listed.json()["results"]} == {"team-1:alice"}
        session = stack.call("POST", "/v1/connect-sessions", key, json={"user_id": "team-2:bob", "return_url": RETURN})
        assert session.status_code == 403
        reconnect_other = stack.call(
            "POST", "/v1/connect-sessions", key, json={"reconnect": theirs, "return_url": RETURN}
        )
        assert reconnect_other.status_code == 404
    assert not Connection.objects.filter(user_id="team-2:bob").exclude(pk=theirs).exists()


def test_a_key_limited_to_providers(stack, two_users):
    mine, _ = two_users
    other = narrow(providers=["github"])
    before = reads_of(mine)
    assert stack.call("GET", f"/v1/token/{mine}", other).status_code == 404
    assert stack.call("GET", f"/v1/proxy/{mine}/userinfo", other).status_code == 404
    assert reads_of(mine) == before
    refused = request_connection(stack, other, provider="fake")
    assert refused.status_code == 403 and "provider" in refused.json()["message"]
    assert stack.call("GET", "/v1/connections?provider_name=fake", other).status_code == 403
    assert stack.call("GET", "/v1/connections?provider_name=GitHub", other).status_code == 200
    offered = stack.call(
        "POST",
        "/v1/connect-sessions",
        other,
        json={"user_id": "u", "return_url": RETURN, "allowed_providers": ["fake"]},
    )
    assert offered.status_code == 403
    same = narrow(providers=["FAKE"])  # names compare case-insensitively
    assert stack.call("GET", f"/v1/token/{mine}", same).status_code == 200


def test_a_key_limited_to_networks(stack, two_users):
    mine, _ = two_users
    elsewhere = narrow(cidrs=["10.0.0.0/8", "2001:db8::/32"])
    before = reads_of(mine)
    for method, path in (("GET", f"/v1/token/{mine}"), ("GET", "/v1/providers"), ("GET", "/v1/connections")):
        response = stack.call(method, path, elsewhere)
        assert response.status_code == 403, response.text
        assert response.json()["message"] == "this API key is not allowed from this address"
    assert reads_of(mine) == before
    spoofed = stack.call("GET", "/v1/providers", elsewhere, headers={"X-Forwarded-For": "10.1.2.3"})
    assert spoofed.status_code == 403  # the TCP peer counts, never a forwarded-for header
    here = narrow(cidrs=["127.0.0.0/8"])
    assert stack.call("GET", f"/v1/token/{mine}", here).status_code == 200


def test_an_expired_key_is_401_even_when_cached(stack, two_users, settings):
    settings.API_KEY_CACHE_SECONDS = 300
    mine, _ = two_users
    soon = narrow(expires_at=timezone.now() + timedelta(seconds=2))
    assert stack.call("GET", f"/v1/token/{mine}", soon).status_code == 200  # cached now
    time.sleep(2.2)
    expired = stack.call("GET", f"/v1/token/{mine}", soon)
    assert expired.status_code == 401 and expired.json()["error"] == "unauthorized"
    _, past = apikey_create(workspace="ws-a", name="past")
    ApiKey.objects.filter(prefix=past.split("_")[1]).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert stack.call("GET", "/v1/providers", past).status_code == 401


def test_the_command_line_sets_restrictions(stack, fake_provider_row):
    out = io.StringIO()
    call_command(
        "apikey",
        "create",
        "--workspace",
        "ws-a",
        "--name",
        "cli",
        "--scope",
        "tokens:read",
        "--provider",
        "fake",
        "--user-id",
        "u1",
        "--user-id",
        "u2",
        "--user-id-prefix",
        "team-9:",
        "--cidr",
        "127.0.0.1/32",
        "--expires",
        "2099-01-01",
        "--allow",
        "fake GET /userinfo",
        stdout=out,
        stderr=io.StringIO(),
    )
    row = ApiKey.objects.get(prefix=out.getvalue().split("_")[1])
    assert row.allowed_providers == ["fake"] and row.allowed_user_ids == ["u1", "u2"]
    assert row.user_id_prefix == "team-9:" and row.allowed_cidrs == ["127.0.0.1/32"]
    assert row.expires_at.year == 2099 and row.egress_policy[0]["path"] == "/userinfo"
    listing = io.StringIO()
    call_command("apikey", "list", stdout=listing)
    assert "providers=fake" in listing.getvalue() and "cidrs=127.0.0.1/32" in listing.getvalue()
    from django.core.management.base import CommandError

    for flags in (["--cidr", "nope"], ["--expires", "yesterday"], ["--expires", "2001-01-01"], ["--provider", "a b"]):
        with pytest.raises(CommandError):
            call_command("apikey", "create", "--workspace", "ws-a", "--name", "bad", *flags, stdout=io.StringIO())
    assert not ApiKey.objects.filter(name="bad").exists()


# -- minted keys ---------------------------------------------------------------------------------------


def parent_key(**restrictions) -> str:
    return key_create(
        workspace="ws-a",
        name="admin",
        scopes=["admin", "tokens:read", "connections:read"],
        **restrictions,
    )[1]


def test_a_minted_key_never_asks_for_more_than_its_parent(stack, fake_provider_row):
    parent = parent_key(
        providers=["fake", "github"],
        user_id_prefix="team-1:",
        cidrs=["127.0.0.0/8"],
        expires_at=timezone.now() + timedelta(hours=2),
        egress_policy=["fake GET /userinfo*"],
    )
    before = ApiKey.objects.count()
    for extra, why in (
        ({"scopes": ["tokens:refresh"]}, "scopes"),
        ({"providers": ["fake", "slack"]}, "providers"),
        ({"providers": None}, "providers"),
        ({"user_id_prefix": "team-"}, "user"),
        ({"user_ids": ["team-2:bob"]}, "user"),
        ({"allowed_cidrs": ["0.0.0.0/0"]}, "cidrs"),
        ({"allowed_cidrs": ["::1/128"]}, "cidrs"),
        ({"expires_in": 3 * 3600}, "expire"),
        ({"egress_policy": ["fake * /userinfo"]}, "egress"),
        ({"egress_policy": ["* GET /userinfo"]}, "egress"),
        ({"egress_policy": ["fake GET /*"]}, "egress"),
    ):
        body = {
            "name": "run",
            "expires_in": 600,
            "providers": ["fake"],
            "user_id_prefix": "team-1:a",
            "allowed_cidrs": ["127.0.0.1/32"],
            **extra,
        }
        response = stack.call("POST", "/v1/keys", parent, json=body)
        assert response.status_code == 400, (extra, response.text)
        assert response.json()["error"] == "invalid_request" and why in response.json()["message"]
    assert ApiKey.objects.count() == before
    ok = stack.call(
        "POST",
        "/v1/keys",
        parent,
        json={
            "name": "run",
            "expires_in": 600,
            "providers": ["fake"],
            "user_ids": ["team-1:alice"],
            "allowed_cidrs": ["127.0.0.1/32"],
            "egress_policy": ["fake GET /userinfo/me"],
        },
    )
    assert ok.status_code == 201, ok.text
    minted = ok.json()
    assert minted["minted_from"] == parent.split("_")[1]
    assert minted["scopes"] == ["connections:read", "tokens:read"]  # the parent's, admin excepted
    assert minted["providers"] == ["fake"] and minted["user_ids"] == ["team-1:alice"]


def test_a_minted_key_works_for_one_run_and_dies_with_its_parent(stack, fake_provider, fake_provider_row, settings):
    settings.API_KEY_CACHE_SECONDS = 300
    full = stack.key("ws-a")
    cid = connect(stack, fake_provider, full, user_id="run-user")
    parent = parent_key()
    minted = stack.call(
        "POST", "/v1/keys", parent, json={"name": "run-42", "expires_in": 900, "user_ids": ["run-user"]}
    ).json()
    expires = timezone.datetime.fromisoformat(minted["expires_at"])
    assert timedelta(seconds=890) < expires - timezone.now() <= timedelta(seconds=900)
    assert stack.call("GET", f"/v1/token/{cid}", minted["key"]).status_code == 200  # cached now
    # a minted key is not an admin: it cannot mint in turn
    assert stack.call("POST", "/v1/keys", minted["key"], json={"name": "x", "expires_in": 60}).status_code == 403
    grandchild_parent = stack.call(
        "POST", "/v1/keys", parent, json={"name": "sub-admin", "expires_in": 900, "scopes": ["admin", "tokens:read"]}
    ).json()
    grandchild = stack.call(
        "POST", "/v1/keys", grandchild_parent["key"], json={"name": "leaf", "expires_in": 600}
    ).json()
    standalone = stack.call("POST", "/v1/keys", parent, json={"name": "service"}).json()  # no expires_in
    assert stack.call("GET", f"/v1/token/{cid}", grandchild["key"]).status_code == 200
    # revoking the parent revokes every key minted from it, cached ones included, and tells the
    # other gateway processes through each key's revocation marker
    revoked = stack.call("DELETE", f"/v1/keys/{parent.split('_')[1]}", parent)
    assert revoked.status_code == 200
    for prefix in (minted["prefix"], grandchild_parent["prefix"], grandchild["prefix"]):
        assert cache.get(_revoked_marker(prefix)) is True
    for key in (minted["key"], grandchild_parent["key"], grandchild["key"], parent):
        assert stack.call("GET", f"/v1/token/{cid}", key).status_code == 401
    # a key the parent created without expires_in is independent of it
    assert stack.call("GET", "/v1/providers", standalone["key"]).status_code == 200
    assert ApiKey.objects.filter(revoked_at__isnull=True, workspace="ws-a").count() == 2  # `full`, standalone


def test_a_minted_key_cannot_outlive_the_mint_window(stack):
    parent = parent_key()
    for seconds in (59, 7 * 86400 + 1, "soon", True):
        response = stack.call("POST", "/v1/keys", parent, json={"name": "x", "expires_in": seconds})
        assert response.status_code == 400, seconds


def test_a_key_limited_to_users_reads_only_their_connect_sessions(stack, fake_provider_row):
    full = stack.key("ws-a")
    sessions = {
        user: stack.call("POST", "/v1/connect-sessions", full, json={"user_id": user, "return_url": RETURN}).json()
        for user in ("team-1:alice", "team-2:bob")
    }
    key = narrow(user_id_prefix="team-1:")
    mine = stack.call("GET", f"/v1/connect-sessions/{sessions['team-1:alice']['session_id']}", key)
    assert mine.status_code == 200 and mine.json()["user_id"] == "team-1:alice"
    theirs = stack.call("GET", f"/v1/connect-sessions/{sessions['team-2:bob']['session_id']}", key)
    assert theirs.status_code == 404 and theirs.json()["error"] == "not_found"
    assert "team-2" not in theirs.text


def test_an_admin_key_limited_to_users_or_providers_cannot_read_the_workspace_wide_log(stack):
    for restriction in ({"user_id_prefix": "team-1:"}, {"providers": ["fake"]}):
        key = key_create(workspace="ws-a", name="narrow-admin", scopes=["admin"], **restriction)[1]
        for path in ("/v1/audit", "/v1/audit/export?since=2026-01-01", "/v1/webhooks"):
            response = stack.call("GET", path, key)
            assert response.status_code == 403, (restriction, path, response.text)
        assert stack.call("POST", "/v1/webhooks", key, json={"url": "https://x.example.com/"}).status_code == 403
        assert stack.call("GET", "/v1/keys", key).status_code == 200  # its keys: bounded by its own rights
    networks_only = key_create(workspace="ws-a", name="cidr-admin", scopes=["admin"], cidrs=["127.0.0.0/8"])[1]
    assert stack.call("GET", "/v1/audit", networks_only).status_code == 200
