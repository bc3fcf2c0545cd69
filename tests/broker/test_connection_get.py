"""`selectors.connection_get` reads the connection and its provider with a query written once
(issue 20: the ORM compiled it on every call, most of the broker's CPU for a proxy credential).
It must load exactly what `Connection.objects.select_related("provider")` loads, scoped the
same way."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from broker_app import crypto
from broker_app.models import Connection, Provider
from broker_app.selectors import connection_get
from dromos.errors import NotFound

pytestmark = pytest.mark.django_db


def _values(instance) -> dict:
    return {field.attname: getattr(instance, field.attname) for field in instance._meta.concrete_fields}


@pytest.fixture
def rows(db):
    shared = Provider.objects.create(
        name="hot",
        template="github",
        client_id="x",
        api_base_url="https://api.example.test/v2",
        default_scopes=["read:user"],
        authorize_params={"prompt": "consent"},
        settings={"tenant": "acme", "allowed": ["a", "b"]},
    )
    own = Provider.objects.create(name="own", template="google", client_id="y", workspace="ws-b", environment="staging")
    now = timezone.now()
    made = [
        Connection.objects.create(
            id="c_full",
            workspace="ws-a",
            user_id="u-1",
            provider=shared,
            status="active",
            scopes=["read:user", "repo"],
            granted_scopes=["read:user"],
            token_type="bearer",
            expires_at=now + timedelta(minutes=30),
            last_read_at=now - timedelta(minutes=2),
            params={"tenant": "acme", "nested": {"n": [1, 2]}},
            tags={"team": "ops"},
            metadata={"k": "v"},
        ),
        Connection.objects.create(
            id="c_bare", workspace="ws-b", environment="staging", user_id="u-2", provider=own, status="pending"
        ),
    ]
    made[0].access_token_enc = crypto.encrypt("gho_secret", aad=made[0].aad("access_token"))
    made[0].save(update_fields=["access_token_enc"])
    return made


@pytest.mark.parametrize(
    ("cid", "workspace", "environment"),
    [("c_full", "ws-a", None), ("c_full", "ws-a", "production"), ("c_full", None, None), ("c_bare", "ws-b", "staging")],
)
def test_loads_what_the_orm_loads(rows, cid, workspace, environment):
    expected = Connection.objects.select_related("provider").get(pk=cid)
    got = connection_get(connection_id=cid, workspace=workspace, environment=environment)
    with CaptureQueriesContext(db_connection) as queries:  # nothing deferred, the provider loaded with it
        assert _values(got) == _values(expected)
        assert _values(got.provider) == _values(expected.provider)
        assert got.get_deferred_fields() == set() and got.provider.get_deferred_fields() == set()
    assert len(queries) == 0
    assert got._state.adding is False and got._state.db == "default"
    assert got == expected and got.provider == expected.provider


def test_the_loaded_row_works_as_an_orm_row(rows):
    got = connection_get(connection_id="c_full", workspace="ws-a")
    assert got.params["nested"] == {"n": [1, 2]} and got.expires_at.tzinfo is not None
    got.user_id = "u-9"
    got.save(update_fields=["user_id"])
    got.refresh_from_db()
    assert got.user_id == "u-9" and Connection.objects.get(pk="c_full").user_id == "u-9"
    assert crypto.decrypt(got.access_token_enc, aad=got.aad("access_token")) == "gho_secret"


@pytest.mark.parametrize(
    ("cid", "workspace", "environment"),
    [
        ("c_full", "ws-b", None),  # another workspace's
        ("c_full", "ws-a", "staging"),  # the workspace's other environment
        ("c_bare", "ws-b", None),  # default environment: not staging's
        ("c_none", "ws-a", None),
        ("c_none", None, None),
        ("'; DROP TABLE broker_app_connection; --", "ws-a", None),
    ],
)
def test_outside_the_scope_is_not_found(rows, cid, workspace, environment):
    with pytest.raises(NotFound):
        connection_get(connection_id=cid, workspace=workspace, environment=environment)
    assert Connection.objects.count() == 2


_SQLITE_PROBE = """
from datetime import timedelta
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
assert connection.vendor == "sqlite", connection.vendor
call_command("migrate", verbosity=0)
from broker_app.models import Connection, Provider
from broker_app.selectors import connection_get
p = Provider.objects.create(name="hot", template="github", client_id="x", settings={"tenant": "acme"})
Connection.objects.create(id="c_1", workspace="ws-a", user_id="u", provider=p, status="active",
    scopes=["a"], expires_at=timezone.now() + timedelta(minutes=5), params={"n": [1]}, tags={"t": "v"})
values = lambda o: {f.attname: getattr(o, f.attname) for f in o._meta.concrete_fields}
got, expected = connection_get(connection_id="c_1", workspace="ws-a"), Connection.objects.select_related("provider").get()
assert values(got) == values(expected), (values(got), values(expected))
assert values(got.provider) == values(expected.provider)
assert got.expires_at.tzinfo is not None and got.params == {"n": [1]}
print("ok")
"""


@pytest.mark.live  # a child process on the embedded default (SQLite): its converters differ
def test_loads_what_the_orm_loads_on_sqlite(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="dromos.settings.broker", DROMOS_VAR_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", _SQLITE_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
