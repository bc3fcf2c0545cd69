"""Token fetch path benchmark (issues 7 and 20): the hot path measured against the web stack's floor.
docs/benchmarks.md ("Token path") has the results and how to read them.

    make bench                                        # full run: 10^4 then 10^6 stored connections
    .venv/bin/python bench/token_bench.py --scales 10000 --rounds 3 --duration 3   # quick look

Starts the real processes with production settings (DEBUG off, granian with docker/serve.py's
options, or gunicorn with docker/gunicorn.conf.py under --server gunicorn; PostgreSQL, Redis;
the same server model and worker counts for
gateway and broker and for every case) in a fresh database (BENCH_DATABASE_URL, default
`dromos_bench`, dropped and recreated; BENCH_REDIS_URL, default Redis database 7), seeds it
with active connections whose tokens are encrypted exactly as the broker stores them, and
drives load from a separate process with `wrk` (installed with apt-get when missing and run
as root). Every request picks a random connection id (and a random API key) from the
seeded set.

Cases, measured in the same run and alternated (A B C D A B C D …, several rounds; the
table shows medians, and ratios are medians of per-round ratios to the floor of the same
round, so they hold on a noisy machine):

1. floor          GET {gateway}/v1/ping: the gateway's middleware and view machinery, no
                  authentication, no database: what the stack costs to answer anything;
2. broker         GET {broker}/internal/v1/connections/{id}/token (X-API-Key, workspace):
                  one hop, database, decryption, audit row;
3. gateway        GET {gateway}/v1/token/{id}: API key, throttle, gateway→broker hop, all of 2;
4. gateway+auto   the same with ?auto_refresh=true on tokens that need no refresh;
5. proxy          GET {gateway}/v1/proxy/{id}/user: the API proxy (API key with scope
                  `proxy`, throttle, egress policy, the token from the process cache or
                  the broker, the upstream call, the audit row). The upstream is the raw
                  floor app (floor-wsgi), set as the provider's API base URL; its CPU is in
                  the summed column (≈ 0.02 ms, floor-wsgi's row).

Prints one Markdown table per scale (requests/s, p50, p99, ratios to the floor, errors, CPU
time per request of each group of processes), resident memory per worker, the
10^6 / 10^4 comparison and the issue's targets, met or missed; writes the raw numbers to
var/bench/token_bench.json. Exits non-zero when any request failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "devtools"))

from stack import Stack, free_port, reset_postgres_database  # noqa: E402

from bench.seed import access_token_for, seed_connections  # noqa: E402

LUA = ROOT / "bench" / "random_ids.lua"
GUNICORN_CONF = ROOT / "docker" / "gunicorn.conf.py"
WORKSPACE = "bench"
PROVIDER = "bench"
CASES = ("floor-wsgi", "floor", "broker", "gateway", "gateway+auto", "proxy")
UPSTREAM_BODY = {"status": "ok"}  # what bench/floor_app.py answers: the proxy case's upstream
GROUPS = ("gateway", "broker", "postgres", "redis", "floor")  # the servers' processes: summed per request


@dataclass
class BenchStack(Stack):
    """The gateway and the broker under gunicorn, nothing else (no Celery, no OIDC provider):
    the token path needs neither, and idle processes would only add noise."""

    # None: production's value (docker/gunicorn.conf.py, from the CPU count), identical for both roles.
    workers: int | None = None
    worker_class: str | None = None
    threads: int | None = None
    access_log: bool = False  # production's gunicorn.conf.py leaves it off (the app logs each request)
    server: str = "granian"  # production's (docker/serve.py); or "gunicorn" (HTTP_SERVER=gunicorn)
    floor_port: int | None = None

    @property
    def floor_url(self) -> str:
        return f"http://127.0.0.1:{self.floor_port}"

    def start(self) -> BenchStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gateway_port = self.gateway_port or free_port()
        self.broker_port = self.broker_port or free_port()
        self.env = self._base_env()
        try:
            self.manage("broker", "migrate", "--noinput", "-v0")
            self.manage("gateway", "migrate", "--noinput", "-v0")
            for role, port in (("broker", self.broker_port), ("gateway", self.gateway_port)):
                # As in production (docker/entrypoint.sh): one Prometheus directory per role.
                metrics_dir = self.workdir / f"metrics-{role}"
                metrics_dir.mkdir(exist_ok=True)
                self.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
                self._spawn(role, self.server_args(port), role)
            self.env.pop("PROMETHEUS_MULTIPROC_DIR")
            # The raw floor: a framework-less WSGI app under the same server (bench/floor_app.py).
            self.floor_port = self.floor_port or free_port()
            self._spawn("floor", self.server_args(self.floor_port, app="bench.floor_app:application"), "gateway")
            self._wait_http(f"{self.broker_url}/healthz", "broker")
            self._wait_http(f"{self.gateway_url}/healthz", "gateway")
            self._wait_http(f"{self.floor_url}/", "floor")
        except BaseException:
            self.stop()
            raise
        return self

    def server_args(self, port: int, app: str = "dromos.wsgi:application") -> list[str]:
        if self.server == "granian":
            return self.granian_args(port, app)
        return self.gunicorn_args(port, app)

    def granian_args(self, port: int, app: str) -> list[str]:
        """granian (Rust HTTP server, WSGI interface) with docker/serve.py's production options
        (the worker and thread counts of this run; recycling and logging do not change the cost)."""
        model = self.server_model()
        return [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "wsgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(model["workers"]),
            "--blocking-threads",
            str(model["threads"]),
            "--runtime-threads",
            "1",
            "--no-ws",
            "--log-level",
            "warning",
            app,
        ]

    def gunicorn_args(self, port: int, app: str = "dromos.wsgi:application") -> list[str]:
        args = [sys.executable, "-m", "gunicorn", app]
        if GUNICORN_CONF.exists():
            args += ["--config", str(GUNICORN_CONF)]  # production's; the options below override it
        args += ["-b", f"127.0.0.1:{port}", "--graceful-timeout", "5"]
        for flag, value in (("-w", self.workers), ("-k", self.worker_class), ("--threads", self.threads)):
            if value is not None:
                args += [flag, str(value)]
        if self.access_log:
            args += ["--access-logfile", "-"]
        return args

    def server_model(self) -> dict[str, object]:
        """The worker model both roles run: production's configuration with this run's overrides."""
        saved = dict(os.environ)
        try:
            os.environ.update({k: v for k, v in self.env.items() if k.startswith("GUNICORN_")})
            config = runpy.run_path(str(GUNICORN_CONF)) if GUNICORN_CONF.exists() else {}
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return {
            "server": self.server,
            "workers": self.workers or config.get("workers", 1),
            "worker_class": "granian wsgi"
            if self.server == "granian"
            else self.worker_class or config.get("worker_class", "sync"),
            "threads": self.threads or config.get("threads", 1),
            "max_requests": config.get("max_requests", 0),
        }

    def worker_memory_kib(self, role: str) -> list[dict[str, int]]:
        """Each worker's resident memory (/proc/PID/smaps_rollup, KiB): `rss` (every page it
        maps, shared ones in full), `file` (of which pages of files: the interpreter, the
        shared libraries, mostly shared with every process that loads them), `pss` (shared
        pages divided among their sharers) and `private` (pages no other process maps)."""
        master = self.processes[role].pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        workers = []
        for pid in children:
            fields = {}
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
                name, _, value = line.partition(":")
                fields[name] = int(value.split()[0])
            anonymous = fields.get("Anonymous", 0)
            workers.append(
                {
                    "rss": fields["Rss"],
                    "file": fields["Rss"] - anonymous - fields.get("Pss_Shmem", 0),
                    "pss": fields["Pss"],
                    "private": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
                }
            )
        return workers


@dataclass
class Case:
    name: str
    base_url: str
    prefix: str
    suffix: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    keyed: bool = False  # a random gateway API key per request
    random_id: bool = True  # path = prefix + random connection id + suffix

    def path(self, connection_id: str) -> str:
        return self.prefix + connection_id + self.suffix if self.random_id else self.prefix


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU time per request, by process group


_CLK = os.sysconf("SC_CLK_TCK")


def _proc_ticks(pid: int | str, *, with_children: bool = False) -> int:
    """utime + stime of one process (all its threads); with the children it has reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    ticks = int(fields[11]) + int(fields[12])
    return ticks + int(fields[13]) + int(fields[14]) if with_children else ticks


