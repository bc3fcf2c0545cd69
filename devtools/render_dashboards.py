"""The Grafana dashboard's panels and one trace, rendered as PNGs from a real run (issue 21):
Grafana and Jaeger do not install on these machines, Debian's `prometheus` does.

    apt-get install -y prometheus                      # once; CI does not run this script
    .venv/bin/python devtools/render_dashboards.py [--out docs/img] [--seconds 180]

1. Starts a local stack as real processes (devtools/stack.py: the npm OIDC provider registered
   twice, as `local` and `google`; gunicorn gateway and broker; a Celery worker and beat;
   PostgreSQL database `<DATABASE_URL's>_render`, reset; REDIS_URL), each web role with its own
   PROMETHEUS_MULTIPROC_DIR as in production (DATABASE_URL and REDIS_URL default to the
   machine's 127.0.0.1:5432 and 127.0.0.1:6379/12), the worker serving its /metrics, and
   OpenTelemetry on (OTLP over HTTP to a small receiver in this script).
2. Starts Prometheus scraping the gateway (bearer ops token), the broker (its X-API-Key added
   by a small proxy here: Debian's Prometheus 2.42 cannot set headers) and the worker, every 2 s.
3. Runs a short load: connections through the real consent flow (one denied, one left
   pending), token fetches (a tenth with auto_refresh that refreshes at the provider), unknown
   ids, proxied calls, a webhook receiver that fails for a while, a phase where `google`'s
   client secret is wrong (refreshes rejected), revocations, grants ending in 1–60 days.
4. Queries Prometheus's HTTP API (query_range) with every panel's PromQL from
   docs/grafana/dromos.json and draws each panel with matplotlib: docs/img/dashboard.png
   (every panel, laid out as in Grafana) and docs/img/panel-<name>.png (the main ones).
5. Fetches one token with auto_refresh under a known trace id and draws that trace, as the
   receiver got it from gateway, broker and worker, as a waterfall: docs/img/trace-token-fetch.png.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from oidc_consent import complete_consent
from oidc_server import free_port
from stack import CLIENT_ID, Stack, reset_postgres_database

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "dromos.json"
RETURN_URL = "http://127.0.0.1:1/oauth/return"  # nothing listens: the consent walk stops there
SCRAPE_SECONDS = 2
RATE_WINDOW = "20s"  # stands in for Grafana's $__rate_interval at a 2 s scrape interval
MAIN_PANELS = {
    "Token fetch rate by outcome": "token-fetches",
    "Token fetch latency (gateway)": "token-latency",
    "Refresh outcomes by provider": "refresh-outcomes",
    "Connections by status": "connections",
    "Grants nearing their end": "grants-ending",
}


# ---------------------------------------------------------------- OTLP/HTTP receiver


class SpanStore:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[dict] = []

    def add(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        {
                            "service": resource.get("service.name", "?"),
                            "scope": scope_spans.scope.name,
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "kind": span.kind,
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "attributes": {
                                a.key: a.value.string_value or a.value.int_value or a.value.bool_value
                                for a in span.attributes
                            },
                        }
                    )
        with self.lock:
            self.spans.extend(found)

    def trace(self, trace_id: str) -> list[dict]:
        with self.lock:
            return [span for span in self.spans if span["trace_id"] == trace_id]


def start_otlp_receiver(store: SpanStore) -> tuple[ThreadingHTTPServer, int]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                store.add(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


# ---------------------------------------------------------------- helpers: header proxy, webhook receiver


def start_header_proxy(target: str, headers: dict[str, str]) -> tuple[ThreadingHTTPServer, int]:
    """GET → target with `headers` added (the broker's /metrics wants X-API-Key)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            answer = requests.get(target + self.path, headers=headers, timeout=10)
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "text/plain"))
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


