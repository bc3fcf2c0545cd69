"""Per-workspace provider apps (issue 19): a workspace's own client for a provider name,
preferred over the operator's shared one; managed by `manage.py provider upsert
--workspace` and the broker's internal workspace-provider endpoints; secrets write-only;
a provider with connections is not deleted."""

from __future__ import annotations

import base64
import io

import pytest
from django.core.management import CommandError, call_command

from broker_app.models import AuditEvent, Connection, Provider
from broker_app.providers.registry import client_secret, resolve
from dromos import wire
from tests.conftest import auth_params, connect, make_provider, start_connection
from tests.support.fake_provider import CLIENT_ID, CLIENT_SECRET

pytestmark = pytest.mark.django_db(transaction=True)


def _run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _own(fake_provider, workspace: str, client_id: str, secret: str, environment: str = "production", **fields):
    return make_provider(
        name="fake",
        discovery_url=fake_provider.discovery_url,
        client_id=client_id,
        client_secret=secret,
        workspace=workspace,
        environment=environment,
        **fields,
    )


def _ws(workspace: str, environment: str | None = None) -> dict[str, str]:
    headers = {"X-Dromos-Workspace": workspace}
    if environment is not None:
        headers[wire.ENVIRONMENT_HEADER] = environment
    return headers


def test_two_workspaces_naming_a_provider_the_same_each_get_their_own(stack, fake_provider, fake_provider_row):
    own_a = _own(fake_provider, "ws-a", "client-of-a", "secret-of-a", display_name="Acme's Fake")
    own_b = _own(fake_provider, "ws-b", "client-of-b", "secret-of-b")
    keys = {ws: stack.key(ws) for ws in ("ws-a", "ws-b", "ws-c")}
    expected = {"ws-a": ("client-of-a", own_a.pk), "ws-b": ("client-of-b", own_b.pk), "ws-c": (CLIENT_ID, None)}
    for workspace, key in keys.items():
        started = start_connection(stack, key)
        client_id, row = expected[workspace]
        assert auth_params(started["authUrl"])["client_id"] == client_id, workspace
        connection = Connection.objects.get(pk=started["connection_id"])
        assert connection.provider_id == (row or fake_provider_row.pk), workspace
        listed = stack.call("GET", "/v1/providers", key).json()["providers"]
        assert [p["name"] for p in listed] == ["fake"], workspace  # one "fake" each, never two
    names = {p["name"]: p for p in stack.call("GET", "/v1/providers", keys["ws-a"]).json()["providers"]}
    assert names["fake"]["display_name"] == "Acme's Fake"


def test_the_resolved_spec_cache_is_per_row_so_per_workspace(fake_provider, fake_provider_row):
    own_a = _own(fake_provider, "ws-a", "client-of-a", "secret-of-a")
    own_b = _own(fake_provider, "ws-b", "client-of-b", "secret-of-b")
    specs = {p.workspace: resolve(p)[0] for p in (fake_provider_row, own_a, own_b)}
    assert {ws: (s.client_id, s.client_secret) for ws, s in specs.items()} == {
        "": (CLIENT_ID, CLIENT_SECRET),
        "ws-a": ("client-of-a", "secret-of-a"),
        "ws-b": ("client-of-b", "secret-of-b"),
    }
    # A rotation of a's secret is a new row version: seen at once, b untouched.
    _run("provider", "upsert", "--name", "fake", "--workspace", "ws-a", "--client-secret", "rotated-a")
    own_a.refresh_from_db()
    assert resolve(own_a)[0].client_secret == "rotated-a" and client_secret(own_a) == "rotated-a"
    assert "rotated-a" not in own_a.client_secret_enc  # encrypted at rest
    own_b.refresh_from_db()
    assert resolve(own_b)[0].client_secret == "secret-of-b"


def test_the_full_flow_uses_the_workspaces_own_row_through_refresh(stack, fake_provider, fake_provider_row):
    """The connection keeps its provider row: the refresh goes out with that row's client."""
    own = _own(fake_provider, "ws-a", CLIENT_ID, "secret-of-a")  # the fake checks the id_token's aud
    cid = connect(stack, fake_provider, stack.key("ws-a"))
    assert Connection.objects.get(pk=cid).provider_id == own.pk
    key = stack.key("ws-a")
    assert stack.call("POST", f"/v1/refresh/{cid}", key).status_code == 200
    assert fake_provider.last_token_form["grant_type"] == "refresh_token"
    presented = fake_provider.last_token_auth or ""
    assert presented == "Basic " + base64.b64encode(b"fake-client:secret-of-a").decode(), presented