class CpuMeter:
    """CPU seconds spent by each process group: each gunicorn role (master, live workers and
    the workers it has already reaped: max_requests recycles them), the PostgreSQL backends
    serving the benchmark's database, Redis and wrk. CPU time per request is far steadier
    than requests per second on a shared machine."""

    def __init__(self, masters: dict[str, int], database: str) -> None:
        self.masters, self.database = masters, database

    def snapshot(self) -> dict[str, int]:
        totals = {
            role: _proc_ticks(pid, with_children=True) + sum(_proc_ticks(child) for child in _children(pid))
            for role, pid in self.masters.items()
        }
        totals["postgres"] = totals["redis"] = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if command.startswith("postgres:") and f" {self.database} " in command:
                totals["postgres"] += _proc_ticks(entry.name)
            elif command.startswith("redis-server"):
                totals["redis"] += _proc_ticks(entry.name)
        children = os.times()
        totals["wrk"] = round((children.children_user + children.children_system) * _CLK)
        return totals

    @staticmethod
    def per_request(before: dict[str, int], after: dict[str, int], requests: int) -> dict[str, float]:
        return {k: (after[k] - before[k]) / _CLK * 1000 / max(requests, 1) for k in after}


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def wrk_run(
    case: Case,
    *,
    ids_file: Path,
    keys_file: Path,
    duration: float,
    concurrency: int,
    threads: int,
    meter: CpuMeter | None = None,
) -> Sample:
    args = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
    ]
    for name, value in case.headers.items():
        args += ["-H", f"{name}: {value}"]
    args += [case.base_url, "--", str(ids_file) if case.random_id else "-", case.prefix, case.suffix]
    args += [str(keys_file), "Authorization"] if case.keyed else ["-", ""]
    before = meter.snapshot() if meter else {}
    result = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60)
    after = meter.snapshot() if meter else {}
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed for {case.name}:\n{result.stdout}\n{result.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Sample(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        requests=data["requests"],
        cpu_ms=CpuMeter.per_request(before, after, data["requests"]) if meter else {},
    )


def check_case(case: Case, connection_id: str, key: str) -> None:
    """One request by hand before measuring: the case must answer what it claims to."""
    path = case.path(connection_id)
    headers = dict(case.headers)
    if case.keyed:
        headers["Authorization"] = key
    response = requests.get(case.base_url + path, headers=headers, timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"{case.name}: GET {path} answered {response.status_code}: {response.text[:300]}")
    body = response.json()
    if case.name == "proxy":
        if body != UPSTREAM_BODY:
            raise RuntimeError(f"proxy: the answer is not the upstream's: {response.text[:300]}")
    elif not case.name.startswith("floor") and body.get("access_token") != access_token_for(connection_id):
        raise RuntimeError(f"{case.name}: the answer does not carry the seeded token")


def ensure_wrk() -> bool:
    """wrk (Debian package `wrk`) on PATH; installed with apt-get when missing and we are root."""
    if shutil.which("wrk"):
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing the wrk load generator: apt-get install -y wrk", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "install", "-y", "-qq", "wrk"],
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "wrk"],
        ):
            subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=False)
            if shutil.which("wrk"):
                return True
    print("bench/token_bench.py needs the wrk load generator on PATH: sudo apt-get install -y wrk", file=sys.stderr)
    return False


