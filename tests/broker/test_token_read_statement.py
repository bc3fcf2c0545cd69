"""The token read's plain case in ONE statement (issue 20): the scoped SELECT and the
`token.read` audit row in a data-modifying CTE, run through libpq's PQexecPrepared
(dromos/db/base.py: fetch_prepared). Every other case continues from the row it read, on the
code that served it before. These tests hold the one-statement read to the same outcomes as
that code for every state a connection can be in."""

from __future__ import annotations

import itertools
from datetime import timedelta

import psycopg
import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from broker_app import crypto
from broker_app.audit import Actor
from broker_app.models import AuditEvent, Connection, Provider
from broker_app.services import reads
from broker_app.services.reads import token_read_stored
from dromos.db.base import DatabaseWrapper

pytestmark = pytest.mark.django_db(transaction=True)

ACTOR = Actor("apikey:abcd1234", "ws-a", "10.1.2.3")
STATEMENT = b"dromos_token_read"


@pytest.fixture
def provider(db):
    return Provider.objects.create(name="hot", template="github", client_id="x")


def _connection(provider, cid: str, *, renewable: bool = True, **fields) -> Connection:
    row = Connection.objects.create(
        id=cid,
        workspace="ws-a",
        user_id="u",
        provider=provider,
        status=fields.pop("status", "active"),
        scopes=["read:user"],
        granted_scopes=["read:user", "repo"],
        token_type="bearer",
        **fields,
    )
    row.access_token_enc = crypto.encrypt(f"gho_{cid}", aad=row.aad("access_token"))
    row.refresh_token_enc = crypto.encrypt("ghr_refresh", aad=row.aad("refresh_token")) if renewable else ""
    row.save(update_fields=["access_token_enc", "refresh_token_enc"])
    return row


def _prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def _outcome(cid: str, **kwargs) -> tuple:
    """What a read did: the token served (or None), the audit rows, the usage marks."""
    view = token_read_stored(connection_id=cid, workspace="ws-a", actor=ACTOR, **kwargs)
    row = Connection.objects.filter(pk=cid).values("last_read_at", "next_refresh_attempt_at").first()
    audits = list(AuditEvent.objects.filter(connection_id=cid).values_list("action", "actor", "workspace", "ip"))
    served = None if view is None else (view.access_token, view.warnings)
    marked = None if row is None else (row["last_read_at"] is not None, row["next_refresh_attempt_at"] is not None)
    return served, audits, marked


def test_the_plain_read_is_one_statement_that_writes_its_audit_row(provider):
    now = timezone.now()
    row = _connection(provider, "c_plain", expires_at=now + timedelta(hours=1), last_read_at=now - timedelta(minutes=5))
    connection.close()
    with CaptureQueriesContext(connection):  # the query log on: the cursor path, its SELECT and INSERT
        assert token_read_stored(connection_id=row.id, workspace="ws-a", actor=ACTOR).access_token == "gho_c_plain"
        assert STATEMENT.decode() not in _prepared() and len(_prepared()) == 2
    connection.close()
    served = token_read_stored(connection_id=row.id, workspace="ws-a", actor=ACTOR)  # nobody watching
    assert served.access_token == "gho_c_plain" and served.provider_name == "hot"
    assert STATEMENT.decode() in _prepared()
    events = AuditEvent.objects.filter(connection_id=row.id).order_by("id")
    assert [(e.action, e.actor, e.workspace, e.environment, e.ip, e.detail) for e in events] == [
        ("token.read", "apikey:abcd1234", "ws-a", "production", "10.1.2.3", {})
    ] * 2
    assert abs(events.last().created_at - timezone.now()) < timedelta(seconds=30)


def test_the_one_statement_read_is_scoped_to_the_workspace_and_environment(provider):
    now = timezone.now()
    row = _connection(provider, "c_scoped", expires_at=now + timedelta(hours=1), last_read_at=now)
    assert token_read_stored(connection_id=row.id, workspace="ws-b", actor=Actor("k", "ws-b")) is None
    staging = Actor("k", "ws-a", environment="staging")
    assert token_read_stored(connection_id=row.id, workspace="ws-a", actor=staging) is None
    assert token_read_stored(connection_id="c_unknown", workspace="ws-a", actor=ACTOR) is None
    assert not AuditEvent.objects.exists()  # nothing written for a read that was not served


_NOW_OFFSETS = {
    "expiry": (None, timedelta(hours=2), timedelta(seconds=90), timedelta(seconds=20), -timedelta(minutes=1)),
    "last_read": (None, -timedelta(minutes=5), -timedelta(hours=2)),
    "refreshed": (None, -timedelta(minutes=10), -timedelta(seconds=5)),
}


