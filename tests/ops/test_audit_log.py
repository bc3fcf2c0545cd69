"""The audit log at scale (issue 20): daily partitions on PostgreSQL created ahead and dropped
after AUDIT_RETENTION_DAYS while token reads continue (real gateway, broker and command
processes), the hash chain sealed off the hot path and `manage.py audit verify` naming the
first row changed or deleted by hand in SQL, the NDJSON export (never a token), and the
embedded SQLite default left a plain table."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import requests
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from broker_app.audit import SYSTEM, Actor, audit_record
from broker_app.models import AuditEvent, AuditSeal
from broker_app.services.audit_chain import audit_seal
from broker_app.services.audit_partitions import audit_partitions_maintain, partition_days, partition_name
from tests.conftest import connect
from tests.ops.conftest import ROOT, random_id, wait_for

TABLE = AuditEvent._meta.db_table


def by_hand(sql: str, params: list | None = None) -> None:
    """A statement on a connection of its own, as an operator (or an intruder) at psql."""
    settings_dict = connection.settings_dict
    with psycopg.connect(
        dbname=settings_dict["NAME"],
        user=settings_dict["USER"],
        host=settings_dict["HOST"],
        port=settings_dict["PORT"] or 5432,
        password=settings_dict["PASSWORD"] or None,
        autocommit=True,
    ) as conn:
        conn.execute(sql, params)


def verify(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("audit", "verify", *args, stdout=out, stderr=err)
        status = 0
    except SystemExit as exc:
        status = exc.code
    return status, out.getvalue(), err.getvalue()


def written(count: int, workspace: str = "ws-chain") -> list[int]:
    """`count` rows through the token read's own INSERT; their ids."""
    for n in range(count):
        audit_record(
            connection_id=f"conn-{n % 3}",
            workspace=workspace,
            actor=Actor("apikey:abcd1234", workspace, ip="10.0.0.9"),
            action="token.read",
            detail={"n": n, "note": "é"},
        )
    return list(AuditEvent.objects.filter(workspace=workspace).order_by("id").values_list("id", flat=True))


@pytest.fixture
def sealed(settings, transactional_db):
    settings.AUDIT_SEAL_DELAY_SECONDS = 0
    ids = written(12)
    assert audit_seal(batch=5).sealed == 12  # several batches continue one chain
    assert verify()[0] == 0
    return ids


