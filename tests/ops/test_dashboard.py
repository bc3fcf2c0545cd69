"""The Grafana dashboard (docs/grafana/dromos.json): every panel's PromQL names only metrics
the app really exports.

What is exported is read from the processes themselves: the gateway's and the broker's
/metrics (each in its own settings, in a child process, through Django's test client) and the
Celery worker's registry (where webhook deliveries are counted); then, after one token fetch
with auto_refresh through the live server, the main panels' metrics carry samples. With
Debian's `promtool` on the machine, every expression also parses as PromQL."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from broker_app.models import Connection
from tests.conftest import connect

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "dromos.json"

# PromQL's own words (functions, aggregations, modifiers) that the dashboard may use.
PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "rate", "irate", "increase",
    "histogram_quantile", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "offset", "bool", "clamp_min", "clamp_max", "abs", "time", "vector", "scalar", "le",
}  # fmt: skip
RANGE_VARIABLE = "$__rate_interval"


def panels() -> list[dict]:
    return [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"]


def expressions() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels() for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: what is left once strings, label matchers,
    grouping lists, ranges, numbers and PromQL's own words are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {word for word in words if word not in PROMQL_WORDS}


def _exported_names(text: str) -> set[str]:
    """Sample names a /metrics answer can hold: every declared family's (a counter declares
    `x`, exports `x_total`; a histogram `_bucket`, `_count`, `_sum`)."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum", "_created"]}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


ROLE_PROBE = """
import django
django.setup()
from django.test import Client
from django.conf import settings
answer = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ops-token-for-the-test", HTTP_X_API_KEY=settings.BROKER_API_KEY)
assert answer.status_code == 200, answer.status_code
print(answer.content.decode())
"""
WORKER_PROBE = """
from dromos.celery import app
app.loader.import_default_modules()
from prometheus_client import REGISTRY, generate_latest
print(generate_latest(REGISTRY).decode())
"""


def _probe(role: str, code: str) -> str:
    db = settings.DATABASES["default"]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "OTEL_"))}
    env.update(
        DEBUG="1",
        DJANGO_SETTINGS_MODULE=f"dromos.settings.{role}",
        GATEWAY_OPS_TOKEN="ops-token-for-the-test",
        ALLOWED_HOSTS="testserver",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_dashboard_is_grafana_json_with_a_query_in_every_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "Dromos"
    assert {"DS_PROMETHEUS"} == {v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"}
    titles = [panel["title"] for panel in panels()]
    assert len(titles) == len(set(titles)) >= 12
    for panel in panels():
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}" and panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            assert metric_names(target["expr"]), (panel["title"], target["expr"])
    # What an operator asked for (issue 21).
    for wanted in (
        "Token fetch rate by outcome",
        "Token fetch latency (gateway)",
        "Refresh outcomes by provider",
        "Connections by status",
        "Grants nearing their end",
    ):
        assert wanted in titles


def test_metric_names_are_read_from_promql():
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, provider) (rate(x_bucket{route="/a{b}", status=~"5.."}[5m])))'
    ) == {"x_bucket"}
    assert metric_names("sum(rate(a_total[$__rate_interval])) / sum without (job) (b)") == {"a_total", "b"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_every_query_names_only_metrics_the_processes_export():
    gateway = _exported_names(_probe("gateway", ROLE_PROBE))
    broker = _exported_names(_probe("broker", ROLE_PROBE))
    worker = _exported_names(_probe("broker", WORKER_PROBE))
    # Each process exports its own (a sanity check of the probes themselves).
    assert "dromos_gateway_token_fetches_total" in gateway and "dromos_gateway_token_fetches_total" not in broker
    assert {"dromos_connections", "dromos_connections_grant_ending", "dromos_refresh_total"} <= broker
    assert "dromos_webhook_deliveries_total" in worker
    exported = gateway | broker | worker
    missing = [(title, name) for title, expr in expressions() for name in metric_names(expr) if name not in exported]
    assert not missing, missing


@pytest.mark.skipif(
    not shutil.which("promtool"),
    reason="promtool is not installed (scripts/ensure-system-packages.sh installs Debian's prometheus)",
)
def test_every_query_parses_as_promql(tmp_path):
    rules = [
        {"record": f"dromos:panel_{index}", "expr": expr.replace(RANGE_VARIABLE, "1m")}
        for index, (_, expr) in enumerate(expressions())
    ]
    path = tmp_path / "rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout


def test_the_main_panels_have_samples_after_a_token_fetch(stack, fake_provider, fake_provider_row):
    key = stack.key()
    cid = connect(stack, fake_provider, key)
    Connection.objects.filter(pk=cid).update(
        expires_at=timezone.now() + timedelta(seconds=30), refresh_expires_at=timezone.now() + timedelta(days=3)
    )
    assert stack.call("GET", f"/v1/token/{cid}?auto_refresh=true", key).status_code == 200  # refreshes
    assert stack.call("GET", f"/v1/token/{cid}", key).status_code == 200  # a plain read
    assert stack.call("GET", "/v1/token/c_nosuchconnection0000000000000000", key).status_code == 404
    text = stack.broker("GET", "/metrics").text
    sampled = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    for title in (
        "Token fetch rate by outcome",
        "Token fetch latency (gateway)",
        "Refresh outcomes by provider",
        "Provider refresh latency, p95 by provider",
        "Connections by status",
        "Grants nearing their end",
        "Token reads by provider",
    ):
        (panel,) = [p for p in panels() if p["title"] == title]
        names = set().union(*(metric_names(target["expr"]) for target in panel["targets"]))
        assert names <= sampled, (title, names - sampled)
