"""Audit log benchmark (issue 20): the token read's audit INSERT into the day-partitioned
table against the same INSERT into a plain table, and the sealing step's throughput.
docs/benchmarks.md ("Audit log") has the results.

    .venv/bin/python bench/audit_bench.py [--rows 20000] [--prefill 200000] [--rounds 3]

Uses a fresh database next to DATABASE_URL (`<name>_auditbench`, dropped and recreated),
migrated as the broker migrates (so the audit table is the partitioned one) plus a plain
table of the same columns and indexes. Each INSERT is the hot path's own statement
(`broker_app.audit._insert`, prepared, one autocommit transaction per row as a token read
writes it), alternated between the two tables round by round; both tables are prefilled
with `--prefill` rows spread over the last 7 days. Prints µs per INSERT (client wall time,
and the database backend's CPU per INSERT from /proc) and rows sealed per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "devtools"))


def _backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one PostgreSQL backend, when it runs on this machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000, help="INSERTs per table per round")
    parser.add_argument("--prefill", type=int, default=200000, help="rows in each table before measuring")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from stack import reset_postgres_database

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos")
    url = base.rsplit("/", 1)[0] + "/" + base.rsplit("/", 1)[1] + "_auditbench"
    reset_postgres_database(url)
    os.environ.update(DATABASE_URL=url, DEBUG="1", DJANGO_SETTINGS_MODULE="dromos.settings.broker")
    os.environ.pop("REDIS_URL", None)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import override_settings

    from broker_app.audit import Actor, _insert
    from broker_app.services.audit_chain import audit_seal
    from dromos.db import execute_fixed

    call_command("migrate", verbosity=0)
    table = "broker_app_auditevent"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE audit_plain (LIKE {table} INCLUDING DEFAULTS INCLUDING IDENTITY)")
        cursor.execute("ALTER TABLE audit_plain ADD PRIMARY KEY (id)")
        for columns in ("connection_id, created_at", "workspace, created_at", "created_at"):
            cursor.execute(f"CREATE INDEX ON audit_plain ({columns})")
        for target in (table, "audit_plain"):
            cursor.execute(
                f"INSERT INTO {target} (connection_id, workspace, actor, action, detail, created_at) "  # noqa: S608
                "SELECT 'conn-' || (g %% 10000), 'ws-' || (g %% 50), 'apikey:abcd1234', 'token.read', '{}', "
                "now() - (g %% 600000) * interval '1 second' FROM generate_series(1, %s) g",
                [args.prefill],
            )
        cursor.execute("VACUUM ANALYZE")  # not in a transaction: Django's cursor is autocommit here
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    sql, fields = _insert()
    actor = Actor("apikey:abcd1234", "ws-1", ip="10.0.0.9")
    from django.utils import timezone

    def run(target_sql: str) -> tuple[float, float]:
        cpu, start = _backend_cpu(backend), time.perf_counter()
        for n in range(args.rows):
            values = (f"conn-{n % 10000}", "ws-1", actor.name, "token.read", actor.ip, {}, timezone.now())
            execute_fixed(
                target_sql,
                [f.get_db_prep_save(v, connection) for f, v in zip(fields, values, strict=True)],
            )
        wall = (time.perf_counter() - start) / args.rows * 1e6
        return wall, (_backend_cpu(backend) - cpu) / args.rows * 1e6

    plain_sql = sql.replace(f'"{table}"', '"audit_plain"')
    results: dict[str, list[tuple[float, float]]] = {"partitioned": [], "plain": []}
    for _ in range(args.rounds):
        results["partitioned"].append(run(sql))
        results["plain"].append(run(plain_sql))
    print(f"audit INSERT, {args.rows} rows x {args.rounds} rounds, tables prefilled with {args.prefill} rows")
    print("| table | µs per INSERT (wall, median) | backend CPU µs per INSERT (median) |")
    print("|---|---:|---:|")
    for name, rounds in results.items():
        wall = statistics.median(r[0] for r in rounds)
        cpu = statistics.median(r[1] for r in rounds)
        print(f"| {name} | {wall:,.0f} | {cpu:,.0f} |")

    with override_settings(AUDIT_SEAL_DELAY_SECONDS=0):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {table} WHERE chain_hash = ''")  # noqa: S608
            pending = cursor.fetchone()[0]
        start = time.perf_counter()
        sealed = audit_seal().sealed
        elapsed = time.perf_counter() - start
    print(f"seal: {sealed:,} of {pending:,} rows in {elapsed:.1f} s = {sealed / elapsed:,.0f} rows/s")
    start = time.perf_counter()
    call_command("audit", "verify")
    elapsed = time.perf_counter() - start
    print(f"verify: {sealed:,} rows in {elapsed:.1f} s = {sealed / elapsed:,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