def test_provider_command_upserts_lists_and_removes_per_workspace(fake_provider, fake_provider_row):
    out = _run(
        "provider",
        "upsert",
        "--name",
        "fake",
        "--workspace",
        "ws-a",
        "--environment",
        "development",
        "--discovery-url",
        fake_provider.discovery_url,
        "--client-id",
        "dev-client",
        "--client-secret",
        "dev-secret",
    )
    assert "created provider fake for workspace ws-a (development)" in out
    row = Provider.objects.get(workspace="ws-a", environment="development", name="fake")
    assert row.client_id == "dev-client" and client_secret(row) == "dev-secret"
    assert Provider.objects.get(workspace="", name="fake").client_id == CLIENT_ID  # the shared row unchanged
    listing = _run("provider", "list")
    assert "workspace=ws-a/development" in listing and "dev-secret" not in listing
    assert _run("provider", "list", "--workspace", "ws-a").count("\n") == 1
    with pytest.raises(CommandError, match="--environment needs --workspace"):
        _run("provider", "upsert", "--name", "fake", "--environment", "development")
    for bad in ("../prod", "prod'; DROP TABLE x;--", "Prod", "a b", "-x", "x" * 33, "prod/x"):
        with pytest.raises(CommandError, match="environment must be"):
            _run("provider", "upsert", "--name", "fake", "--workspace", "ws-a", f"--environment={bad}")
    assert Provider.objects.count() == 2
    _run("provider", "remove", "--name", "fake", "--workspace", "ws-a", "--environment", "development")
    assert not Provider.objects.filter(workspace="ws-a").exists()
    assert Provider.objects.filter(workspace="", name="fake").exists()