def start_webhook_receiver(state: dict) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(503 if state["failing"] else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


# ---------------------------------------------------------------- Prometheus


def start_prometheus(workdir: Path, targets: dict[str, dict]) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("prometheus")
    if not binary:
        raise SystemExit("prometheus is not installed: apt-get install -y prometheus")
    jobs = []
    for job, spec in targets.items():
        entry = {
            "job_name": job,
            "scrape_interval": f"{SCRAPE_SECONDS}s",
            "scrape_timeout": f"{SCRAPE_SECONDS}s",
            "static_configs": [{"targets": [spec["target"]]}],
        }
        if "bearer" in spec:
            entry["authorization"] = {"type": "Bearer", "credentials": spec["bearer"]}
        jobs.append(entry)
    config = workdir / "prometheus.yml"  # YAML is a superset of JSON
    config.write_text(json.dumps({"global": {"scrape_interval": f"{SCRAPE_SECONDS}s"}, "scrape_configs": jobs}))
    port = free_port()
    log = open(workdir / "prometheus.log", "ab")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return process, url
        except requests.RequestException:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit(f"prometheus did not start:\n{(workdir / 'prometheus.log').read_text()[-2000:]}")


def wait_for_targets(url: str, jobs: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = requests.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        up = {t["labels"]["job"] for t in active if t["health"] == "up"}
        if jobs <= up:
            return
        time.sleep(1)
    raise SystemExit(f"Prometheus targets not up: {active}")


# ---------------------------------------------------------------- the load


class Agent:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {stack.api_key}"
        self.counts: dict[str, int] = defaultdict(int)

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self.http.request(method, self.stack.gateway_url + path, timeout=30, **kwargs)
        self.counts[f"{method} {re.sub(r'c_[A-Za-z0-9_-]+', '{id}', path.split('?')[0])} {response.status_code}"] += 1
        return response

    def connect(self, provider: str, user: str, *, deny: bool = False, consent: bool = True) -> str:
        started = self.call(
            "POST",
            "/v1/request-connection",
            json={
                "user_id": user,
                "provider_name": provider,
                "scopes": ["openid", "email", "profile", "offline_access"],
                "return_url": RETURN_URL,
            },
        )
        started.raise_for_status()
        if consent:
            complete_consent(started.json()["authUrl"], login=user.split("@")[0], deny=deny, stop_at_prefix=RETURN_URL)
        return started.json()["connection_id"]


def provider_secret(stack: Stack, name: str, secret: str) -> None:
    stack.manage(
        "broker",
        "provider",
        "upsert",
        "--name",
        name,
        "--template",
        "oidc",
        "--discovery-url",
        f"{stack.oidc.issuer}/.well-known/openid-configuration",
        "--client-id",
        CLIENT_ID,
        f"--client-secret={secret}",
        "--default-scopes",
        "openid email profile offline_access",
        "--authorize-param",
        "prompt=consent",
        "--api-base-url",
        stack.oidc.issuer,
    )


def set_grant_ends(stack: Stack, ids_and_days: list[tuple[str, float]]) -> None:
    """Absolute ends of refresh tokens (as a provider's refresh_token_expires_in would set)."""
    code = (
        "from datetime import timedelta\n"
        "from django.utils import timezone\n"
        "from broker_app.models import Connection\n"
        f"for cid, days in {ids_and_days!r}:\n"
        "    Connection.objects.filter(pk=cid).update(refresh_expires_at=timezone.now() + timedelta(days=days))\n"
    )
    stack.manage("broker", "shell", "-c", code)


def run_load(stack: Stack, seconds: float, log) -> dict:
    agent = Agent(stack)
    hook_state = {"failing": False}
    _, hook_port = start_webhook_receiver(hook_state)
    stack.manage("broker", "webhook", "add", "--workspace", "demo", "--url", f"http://127.0.0.1:{hook_port}/hooks")

    log("connecting users through the consent flow")
    local = [agent.connect("local", f"user{i}@example.com") for i in range(6)]
    google = [agent.connect("google", f"guser{i}@example.com") for i in range(4)]
    agent.connect("local", "denied@example.com", deny=True)  # failed: access_denied
    agent.connect("google", "pending@example.com", consent=False)  # stays pending
    set_grant_ends(stack, list(zip([*local, *google], [0.5, 3, 6, 10, 20, 45, 2, 12, 25, 80], strict=True)))
    active = {"local": list(local), "google": list(google)}

    phases = [
        (0.0, "steady: token fetches, a tenth with auto_refresh"),
        (0.35, "google's client secret is wrong: its refreshes are rejected; webhook receiver failing"),
        (0.6, "fixed; more traffic, revocations"),
    ]
    started = time.monotonic()
    phase = -1
    rate = 8.0
    while (elapsed := time.monotonic() - started) < seconds:
        fraction = elapsed / seconds
        current = max(i for i, (at, _) in enumerate(phases) if fraction >= at)
        if current != phase:
            phase = current
            log(f"phase {phase + 1}: {phases[phase][1]}")
            if phase == 1:
                provider_secret(stack, "google", "not-the-secret")
                hook_state["failing"] = True
                agent.connect("local", "says-no@example.com", deny=True)  # connection.failed: delivery retried
            elif phase == 2:
                provider_secret(stack, "google", stack.client_secret)
                hook_state["failing"] = False
                rate = 14.0
                for cid in (active["local"].pop(), active["google"].pop()):
                    agent.call("DELETE", f"/v1/connections/{cid}")
                agent.connect("local", "late@example.com")  # a new user (connection.activated)
        provider = random.choice(["local", "local", "google"])
        cid = random.choice(active[provider])
        roll = random.random()
        if roll < 0.10:
            agent.call("GET", f"/v1/token/{cid}?auto_refresh=true&min_ttl=7200")
        elif roll < 0.13:
            agent.call("GET", f"/v1/token/c_{secrets.token_urlsafe(24)}")  # unknown: 404
        elif roll < 0.18:
            agent.call("GET", f"/v1/proxy/{cid}/me")
        elif roll < 0.20:
            agent.call("POST", f"/v1/refresh/{cid}")
        elif roll < 0.22:
            agent.call("GET", f"/v1/check-connection/{cid}")
        else:
            agent.call("GET", f"/v1/token/{cid}")
        time.sleep(random.expovariate(rate))
    return {"counts": dict(agent.counts), "local": active["local"]}


# ---------------------------------------------------------------- rendering


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    answer = requests.get(
        f"{url}/api/v1/query_range",
        params={"query": expr.replace("$__rate_interval", RATE_WINDOW), "start": start, "end": end, "step": step},
        timeout=30,
    )
    body = answer.json()
    if body.get("status") != "success":
        raise SystemExit(f"Prometheus refused {expr!r}: {body}")
    return body["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip() or "value"


UNITS = {"reqps": "per second", "ops": "per second", "s": "seconds", "short": ""}


def draw_panel(ax, panel: dict, url: str, start: float, end: float, step: float) -> int:
    """One panel on a matplotlib axis; returns how many series it drew."""
    import matplotlib.dates as mdates

    ax.set_title(panel["title"], loc="left", fontsize=10, fontweight="bold")
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    series = []
    for target in panel["targets"]:
        for result in query_range(url, target["expr"], start, end, step):
            points = [(float(t), float(v)) for t, v in result["values"] if not math.isnan(float(v))]
            if points:
                series.append((legend(target.get("legendFormat", ""), result["metric"]), points))
    series.sort(key=lambda item: item[0])
    if panel["type"] == "bargauge":
        names = [name for name, _ in series]
        values = [points[-1][1] for _, points in series]
        order = sorted(range(len(names)), key=lambda i: values[i])
        ax.barh([names[i] for i in order], [values[i] for i in order], color="#5794F2")
        for index, i in enumerate(order):
            ax.text(values[i], index, f" {values[i]:g}", va="center", fontsize=8)
        ax.set_xlabel("connections (at the end of the run)", fontsize=8)
    else:
        stacked = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {}).get("stacking", {})
        if stacked.get("mode") == "normal" and series:
            times = sorted({t for _, points in series for t, _ in points})
            base = [0.0] * len(times)
            for name, points in series:
                values = dict(points)
                top = [b + values.get(t, 0.0) for b, t in zip(base, times, strict=True)]
                when = [datetime.fromtimestamp(t, UTC) for t in times]
                ax.fill_between(when, base, top, alpha=0.35, step="post")
                ax.plot(when, top, label=name, linewidth=1, drawstyle="steps-post")
                base = top
        else:
            for name, points in series:
                ax.plot(
                    [datetime.fromtimestamp(t, UTC) for t, _ in points],
                    [v for _, v in points],
                    label=name,
                    linewidth=1.2,
                )
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.set_ylabel(UNITS.get(unit, unit), fontsize=8)
        if unit == "s":
            ax.set_ylabel("")
            ax.yaxis.set_major_formatter(lambda v, _: f"{v * 1000:.0f} ms")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    if series and panel["type"] != "bargauge":
        ax.legend(fontsize=7, loc="upper left", ncol=2 if len(series) > 4 else 1, framealpha=0.7)
    if not series:
        ax.text(0.5, 0.5, "no data in this run", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_xticks([])
        ax.set_yticks([])
    return len(series)


def render_dashboard(url: str, start: float, end: float, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    step = SCRAPE_SECONDS
    written = []
    drawn = {}
    for panel in panels:
        if panel["title"] in MAIN_PANELS:
            fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
            drawn[panel["title"]] = draw_panel(ax, panel, url, start, end, step)
            query = panel["targets"][0]["expr"] + (" …" if len(panel["targets"]) > 1 else "")
            fig.text(0.01, 0.01, query, fontsize=6.5, color="#666666", family="monospace")
            fig.tight_layout(rect=(0, 0.04, 1, 1))
            path = out / f"panel-{MAIN_PANELS[panel['title']]}.png"
            fig.savefig(path)
            plt.close(fig)
            written.append(path)
    # Every panel, in the dashboard's order, two to a row (as Grafana lays out 12-wide panels).
    rows = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(16, 3.3 * rows), dpi=90)
    for ax, panel in zip(axes.flat, panels, strict=False):
        draw_panel(ax, panel, url, start, end, step)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{dashboard['title']} (docs/grafana/dromos.json), rendered from Prometheus", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path = out / "dashboard.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    empty = [title for title, count in drawn.items() if not count]
    if empty:
        raise SystemExit(f"main panels without data: {empty}")
    return written


SERVICE_COLOURS = {"dromos-gateway": "#5794F2", "dromos-broker": "#73BF69", "dromos-worker": "#FF9830"}


def span_label(span: dict) -> str:
    attributes = span["attributes"]
    if attributes.get("db.system") == "postgresql":
        statement = str(attributes.get("db.statement", span["name"]))
        table = re.search(r'(?:FROM|INTO|UPDATE)\s+"?(\w+)"?', statement)
        return f"PostgreSQL {span['name']}" + (f" {table.group(1)}" if table else "")
    if attributes.get("db.system") == "redis":
        return f"Redis {str(attributes.get('db.statement', span['name'])).splitlines()[0]}"
    if "http.url" in attributes and span["kind"] == 3:  # CLIENT
        target = re.sub(r"^https?://[^/]+", "", str(attributes["http.url"]))
        callee = "broker" if target.startswith("/internal/") else "provider"
        return f"→ {callee}: {span['name']} {target} ({attributes.get('http.status_code', '')})"
    return span["name"]


def render_trace(spans: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    by_id = {span["span_id"]: span for span in spans}
    children = defaultdict(list)
    roots = []
    for span in spans:
        if span["parent_id"] in by_id:
            children[span["parent_id"]].append(span)
        else:
            roots.append(span)
    ordered = []

    def walk(span, depth):
        ordered.append((span, depth))
        for child in sorted(children[span["span_id"]], key=lambda s: s["start"]):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda s: s["start"]):
        walk(root, 0)
    origin = min(span["start"] for span in spans)
    total = (max(span["end"] for span in spans) - origin) / 1e6
    fig, ax = plt.subplots(figsize=(13, 0.32 * len(ordered) + 1.4), dpi=100)
    labels = blended_transform_factory(fig.transFigure, ax.transData)
    for row, (span, depth) in enumerate(ordered):
        begin = (span["start"] - origin) / 1e6
        length = max((span["end"] - span["start"]) / 1e6, total / 600)
        colour = SERVICE_COLOURS.get(span["service"], "#B877D9")
        ax.barh(row, length, left=begin, color=colour, height=0.7)
        ax.text(0.01 + 0.012 * depth, row, span_label(span)[:64], transform=labels, va="center", fontsize=7.5)
        ax.text(
            begin + length + total * 0.005,
            row,
            f"{(span['end'] - span['start']) / 1e6:.1f} ms",
            va="center",
            fontsize=7,
        )
    ax.set_ylim(len(ordered) - 0.5, -0.5)
    ax.set_yticks([])
    ax.set_xlim(0, total * 1.1)
    ax.set_xlabel("milliseconds since the gateway received the request")
    ax.grid(axis="x", alpha=0.3)
    trace_id = spans[0]["trace_id"]
    ax.set_title(
        f"GET /v1/token/{{id}}?auto_refresh=true — one trace ({trace_id}), {len(spans)} spans, {total:.0f} ms",
        loc="left",
        fontsize=10,
    )
    services = sorted({span["service"] for span in spans})
    fig.legend(
        handles=[Patch(color=SERVICE_COLOURS.get(s, "#B877D9"), label=s) for s in services],
        loc="lower left",
        bbox_to_anchor=(0.01, 0.005),
        fontsize=8,
        ncol=len(services),
    )
    fig.subplots_adjust(left=0.36, right=0.98, top=0.93, bottom=0.6 / (0.32 * len(ordered) + 1.4))
    fig.savefig(path)
    plt.close(fig)


def record_trace(stack: Stack, store: SpanStore, cid: str) -> list[dict]:
    """One token fetch with auto_refresh (min_ttl beyond the token's life: it refreshes), sent
    with a traceparent whose trace id we chose, so that the trace can be picked out."""
    trace_id = secrets.token_hex(16)
    time.sleep(6)  # past COALESCE_SECONDS since this connection's last refresh
    answer = requests.get(
        f"{stack.gateway_url}/v1/token/{cid}?auto_refresh=true&min_ttl=7200",
        headers={"Authorization": f"Bearer {stack.api_key}", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        timeout=30,
    )
    answer.raise_for_status()
    deadline = time.monotonic() + 20
    spans: list[dict] = []
    while time.monotonic() < deadline:
        spans = store.trace(trace_id)
        services = {span["service"] for span in spans}
        refreshed = any(span["attributes"].get("http.url", "").endswith("/token") for span in spans)
        if {"dromos-gateway", "dromos-broker"} <= services and refreshed:
            time.sleep(1.5)  # the rest of the batch
            return store.trace(trace_id)
        time.sleep(0.5)
    raise SystemExit(f"the trace did not arrive whole: {[(s['service'], s['name']) for s in spans]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    parser.add_argument("--seconds", type=float, default=180, help="length of the load (default 180)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, Prometheus data)")
    args = parser.parse_args()
    # The machine's PostgreSQL and Redis as `make test` expects them, unless set.
    database_url = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/dromos"
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/12"
    database_url = database_url.rsplit("/", 1)[0] + "/" + database_url.rsplit("/", 1)[1].split("?")[0] + "_render"
    reset_postgres_database(database_url)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="dromos-render-"))
    store = SpanStore()
    otlp, otlp_port = start_otlp_receiver(store)
    worker_metrics = free_port()
    multiproc = {name: workdir / f"metrics-{name}" for name in ("gateway", "broker", "worker")}
    for directory in multiproc.values():
        directory.mkdir()
    stack = Stack(
        workdir=workdir,
        database_url=database_url,
        redis_url=redis_url,
        gateway_workers=2,
        broker_workers=2,
        guide_provider=True,  # the local provider registered a second time, as "google"
        extra_env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
            "CELERY_METRICS_PORT": str(worker_metrics),
            "CELERY_METRICS_ADDR": "127.0.0.1",
            "WEBHOOK_ALLOW_HTTP_HOSTS": "127.0.0.1",
        },
        process_env={name: {"PROMETHEUS_MULTIPROC_DIR": str(path)} for name, path in multiproc.items()},
    )
    prometheus = None
    try:
        log(f"starting the stack in {workdir}")
        stack.start()
        _, broker_proxy = start_header_proxy(stack.broker_url, {"X-API-Key": stack.env["BROKER_API_KEY"]})
        prometheus, prom_url = start_prometheus(
            workdir,
            {
                "dromos-gateway": {
                    "target": f"127.0.0.1:{stack.gateway_port}",
                    "bearer": stack.env["GATEWAY_OPS_TOKEN"],
                },
                "dromos-broker": {"target": f"127.0.0.1:{broker_proxy}"},
                "dromos-worker": {"target": f"127.0.0.1:{worker_metrics}"},
            },
        )
        wait_for_targets(prom_url, {"dromos-gateway", "dromos-broker", "dromos-worker"})
        log(f"Prometheus at {prom_url} scrapes gateway, broker and worker every {SCRAPE_SECONDS} s")
        start = time.time()
        load = run_load(stack, args.seconds, log)
        log("load done: " + ", ".join(f"{k}: {v}" for k, v in sorted(load["counts"].items())))
        time.sleep(3 * SCRAPE_SECONDS)
        end = time.time()
        for path in render_dashboard(prom_url, start, end, out):
            log(f"wrote {path}")
        spans = record_trace(stack, store, load["local"][0])
        (workdir / "trace.json").write_text(json.dumps(spans, indent=1))
        render_trace(spans, out / "trace-token-fetch.png")
        log(f"wrote {out / 'trace-token-fetch.png'} ({len(spans)} spans)")
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(timeout=10)
            except subprocess.TimeoutExpired:
                prometheus.kill()
        stack.stop()
        otlp.shutdown()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
