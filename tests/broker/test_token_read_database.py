"""The token read's database work (issue 7): one prepared SELECT, one INSERT for the audit,
and a persistent connection that is pinged only after sitting idle (dromos/db)."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import close_old_connections, connection

from broker_app.audit import Actor
from broker_app.models import AuditEvent, Connection, Provider
from broker_app.selectors import connection_for_token
from broker_app.services.reads import token_read
from dromos.errors import NotFound

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def active(settings):
    from broker_app import crypto

    provider = Provider.objects.create(name="hot", template="github", client_id="x")
    row = Connection.objects.create(
        id="c_hot_path_0123456789abcdef",
        workspace="ws-a",
        user_id="u",
        provider=provider,
        status="active",
        scopes=["read:user"],
        granted_scopes=["read:user", "repo"],
        token_type="bearer",
    )
    row.access_token_enc = crypto.encrypt("gho_hot_path_token", aad=row.aad("access_token"))
    row.save(update_fields=["access_token_enc"])
    return row


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def test_token_read_serves_the_row_and_audits_it_with_prepared_statements(active):
    view = token_read(connection_id=active.id, workspace="ws-a", actor=Actor("apikey:abcd1234", "ws-a", "10.1.2.3"))
    assert (view.access_token, view.provider_name, view.scopes, view.token_type) == (
        "gho_hot_path_token",
        "hot",
        ["read:user", "repo"],
        "bearer",
    )
    event = AuditEvent.objects.get(connection_id=active.id)
    assert (event.action, event.actor, event.workspace, event.ip, event.detail) == (
        "token.read",
        "apikey:abcd1234",
        "ws-a",
        "10.1.2.3",
        {},
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any("broker_app_connection" in sql for sql in prepared), prepared
    assert any(sql.startswith("INSERT INTO") and "broker_app_auditevent" in sql for sql in prepared), prepared


def test_the_token_select_is_scoped_and_loads_deferred_columns_on_demand(active):
    with pytest.raises(NotFound):
        connection_for_token(connection_id=active.id, workspace="ws-b")
    row = connection_for_token(connection_id=active.id, workspace=None)
    assert row.provider.name == "hot" and row.status == "active"
    assert "user_id" in row.get_deferred_fields() and row.user_id == "u"  # one more query, still right


def test_without_prepared_statements_the_same_statements_run(active, settings):
    connection.close()
    connection.settings_dict["PREPARED_STATEMENTS"] = False
    try:
        view = token_read(connection_id=active.id, workspace="ws-a", actor=Actor("broker-api"))
        assert view.access_token == "gho_hot_path_token"
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_prepared_statements")
            assert cursor.fetchone()[0] == 0
    finally:
        connection.settings_dict["PREPARED_STATEMENTS"] = True
        connection.close()


def test_a_connection_cut_while_idle_is_replaced_before_the_next_request(active):
    """What CONN_HEALTH_CHECKS is for (a database restart or an idle timeout between two
    requests), kept although busy connections skip the ping."""
    connection.settings_dict["HEALTH_CHECK_IDLE_SECONDS"] = 0.2
    try:
        close_old_connections()  # request boundary
        first = _backend_pid()
        close_old_connections()
        with psycopg.connect(
            f"dbname={connection.settings_dict['NAME']} host=127.0.0.1 user=postgres", autocommit=True
        ) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [first])
        time.sleep(0.3)
        close_old_connections()  # the next request starts …
        view = token_read(connection_id=active.id, workspace="ws-a", actor=Actor("broker-api"))
        assert view.access_token == "gho_hot_path_token"  # … and is served on a new connection
        assert _backend_pid() != first
    finally:
        connection.settings_dict["HEALTH_CHECK_IDLE_SECONDS"] = 1.0