def test_internal_workspace_provider_endpoints(stack, fake_provider, fake_provider_row):
    path = wire.internal_path(wire.WORKSPACE_PROVIDER, name="fake")
    listing = wire.internal_path(wire.WORKSPACE_PROVIDERS)
    # Before: the workspace sees the shared row (read-only), has none of its own.
    shared = stack.broker("GET", listing, headers=_ws("ws-a")).json()["providers"]
    assert [(p["name"], p["shared"], p["client_id"]) for p in shared] == [("fake", True, CLIENT_ID)]
    assert stack.broker("GET", path, headers=_ws("ws-a")).status_code == 404
    # Create the workspace's own (the catalog's `oidc` template needs a discovery URL, which only
    # the operator sets: a workspace's own row takes a template with fixed endpoints).
    refused = stack.broker(
        "PUT",
        path,
        headers=_ws("ws-a"),
        json={"template": "oidc", "discovery_url": fake_provider.discovery_url, "client_id": "mine"},
    )
    assert refused.status_code == 400 and "discovery_url" in refused.json()["details"], refused.text
    assert not Provider.objects.filter(workspace="ws-a").exists()
    body = {
        "template": "google",
        "client_id": "ws-a.apps.googleusercontent.com",
        "client_secret": "ws-a-google-secret",
        "default_scopes": ["openid", "email"],
        "authorize_params": {"hd": "acme.example"},
        "display_name": "Acme Google",
    }
    google = wire.internal_path(wire.WORKSPACE_PROVIDER, name="google")
    created = stack.broker("PUT", google, headers=_ws("ws-a"), json=body)
    assert created.status_code == 201, created.text
    answer = created.json()
    assert answer["client_secret_set"] is True and answer["shared"] is False
    assert answer["environment"] == "production" and answer["client_id"] == body["client_id"]
    assert "ws-a-google-secret" not in created.text and "client_secret_enc" not in created.text
    # Update: fields left out keep their value; the secret is rotated, still never shown.
    updated = stack.broker("PUT", google, headers=_ws("ws-a"), json={"client_secret": "rotated", "enabled": True})
    assert updated.status_code == 200 and updated.json()["authorize_params"] == {"hd": "acme.example"}
    row = Provider.objects.get(workspace="ws-a", name="google")
    assert client_secret(row) == "rotated"
    for answer in (
        stack.broker("GET", google, headers=_ws("ws-a")),
        stack.broker("GET", listing, headers=_ws("ws-a")),
        stack.call("GET", "/v1/providers", stack.key("ws-a")),
    ):
        assert answer.status_code == 200
        assert "rotated" not in answer.text and "ws-a-google-secret" not in answer.text
    # Another workspace, another environment: not theirs (404), and they do not see it.
    for headers in (_ws("ws-b"), _ws("ws-a", "development")):
        assert stack.broker("GET", google, headers=headers).status_code == 404
        assert stack.broker("DELETE", google, headers=headers).status_code == 404
        names = [p["name"] for p in stack.broker("GET", listing, headers=headers).json()["providers"]]
        assert names == ["fake"]
    # The shared row is not the workspace's to change: a PUT under its name would make the
    # workspace's own row (here refused: "fake" is no catalog key, no template named).
    assert stack.broker("PUT", path, headers=_ws("ws-b"), json={"client_secret": "x"}).status_code == 400
    assert Provider.objects.get(workspace="", name="fake").client_id == CLIENT_ID
    # Bad inputs: 400, nothing written.
    before = Provider.objects.count()
    for bad_body in (
        {"template": "nope"},
        {"token_url": "https://169.254.169.254/latest"},
        {"unknown_field": 1},
        {"default_scopes": "openid email"},
        {"enabled": "yes"},
        {"authorize_params": ["x"]},
    ):
        answer = stack.broker(
            "PUT", wire.internal_path(wire.WORKSPACE_PROVIDER, name="other"), headers=_ws("ws-a"), json=bad_body
        )
        assert answer.status_code == 400, (bad_body, answer.text)
    for bad_name in ("Bad Name", "x" * 65, "a%2Fb"):
        answer = stack.broker("PUT", f"/internal/v1/workspace-providers/{bad_name}", headers=_ws("ws-a"), json={})
        assert answer.status_code in (400, 404), (bad_name, answer.text)
    assert Provider.objects.count() == before
    assert stack.broker("GET", listing).status_code == 400  # no workspace named
    # Audit: who changed which provider, never the secret.
    actions = list(
        AuditEvent.objects.filter(workspace="ws-a", action__startswith="provider.").values("action", "detail")
    )
    assert [a["action"] for a in actions] == ["provider.updated", "provider.created"]
    assert actions[0]["detail"]["secret_changed"] is True and "rotated" not in str(actions)


def test_deleting_a_provider_with_connections_is_refused(stack, fake_provider, fake_provider_row):
    _own(fake_provider, "ws-a", CLIENT_ID, "secret-of-a")
    path = wire.internal_path(wire.WORKSPACE_PROVIDER, name="fake")
    cid = connect(stack, fake_provider, stack.key("ws-a"))
    refused = stack.broker("DELETE", path, headers=_ws("ws-a"))
    assert refused.status_code == 409 and refused.json()["error"] == "provider_in_use", refused.text
    assert "enabled: false" in refused.json()["message"]
    assert Provider.objects.filter(workspace="ws-a", name="fake").exists()
    # Disabling instead: no new connections (the shared row does not stand in), the existing one works.
    assert stack.broker("PUT", path, headers=_ws("ws-a"), json={"enabled": False}).status_code == 200
    key = stack.key("ws-a")
    again = stack.call(
        "POST",
        "/v1/request-connection",
        key,
        json={"user_id": "u", "provider_name": "fake", "scopes": ["openid"], "return_url": "https://app.example.com/r"},
    )
    assert again.status_code == 400 and again.json()["details"] == {"provider_name": ["unknown provider"]}
    assert stack.call("GET", f"/v1/token/{cid}", key).status_code == 200
    # With its connection revoked and gone, it can be deleted.
    Connection.objects.filter(pk=cid).delete()
    assert stack.broker("DELETE", path, headers=_ws("ws-a")).status_code == 204
    assert not Provider.objects.filter(workspace="ws-a").exists()
    assert AuditEvent.objects.filter(workspace="ws-a", action="provider.deleted").exists()