@pytest.mark.parametrize("auto_refresh", [False, True])
def test_every_state_is_served_exactly_as_the_cursor_path_serves_it(provider, monkeypatch, auto_refresh):
    """Status × expiry × last read × last refresh × renewable: the one statement, and the code
    it replaces (fetch_prepared turned off), give the same token, warnings, audit rows and marks."""
    now = timezone.now()
    states = list(
        itertools.product(
            ("active", "revoked"),  # every status but active is served by the cursor path alike
            _NOW_OFFSETS["expiry"],
            _NOW_OFFSETS["last_read"],
            _NOW_OFFSETS["refreshed"],
            (True, False),  # renewable: a refresh token stored
        )
    )
    outcomes: dict[str, list] = {"statement": [], "cursor": []}
    for path in ("statement", "cursor"):
        monkeypatch.setattr(DatabaseWrapper, "fetch_prepared_usable", lambda self, _p=path: _p == "statement")
        for number, (status, expiry, last_read, refreshed, renewable) in enumerate(states):
            cid = f"c_{path}_{number}"
            _connection(
                provider,
                cid,
                status=status,
                expires_at=None if expiry is None else now + expiry,
                last_read_at=None if last_read is None else now + last_read,
                last_refreshed_at=None if refreshed is None else now + refreshed,
                token_version=1 if refreshed is None else 2,
                renewable=renewable,
            )
            served, audits, marked = _outcome(cid, auto_refresh=auto_refresh, min_ttl=60)
            outcomes[path].append((served and (served[0].removeprefix(f"gho_c_{path}_"), served[1]), audits, marked))
    assert outcomes["statement"] == outcomes["cursor"]
    served = [o for o in outcomes["statement"] if o[0] is not None]
    assert served and any(o[0] is None for o in outcomes["statement"])  # both kinds of case were met


def test_a_statement_dropped_behind_its_back_is_prepared_again(provider):
    now = timezone.now()
    row = _connection(provider, "c_discard", expires_at=now + timedelta(hours=1), last_read_at=now)
    assert token_read_stored(connection_id=row.id, workspace="ws-a", actor=ACTOR) is not None
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # what a pooler's DISCARD ALL does
    assert STATEMENT.decode() not in _prepared()
    assert token_read_stored(connection_id=row.id, workspace="ws-a", actor=ACTOR).access_token == "gho_c_discard"
    assert AuditEvent.objects.filter(connection_id=row.id).count() == 2


def test_a_database_error_is_djangos_and_writes_nothing(provider, monkeypatch):
    now = timezone.now()
    row = _connection(provider, "c_broken", expires_at=now + timedelta(hours=1), last_read_at=now)
    token_read_stored(connection_id=row.id, workspace="ws-a", actor=ACTOR)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    with psycopg.connect(_dsn(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(OperationalError):
        token_read_stored(connection_id=row.id, workspace="ws-a", actor=ACTOR)
    assert connection.errors_occurred
    connection.close()
    assert AuditEvent.objects.filter(connection_id=row.id).count() == 1


def test_without_prepared_statements_the_cursor_path_serves(provider, monkeypatch):
    now = timezone.now()
    row = _connection(provider, "c_noprep", expires_at=now + timedelta(hours=1), last_read_at=now)
    connection.close()
    monkeypatch.setitem(connection.settings_dict, "PREPARED_STATEMENTS", False)
    called = []
    monkeypatch.setattr(DatabaseWrapper, "fetch_prepared", lambda *a, **k: called.append(a))
    assert token_read_stored(connection_id=row.id, workspace="ws-a", actor=ACTOR).access_token == "gho_c_noprep"
    assert called == [] and AuditEvent.objects.filter(connection_id=row.id).count() == 1
    assert (
        reads.connection_for_token_read(connection_id=row.id, workspace="ws-a", environment="production", audit={})
        is None
    )


def _dsn() -> str:
    params = connection.get_connection_params()
    return psycopg.conninfo.make_conninfo(
        **{k: v for k, v in params.items() if k in {"dbname", "user", "host", "port", "password"}}
    )


def test_the_statement_loads_the_row_as_the_cursor_path_does(provider):
    """Timestamps come back as integer microseconds and are rebuilt: the same aware datetimes,
    to the microsecond, as the cursor path's loaders give; every other column the same too."""
    from broker_app.selectors import connection_for_token, connection_for_token_read

    row = _connection(
        provider,
        "c_same_row",
        expires_at=timezone.now() + timedelta(hours=1, microseconds=7),
        last_read_at=timezone.now() - timedelta(days=400, microseconds=1),
        last_refreshed_at=None,
    )
    audit = {
        "actor": "a",
        "action": "token.read",
        "ip": None,
        "created_at": timezone.now().isoformat(),
        "status": "active",
        "fresh_after": timezone.now().isoformat(),
        "marked_after": timezone.now().isoformat(),
    }
    loaded, audited = connection_for_token_read(
        connection_id=row.id, workspace="ws-a", environment="production", audit=audit
    )
    expected = connection_for_token(connection_id=row.id, workspace="ws-a", environment="production")
    assert audited is False  # last read 400 days ago: a mark is due, the cursor path goes on
    assert vars(loaded).keys() == vars(expected).keys()
    for name in vars(expected):
        if name != "_state":
            assert getattr(loaded, name) == getattr(expected, name), name
    assert loaded.expires_at.utcoffset() == timedelta(0) and loaded.expires_at == row.expires_at
    assert loaded.last_refreshed_at is None and loaded.provider.name == "hot"