AUDIT_TABLE = "broker_app_auditevent"
# Row g of `total`: g % 10 of 0-3 today (between midnight and now), 4-6 yesterday, 7-9 the day
# before; within its day at g / total of the way, so each day's rows come in time order as
# traffic writes them (its time indexes grow at their end; the connection ids are random).
SEED_AUDIT_SQL = (
    "INSERT INTO broker_app_auditevent (connection_id, workspace, actor, action, detail, created_at) "
    "SELECT 'c_' || md5(g::text), 'bench', 'apikey:abcd1234', 'token.read', '{}', "
    "CASE WHEN g %% 10 < 4 THEN d.today + (g::float8 / %(total)s * d.elapsed) * interval '1 second' "
    "ELSE d.today - (1 + (g %% 10 >= 7)::int) * interval '1 day' "
    "+ (g::float8 / %(total)s * 86399) * interval '1 second' END "
    "FROM (SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS today, "
    "extract(epoch FROM now() - date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS elapsed) d, "
    "generate_series(%(first)s::bigint, %(last)s::bigint) g"
)


def seed_audit(database_url: str, rows: int) -> None:
    """`rows` token.read audit rows: 40 % in today's partition (the one token reads insert
    into: at the issue's 450 reads/s a day holds ≈ 40 million rows), 30 % in each of the two
    days before, in daily partitions made for them as the beat task makes them ahead
    (otherwise those rows would fill the default partition). Written by INSERT … SELECT
    generate_series on one connection per CPU (disjoint ranges; each day's rows in time
    order, as traffic writes them), then vacuumed and analysed partition by partition."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    today = datetime.now(UTC).date()
    days = [today - timedelta(days=back) for back in (2, 1)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for day in days:
            name, start = f"{AUDIT_TABLE}_p{day:%Y%m%d}", datetime(day.year, day.month, day.day, tzinfo=UTC)
            if conn.execute("SELECT to_regclass(%s)", [name]).fetchone()[0] is None:
                conn.execute(f'CREATE TABLE "{name}" (LIKE "{AUDIT_TABLE}" INCLUDING DEFAULTS INCLUDING STORAGE)')
                conn.execute(
                    f'ALTER TABLE "{AUDIT_TABLE}" ATTACH PARTITION "{name}" '
                    f"FOR VALUES FROM ('{start.isoformat()}') TO ('{(start + timedelta(days=1)).isoformat()}')"
                )
    parts = max(1, min(os.cpu_count() or 1, 4))
    bounds = [rows * i // parts for i in range(parts + 1)]

    def insert(first: int, last: int) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(SEED_AUDIT_SQL, {"first": first, "last": last, "total": rows}, prepare=False)

    def vacuum(name: str) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'VACUUM ANALYZE "{name}"')

    with ThreadPoolExecutor(parts) as pool:
        for done in [pool.submit(insert, bounds[i] + 1, bounds[i + 1]) for i in range(parts)]:
            done.result()
        with psycopg.connect(database_url, autocommit=True) as conn:
            partitions = [
                row[0]
                for row in conn.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = %s::regclass",
                    [AUDIT_TABLE],
                )
            ]
        for done in [pool.submit(vacuum, name) for name in partitions]:
            done.result()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"ANALYZE {AUDIT_TABLE}")
        conn.execute("CHECKPOINT")


def audit_partition_rows(database_url: str) -> dict[str, int]:
    """Rows per partition of the audit table (the planner's estimate, exact after ANALYZE)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        return {
            name: int(count)
            for name, count in conn.execute(
                "SELECT c.relname, c.reltuples FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = %s::regclass AND c.reltuples > 0 ORDER BY c.relname",
                [AUDIT_TABLE],
            )
        }


