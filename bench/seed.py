"""Fast seeding for the token benchmark: active connections with real, row-bound ciphertexts.

Rows are written with PostgreSQL COPY. Tokens are encrypted by `broker_app.crypto.KeyRing`
with the broker's own associated-data scheme (`<connection id>:<field>`), so the broker
decrypts them exactly as it decrypts tokens stored by a consent flow. Encryption runs in a
process pool (one process per core); 10^6 rows took 100-130 s on two busy cores.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from broker_app.crypto import KeyRing, parse_keys

TABLE = "broker_app_connection"
SCOPES = json.dumps(["openid", "email", "profile", "offline_access"])
# An id_token of realistic size (a signed JWT of ~900 characters); identical for every row,
# each row still gets its own ciphertext (own nonce, own associated data).
_ID_TOKEN = ".".join(base64.urlsafe_b64encode(os.urandom(n)).decode().rstrip("=") for n in (27, 480, 192))

# Every NOT NULL column without a database default must be listed here; `seed` refuses to
# run (naming the column) if a migration adds one it does not know.
COLUMNS = (
    "id",
    "workspace",
    "user_id",
    "provider_id",
    "status",
    "scopes",
    "granted_scopes",
    "params",
    "return_url",
    "nonce_digest",
    "pkce_verifier_enc",
    "access_token_enc",
    "refresh_token_enc",
    "id_token_enc",
    "token_type",
    "expires_at",
    "token_version",
    "refresh_failures",
    "account",
    "metadata",
    "error",
    "error_description",
    "created_at",
    "updated_at",
    "activated_at",
    "revoke_pending",
    "flow",
    "device_code_enc",
    "tags",
    "last_read_at",
)


def access_token_for(connection_id: str) -> str:
    """The plaintext access token seeded for a connection (~200 characters, like Google's)."""
    return f"ya29.bench-{connection_id}-" + "x" * 150


def _rows(args: tuple[str, str, str, str, int, int]) -> tuple[list[str], bytes]:
    """Build `count` COPY text lines; runs in a worker process."""
    raw_keys, workspace, provider_id, stamp, count, seed = args
    ring = KeyRing(parse_keys(raw_keys))
    ids, lines = [], []
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    for n in range(count):
        cid = "c_" + secrets.token_urlsafe(24)
        ids.append(cid)
        access = ring.encrypt(access_token_for(cid), aad=f"{cid}:access_token")
        refresh = ring.encrypt(f"rt-bench-{secrets.token_urlsafe(32)}", aad=f"{cid}:refresh_token")
        id_token = ring.encrypt(_ID_TOKEN, aad=f"{cid}:id_token")
        values = (
            cid,
            workspace,
            f"user-{seed}-{n}",
            provider_id,
            "active",
            SCOPES,
            SCOPES,
            "{}",
            "https://app.example.com/oauth/return",
            "",
            "",
            access,
            refresh,
            id_token,
            "Bearer",
            expires,
            "1",
            "0",
            "{}",
            "{}",
            "",
            "",
            stamp,
            stamp,
            stamp,
            "f",
            "code",
            "",
            "{}",
            stamp,  # read before: the steady state, where a read writes no usage mark (one an hour)
        )
        lines.append("\t".join(values))
    return ids, ("\n".join(lines) + "\n").encode()


def _check_columns(conn: psycopg.Connection) -> None:
    required = {
        row[0]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "AND is_nullable = 'NO' AND column_default IS NULL",
            [TABLE],
        )
    }
    unknown = required - set(COLUMNS)
    if unknown:
        raise SystemExit(
            f"bench/seed.py does not know the NOT NULL column(s) {sorted(unknown)} of {TABLE}; add them to COLUMNS"
        )


def seed_connections(
    *,
    database_url: str,
    raw_keys: str,
    workspace: str,
    provider_id: str,
    count: int,
    ids_file: Path,
    chunk: int = 20_000,
) -> int:
    """Append `count` active connections; append their ids to `ids_file`. Returns rows written."""
    stamp = datetime.now(UTC).isoformat()
    jobs = [
        (raw_keys, workspace, provider_id, stamp, min(chunk, count - start), start) for start in range(0, count, chunk)
    ]
    written = 0
    with psycopg.connect(database_url) as conn, open(ids_file, "a") as ids_out:
        _check_columns(conn)
        with (
            ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool,
            conn.cursor() as cursor,
            cursor.copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN") as copy,
        ):
            for ids, block in pool.map(_rows, jobs):
                copy.write(block)
                ids_out.write("\n".join(ids) + "\n")
                written += len(ids)
        conn.commit()
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Fresh statistics and a checkpoint now, so neither lands in the middle of a measurement.
        conn.execute(f"VACUUM ANALYZE {TABLE}")
        conn.execute("CHECKPOINT")
    return written