def test_the_table_is_partitioned_by_day_with_the_filters_indexes(transactional_db):
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = %s", [TABLE])
        assert cursor.fetchone()[0] == "p"
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [TABLE])
        definitions = " | ".join(row[0] for row in cursor.fetchall())
    for columns in ("(id, created_at)", "(connection_id, created_at)", "(workspace, created_at)", "(created_at)"):
        assert columns in definitions, definitions
    # The migration made today's partition and 7 days ahead when the test database was created;
    # a run that crosses midnight UTC created them on the day before.
    today = datetime.now(UTC).date()
    days = set(partition_days())
    assert any({day + timedelta(days=n) for n in range(8)} <= days for day in (today, today - timedelta(days=1)))
    # The admin's trail of a connection is served by an index (one partition scanned).
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        cursor.execute(
            "EXPLAIN SELECT * FROM broker_app_auditevent WHERE connection_id = 'x' AND created_at >= %s",
            [timezone.now() - timedelta(hours=1)],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
    assert "auditevent_connection_at" in plan or "connection_id_created_at" in plan, plan


def test_verify_names_a_row_updated_by_hand(sealed):
    victim = sealed[5]
    by_hand("UPDATE broker_app_auditevent SET actor = 'admin:nobody' WHERE id = %s", [victim])
    status, _, err = verify()
    assert status == 1
    assert f"row {victim} was changed" in err


def test_verify_names_a_row_updated_with_its_hash_recomputed(sealed):
    """Rewriting one row and its own chain_hash consistently still breaks the next link."""
    from broker_app.services.audit_chain import chain_next

    victim = sealed[4]
    row = list(
        AuditEvent.objects.filter(id=victim).values_list(
            "id", "created_at", "connection_id", "workspace", "actor", "action", "ip", "detail"
        )[0]
    )
    row[4] = "admin:nobody"
    previous = AuditEvent.objects.get(id=sealed[3]).chain_hash
    by_hand(
        "UPDATE broker_app_auditevent SET actor = %s, chain_hash = %s WHERE id = %s",
        [row[4], chain_next(previous, tuple(row)), victim],
    )
    status, _, err = verify()
    assert status == 1 and f"row {sealed[5]} was changed" in err


def test_verify_names_a_row_deleted_by_hand(sealed):
    victim = sealed[7]
    by_hand("DELETE FROM broker_app_auditevent WHERE id = %s", [victim])
    status, _, err = verify()
    assert status == 1
    assert f"row {victim} was deleted" in err


def test_verify_names_the_last_rows_deleted_and_a_row_inserted_behind_the_seal(sealed):
    by_hand("DELETE FROM broker_app_auditevent WHERE id >= %s", [sealed[-2]])
    status, _, err = verify("--since", datetime.now(UTC).date().isoformat())
    assert status == 1 and f"row {sealed[-1]} was deleted" in err

    AuditSeal.objects.all().delete()
    by_hand("UPDATE broker_app_auditevent SET chain_hash = '', prev_id = NULL")
    assert audit_seal().sealed == 10 and verify()[0] == 0
    first = AuditEvent.objects.order_by("created_at", "id").first()
    by_hand(
        "INSERT INTO broker_app_auditevent (connection_id, workspace, actor, action, detail, created_at) "
        "VALUES ('forged', 'ws-chain', 'system', 'token.read', '{}', %s)",
        [first.created_at + timedelta(microseconds=1)],
    )
    status, _, err = verify()
    assert status == 1 and "was inserted after its day was sealed" in err


def test_sealing_waits_for_a_transaction_still_open(settings, transactional_db):
    """A row whose transaction is still open when the sealer runs is not skipped: the
    cutoff stays before that transaction's start, the row is sealed after it commits."""
    settings.AUDIT_SEAL_DELAY_SECONDS = 0
    written(3)
    settings_dict = connection.settings_dict
    with psycopg.connect(
        dbname=settings_dict["NAME"], user=settings_dict["USER"], host=settings_dict["HOST"], port=5432
    ) as slow:
        slow.execute(
            "INSERT INTO broker_app_auditevent (connection_id, workspace, actor, action, detail, created_at) "
            "VALUES ('slow', 'ws-chain', 'system', 'token.read', '{}', clock_timestamp())"
        )
        time.sleep(0.2)
        written(2, workspace="ws-later")  # committed, but after the open transaction began
        assert audit_seal().sealed == 3
        slow.commit()
    assert audit_seal().sealed == 3  # the slow row, then the two after it
    assert not AuditEvent.objects.filter(chain_hash="").exists()
    assert verify()[0] == 0


def test_seal_leaves_the_token_read_insert_unchanged(transactional_db):
    """The hot path's INSERT names only the content columns: the chain columns take their
    database defaults (an unsealed row)."""
    from broker_app.audit import _insert

    sql, _ = _insert()
    assert "chain_hash" not in sql and "prev_id" not in sql
    audit_record(connection_id="c", workspace="w", actor=SYSTEM, action="token.read")
    row = AuditEvent.objects.get(connection_id="c")
    assert (row.chain_hash, row.prev_id) == ("", None)


def test_export_streams_ndjson_without_any_token(stack, fake_provider, fake_provider_row, settings, tmp_path):
    from broker_app import crypto
    from broker_app.models import Connection

    settings.AUDIT_SEAL_DELAY_SECONDS = 0
    key = stack.key("ws-export")
    cid = connect(stack, fake_provider, key)
    handed_out = [stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"] for _ in range(3)]
    row = Connection.objects.get(pk=cid)
    stored = [crypto.decrypt(row.refresh_token_enc, aad=row.aad("refresh_token"))]
    audit_seal()
    since = (timezone.now() - timedelta(hours=1)).isoformat()
    out = io.StringIO()
    call_command("audit", "export", "--since", since, stdout=out)
    text = out.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    reads = [line for line in lines if line["connection_id"] == cid and line["action"] == "token.read"]
    assert len(reads) == 3
    assert set(reads[0]) == {
        "id", "created_at", "connection_id", "workspace", "actor", "action", "ip", "detail", "chain_hash", "prev_id",
    }  # fmt: skip
    assert reads[0]["actor"] == f"apikey:{key.split('_')[1]}" and len(reads[0]["chain_hash"]) == 64
    for secret in [*handed_out, *stored, key]:
        assert secret not in text
    target = tmp_path / "audit.ndjson"
    call_command("audit", "export", "--since", since, "--output", str(target), stdout=io.StringIO())
    assert target.read_text() == text
    # An empty window and a bad window.
    empty = io.StringIO()
    call_command("audit", "export", "--since", "2000-01-01", "--until", "2000-01-02", stdout=empty)
    assert empty.getvalue() == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("export", "--since", "yesterday"), "--since must be a date"),
        (("export", "--since", "2026-01-02", "--until", "2026-01-01"), "--until must be after --since"),
        (("verify", "--until", "13/01/2026"), "--until must be a date"),
        (("seal", "--batch", "0"), "--batch must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message, db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match=message):
        call_command("audit", *args, stdout=io.StringIO())


def test_retention_drops_whole_old_partitions_and_their_seals(settings, transactional_db):
    settings.AUDIT_SEAL_DELAY_SECONDS = 0
    today = datetime.now(UTC).date()
    settings.AUDIT_RETENTION_DAYS = 0
    audit_partitions_maintain(today=today - timedelta(days=12))  # days -12 … -5 exist now
    old = datetime.combine(today - timedelta(days=10), datetime.min.time(), tzinfo=UTC) + timedelta(hours=3)
    kept = datetime.combine(today - timedelta(days=2), datetime.min.time(), tzinfo=UTC) + timedelta(hours=3)
    for moment in (old, kept):
        by_hand(
            "INSERT INTO broker_app_auditevent (connection_id, workspace, actor, action, detail, created_at) "
            "VALUES ('ret', 'ws-ret', 'system', 'token.read', '{}', %s)",
            [moment],
        )
    audit_seal()
    assert AuditSeal.objects.filter(day=old.date()).exists()
    settings.AUDIT_RETENTION_DAYS = 3
    report = audit_partitions_maintain(today=today)
    assert partition_name(old.date()) in report.dropped
    assert partition_name(today - timedelta(days=3)) not in report.dropped
    days = partition_days()
    assert old.date() not in days and all(day >= today - timedelta(days=3) for day in days)
    assert list(AuditEvent.objects.filter(workspace="ws-ret").values_list("created_at", flat=True)) == [kept]
    assert not AuditSeal.objects.filter(day__lt=today - timedelta(days=3)).exists()
    assert verify()[0] == 0


# -- real processes ----------------------------------------------------------------------------------


@pytest.mark.live
def test_retention_drops_old_partitions_while_token_reads_continue(ops_stack):
    """Gateway and broker under gunicorn serve token reads in a loop while `manage.py audit
    partitions` (another process) detaches and drops ten old partitions: every read answers
    200 and is audited."""
    stack = ops_stack
    key = stack.new_key(random_id("ws-ret"))
    cid = stack.connect(key, user_id=random_id("user"))
    today = datetime.now(UTC).date()
    old_days = [today - timedelta(days=n) for n in range(30, 40)]
    with stack.db() as conn:
        for day in old_days:
            start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{partition_name(day)}" PARTITION OF {TABLE} '
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{(start + timedelta(days=1)).isoformat()}')"
            )
            conn.execute(
                "INSERT INTO broker_app_auditevent (connection_id, workspace, actor, action, detail, created_at) "
                "SELECT 'old', 'ws-old', 'system', 'token.read', '{}', %s + g * interval '1 second' "
                "FROM generate_series(1, 500) g",
                [start],
            )
        before = conn.execute("SELECT count(*) FROM broker_app_auditevent WHERE connection_id = %s", [cid]).fetchone()[
            0
        ]

    results: list[int | str] = []
    stop = threading.Event()

    def reads() -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {key}"}
        while not stop.is_set():
            try:
                results.append(
                    session.get(f"{stack.gateway_url}/v1/token/{cid}", headers=headers, timeout=30).status_code
                )
            except requests.RequestException as exc:
                results.append(type(exc).__name__)
            time.sleep(0.12)  # under the key's 600/min

    thread = threading.Thread(target=reads)
    thread.start()
    try:
        wait_for(lambda: len(results) >= 5, "token reads under way")
        env = {**stack.env, "DJANGO_SETTINGS_MODULE": "dromos.settings.broker", "AUDIT_RETENTION_DAYS": "20"}
        command = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "audit", "partitions"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        seen = len(results)
        wait_for(lambda: len(results) >= seen + 5, "token reads after the command")
    finally:
        stop.set()
        thread.join()
    assert command.returncode == 0, command.stderr
    assert "10 dropped" in command.stdout, command.stdout + command.stderr
    assert results and set(results) == {200}, {r for r in results if r != 200}
    with stack.db() as conn:
        assert conn.execute("SELECT count(*) FROM broker_app_auditevent WHERE connection_id = 'old'").fetchone()[0] == 0
        left = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass AND inhrelid::regclass::text = ANY(%s)",
            [TABLE, [partition_name(day) for day in old_days]],
        ).fetchone()[0]
        after = conn.execute("SELECT count(*) FROM broker_app_auditevent WHERE connection_id = %s", [cid]).fetchone()[0]
    assert left == 0
    assert after - before == len(results)  # every read audited


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_sqlite_keeps_a_plain_table_and_the_chain_works(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "REDIS_URL")}
    env.update(
        DEBUG="1",
        DROMOS_VAR_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="dromos.settings.broker",
        AUDIT_SEAL_DELAY_SECONDS="0",
    )

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, capture_output=True, text=True
        )

    assert manage("migrate", "-v0").returncode == 0
    partitions = manage("audit", "partitions")
    assert partitions.returncode == 0 and "not partitioned" in partitions.stdout
    script = (
        "from broker_app.audit import SYSTEM, audit_record\n"
        "for n in range(3): audit_record(connection_id='c', workspace='w', actor=SYSTEM, action='token.read')\n"
    )
    assert manage("shell", "-c", script).returncode == 0
    assert "sealed 3 row(s)" in manage("audit", "seal").stdout
    verified = manage("audit", "verify")
    assert verified.returncode == 0 and "3 sealed row(s) in 1 day(s)" in verified.stdout, verified.stderr
    exported = manage("audit", "export", "--since", "2000-01-01")
    assert [json.loads(line)["connection_id"] for line in exported.stdout.splitlines()] == ["c", "c", "c"]


def test_admin_counts_the_unfiltered_list_from_the_estimate_and_filtered_lists_exactly(transactional_db, monkeypatch):
    from django.contrib.auth.models import User
    from django.test import Client

    from broker_app.services import audit_partitions

    written(30, workspace="ws-a")
    written(20, workspace="ws-b")
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {TABLE}")
    by_hand("DELETE FROM broker_app_auditevent WHERE workspace = 'ws-b'")  # the statistics still say 50
    monkeypatch.setattr(audit_partitions, "ESTIMATE_ABOVE", 10)
    admin = User.objects.create_superuser("auditor", "auditor@example.test", "pw-not-used")
    client = Client()
    client.force_login(admin)
    url = "/admin/broker_app/auditevent/"
    unfiltered = client.get(url)
    assert unfiltered.status_code == 200 and unfiltered.context["cl"].result_count == 50  # estimated
    filtered = client.get(url, {"workspace": "ws-a"})
    assert filtered.status_code == 200 and filtered.context["cl"].result_count == 30  # counted
    monkeypatch.setattr(audit_partitions, "ESTIMATE_ABOVE", 1_000_000)
    assert client.get(url).context["cl"].result_count == 30  # a small table is counted exactly