def audit_rows(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM broker_app_auditevent").fetchone()[0]


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:"))
    )
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def summarise(samples: dict[str, list[Sample]]) -> dict[str, dict[str, float]]:
    rounds = len(samples["floor"])
    table = {}
    for name, runs in samples.items():
        ratios = [runs[i].rps / samples["floor"][i].rps for i in range(rounds)]
        p99_ratios = [runs[i].p99_ms / samples["floor"][i].p99_ms for i in range(rounds)]
        table[name] = {
            "rps": statistics.median(s.rps for s in runs),
            "p50_ms": statistics.median(s.p50_ms for s in runs),
            "p99_ms": statistics.median(s.p99_ms for s in runs),
            "ratio": statistics.median(ratios),
            "p99_ratio": statistics.median(p99_ratios),
            "errors": sum(s.errors for s in runs),
            "requests": sum(s.requests for s in runs),
            "cpu_ms": {group: statistics.median(s.cpu_ms.get(group, 0.0) for s in runs) for group in runs[0].cpu_ms},
        }
    return table


def render(
    scale: int, table: dict[str, dict[str, float]], rss: dict[str, list[int]], concurrency: int, extra: str = ""
) -> str:
    lines = [
        f"connections stored: {scale:,}  ·  {concurrency} concurrent clients" + (f"  ·  {extra}" if extra else ""),
        "",
        "| case | requests/s | p50 ms | p99 ms | throughput vs floor | p99 vs floor | errors / requests "
        "| CPU ms/request: gateway · broker · postgres · redis | CPU ms/request, summed | wrk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in table.items():
        cpu = row.get("cpu_ms") or {}
        cpu_text = " · ".join(f"{cpu.get(g, 0.0):.2f}" for g in ("gateway", "broker", "postgres", "redis"))
        cpu_text += f" | **{server_cpu_ms(row):.2f}** | {cpu.get('wrk', 0.0):.2f}"
        lines.append(
            f"| {name} | {row['rps']:,.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['ratio']:.0%} | {row['p99_ratio']:.2f}× | {row['errors']} / {row['requests']:,} "
            f"| {cpu_text} |"
        )
    lines.append("")
    lines.append(memory_line(rss))
    return "\n".join(lines)


def memory_line(memory: dict[str, list[dict[str, int]]]) -> str:
    """Per worker, MiB: RSS, then in brackets the part that is pages of files (shared
    libraries), PSS and private memory."""

    def one(kind: str) -> str:
        return "; ".join(
            f"{role} " + " / ".join(f"{worker[kind] / 1024:.0f}" for worker in workers)
            for role, workers in memory.items()
        )

    return (
        f"RSS per worker: {one('rss')} MiB (of it, pages of files: {one('file')}; "
        f"PSS: {one('pss')}; private: {one('private')})"
    )


def server_cpu_ms(row: dict) -> float:
    """CPU per request of everything that serves it (both roles, PostgreSQL, Redis), not wrk."""
    return sum(v for k, v in (row.get("cpu_ms") or {}).items() if k in GROUPS)


def target_check(results: dict, scales: list[int]) -> str:
    """Issue 20's targets against this run (every measured pass: each scale, the large audit
    table), one Markdown list item each."""
    lines = ["targets (issue 20; CPU summed over gateway, broker, PostgreSQL and Redis):"]

    def item(ok: bool, text: str) -> None:
        lines.append(f"- {'met' if ok else 'MISSED'}: {text}")

    for label, data in results["scales"].items():
        table = data["table"]
        name = f"{label:,}" if isinstance(label, int) else label
        if "gateway" in table:
            cpu = server_cpu_ms(table["gateway"])
            item(cpu <= 1.5, f"{name}: CPU per gateway token fetch {cpu:.2f} ms (≤ 1.5 ms)")
            item(
                table["gateway"]["p99_ratio"] <= 3,
                f"{name}: gateway p99 {table['gateway']['p99_ratio']:.2f}× the floor's (≤ 3×)",
            )
            item(
                table["gateway"]["ratio"] >= 0.40,
                f"{name}: gateway throughput {table['gateway']['ratio']:.0%} of the floor (≥ 40%)",
            )
        if "broker" in table:
            cpu = server_cpu_ms(table["broker"])
            item(cpu <= 0.7, f"{name}: CPU per broker direct read {cpu:.2f} ms (≤ 0.7 ms)")
        worst = max((w["rss"] for workers in data["memory_kib"].values() for w in workers), default=0) / 1024
        item(worst <= 100, f"{name}: largest worker RSS {worst:.0f} MiB (≤ 100 MiB)")
    errors = sum(row["errors"] for data in results["scales"].values() for row in data["table"].values())
    item(errors == 0, f"{errors} failed requests (0)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="10000,1000000", help="comma-separated numbers of stored connections")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5, help="seconds per case per round")
    parser.add_argument("--warmup", type=float, default=3, help="seconds per case before the rounds")
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--workers", type=int, help="gunicorn workers per role (default: production's)")
    parser.add_argument("--worker-class", help="gunicorn worker class (default: production's, gthread)")
    parser.add_argument("--threads", type=int, help="threads per gthread worker (default: production's)")
    parser.add_argument("--access-log", action="store_true", help="also gunicorn's own access log")
    parser.add_argument(
        "--server",
        choices=("gunicorn", "granian"),
        default="granian",
        help="the HTTP server of every role (production: granian)",
    )
    parser.add_argument("--keys", type=int, default=8, help="gateway API keys, picked at random per request")
    parser.add_argument(
        "--audit-rows",
        type=int,
        default=10_000_000,
        help="rows put into the audit table before the last scale is measured again (0: skip that pass)",
    )
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for both servers (experiments)",
    )
    parser.add_argument(
        "--hold",
        action="store_true",
        help="seed the first scale, print how to reach the stack, keep it up until interrupted",
    )
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "token_bench.json"))
    args = parser.parse_args()

    if not ensure_wrk():
        return 2
    scales = sorted(int(x) for x in args.scales.split(","))
    cases_wanted = [c for c in args.cases.split(",") if c]
    if "floor" not in cases_wanted:
        cases_wanted.insert(0, "floor")
    cases_wanted.sort(key=lambda name: -1 if name == "floor" else 0)  # the reference comes first
    database_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dromos_bench")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
    host = machine()
    print(f"machine: {host['nproc']} CPUs ({host['cpu']}), {host['ram']} RAM, load {host['load_before']}")

    reset_postgres_database(database_url)
    workdir = Path(tempfile.mkdtemp(prefix="token-bench-"))
    stack = BenchStack(
        workdir=workdir,
        database_url=database_url,
        redis_url=redis_url,
        celery=False,
        beat=False,
        workers=args.workers,
        worker_class=args.worker_class,
        threads=args.threads,
        access_log=args.access_log,
        # The benchmark measures the throttle's cost, not its limit.
        # The benchmark measures the throttle's and the bulkhead's cost, not their limits.
        extra_env={
            "API_KEY_RATE_LIMIT": "100000000/min",
            "GATEWAY_SLOW_CALLS_PER_KEY": "100000",
            "GATEWAY_SLOW_CALLS_PER_WORKSPACE": "100000",
            **dict(item.split("=", 1) for item in args.env),
        },
        server=args.server,
    )
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args),
        "scales": {},
    }
    failed = False
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    try:
        stack.start()
        servers = stack.server_model()
        results["servers"] = servers
        print(
            f"servers: {servers['server']} ({servers['worker_class']}), {servers['workers']} workers × "
            f"{servers['threads']} threads per role (production's counts), DEBUG off, "
            f"TOKEN_FAST_PATH={stack.env.get('TOKEN_FAST_PATH', 'true')}, PostgreSQL + Redis",
            flush=True,
        )
        stack.manage(
            "broker",
            "provider",
            "upsert",
            "--name",
            PROVIDER,
            "--template",
            "github",
            "--client-id",
            "bench",
            "--client-secret",
            secrets.token_urlsafe(16),
            "--api-base-url",
            stack.floor_url,  # the proxy case's upstream
            "--no-check",
        )
        provider_id = stack.manage(
            "broker",
            "shell",
            "--no-imports",
            "-c",
            f"from broker_app.models import Provider; print(Provider.objects.get(name='{PROVIDER}').pk)",
        ).stdout.strip()
        made = stack.manage(
            "gateway",
            "shell",
            "--no-imports",
            "-c",
            "from gateway_app.keys import apikey_create\n"
            f"for i in range({args.keys}):\n"
            f"    print(apikey_create(workspace='{WORKSPACE}', name=f'bench-{{i}}', "
            "scopes=['tokens:read', 'proxy'])[1])",
        )
        keys = [f"Bearer {line}" for line in made.stdout.split()]
        keys_file = workdir / "keys.txt"
        keys_file.write_text("\n".join(keys) + "\n")
        ids_file = workdir / "ids.txt"
        ids_file.write_text("")

        broker_headers = {"X-API-Key": stack.env["BROKER_API_KEY"], "X-Dromos-Workspace": WORKSPACE}
        all_cases = {
            "floor-wsgi": Case("floor-wsgi", stack.floor_url, "/", random_id=False),
            "floor": Case("floor", stack.gateway_url, "/v1/ping", random_id=False),
            "broker": Case("broker", stack.broker_url, "/internal/v1/connections/", "/token", broker_headers),
            "gateway": Case("gateway", stack.gateway_url, "/v1/token/", keyed=True),
            "gateway+auto": Case("gateway+auto", stack.gateway_url, "/v1/token/", "?auto_refresh=true", keyed=True),
            "proxy": Case("proxy", stack.gateway_url, "/v1/proxy/", "/user", keyed=True),
        }
        cases = [all_cases[name] for name in cases_wanted]
        stored = 0
        for scale in scales:
            started = time.monotonic()
            stored += seed_connections(
                database_url=database_url,
                raw_keys=stack.env["TOKEN_ENCRYPTION_KEYS"],
                workspace=WORKSPACE,
                provider_id=provider_id,
                count=scale - stored,
                ids_file=ids_file,
            )
            print(f"\nseeded {stored:,} connections in {time.monotonic() - started:.0f} s")
            sample_id = ids_file.read_text().split("\n", 1)[0]
            for case in cases:
                check_case(case, sample_id, keys[0])
            if args.hold:
                env_file = stack.write_env_file()  # for in-process measurements (bench/token_micro.py)
                print(
                    json.dumps(
                        {
                            "gateway": stack.gateway_url,
                            "broker": stack.broker_url,
                            "broker_key": stack.env["BROKER_API_KEY"],
                            "api_key": keys[0],
                            "ids": str(ids_file),
                            "keys": str(keys_file),
                            "logs": str(workdir),
                            "env_file": str(env_file),
                            "pids": {k: p.pid for k, p in stack.processes.items()},
                        }
                    ),
                    flush=True,
                )
                while True:
                    time.sleep(3600)
            meter = CpuMeter(
                {role: stack.processes[role].pid for role in ("gateway", "broker", "floor")},
                database_url.rsplit("/", 1)[1],
            )
            run = dict(
                ids_file=ids_file,
                keys_file=keys_file,
                concurrency=args.concurrency,
                threads=args.wrk_threads,
                meter=meter,
            )
            for case in cases:
                wrk_run(case, duration=args.warmup, **run)
            samples: dict[str, list[Sample]] = {case.name: [] for case in cases}
            for round_number in range(args.rounds):
                for case in cases:
                    samples[case.name].append(wrk_run(case, duration=args.duration, **run))
                print(
                    f"  round {round_number + 1}/{args.rounds}: "
                    + ", ".join(f"{name} {runs[-1].rps:,.0f}/s" for name, runs in samples.items()),
                    flush=True,
                )
            rss = {role: stack.worker_memory_kib(role) for role in ("gateway", "broker")}
            table = summarise(samples)
            failed = failed or any(row["errors"] for row in table.values())
            results["scales"][scale] = {
                "table": table,
                "memory_kib": rss,
                "samples": {k: [vars(s) for s in v] for k, v in samples.items()},
            }
            print()
            print(render(scale, table, rss, args.concurrency))
        if args.audit_rows:
            started = time.monotonic()
            seed_audit(database_url, args.audit_rows)
            label = f"{scales[-1]}+audit"
            partitions = audit_partition_rows(database_url)
            print(
                f"\nadded {args.audit_rows:,} audit rows in {time.monotonic() - started:.0f} s; rows per partition: "
                + ", ".join(f"{name.removeprefix(AUDIT_TABLE + '_')} {count:,}" for name, count in partitions.items())
            )
            samples = {case.name: [] for case in cases}
            for case in cases:
                wrk_run(case, duration=args.warmup, **run)
            for round_number in range(args.rounds):
                for case in cases:
                    samples[case.name].append(wrk_run(case, duration=args.duration, **run))
                print(
                    f"  round {round_number + 1}/{args.rounds}: "
                    + ", ".join(f"{name} {runs[-1].rps:,.0f}/s" for name, runs in samples.items()),
                    flush=True,
                )
            rss = {role: stack.worker_memory_kib(role) for role in ("gateway", "broker")}
            table = summarise(samples)
            failed = failed or any(row["errors"] for row in table.values())
            results["scales"][label] = {
                "table": table,
                "memory_kib": rss,
                "audit_rows": audit_rows(database_url),
                "audit_partitions": partitions,
            }
            print()
            print(render(scales[-1], table, rss, args.concurrency, f"{audit_rows(database_url):,} audit rows"))
        if len(scales) > 1:
            small, large = results["scales"][scales[0]]["table"], results["scales"][scales[-1]]["table"]
            print(
                f"\nthroughput with {scales[-1]:,} stored connections vs {scales[0]:,} (raw, and normalised "
                "by each scale's own floor, which removes the machine's drift between the two runs):\n"
            )
            print(
                "| case | throughput, raw | throughput, floor-normalised | server CPU per request |\n"
                "|---|---:|---:|---:|"
            )
            for name in cases_wanted[1:]:
                raw = large[name]["rps"] / small[name]["rps"]
                normalised = large[name]["ratio"] / small[name]["ratio"]
                cpu = server_cpu_ms(large[name]) / max(server_cpu_ms(small[name]), 1e-9)
                print(f"| {name} | {raw:.0%} | {normalised:.0%} | {cpu:.0%} |")
                results.setdefault("scaling", {})[name] = {"raw": raw, "normalised": normalised, "cpu": cpu}
        print()
        print(target_check(results, scales))
    finally:
        stack.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nraw numbers: {out}; server logs: {workdir}")
    if failed:
        print("FAILED: some requests errored (see the errors column)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
