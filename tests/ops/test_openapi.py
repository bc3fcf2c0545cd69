"""The gateway's OpenAPI schema, as the real gateway process serves it at /openapi.json, is
accurate: schemathesis (its CLI, as CI would run it) generates requests from the schema —
valid and invalid ones, the coverage phase's boundary values, stateful sequences — and
every answer must be a non-5xx whose status, content type, headers and body the schema
documents.

Every check runs except `positive_data_acceptance`: a schema-valid request may still be
refused with a documented 400 for reasons a schema cannot state (an unconfigured
provider_name, a return_url outside ALLOWED_RETURN_DOMAINS).

(schemathesis' pytest plugin does not run under pytest 9 — it reads `Node._nodeid` — so
the CLI runs in a subprocess, with a bounded number of examples and a fixed seed.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import requests

from tests.ops.conftest import random_id

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
OPERATIONS = {
    ("GET", "/v1/ping"),
    ("POST", "/v1/request-connection"),
    ("GET", "/v1/check-connection/{connection_id}"),
    ("GET", "/v1/token/{connection_id}"),
    ("POST", "/v1/refresh/{connection_id}"),
    ("GET", "/v1/connections"),
    ("DELETE", "/v1/connections/{connection_id}"),
    ("GET", "/v1/providers"),
    ("POST", "/v1/connect-sessions"),
    ("GET", "/v1/connect-sessions/{session_id}"),
    ("POST", "/v1/connections/{connection_id}/reconnect"),
    # Static credentials (issue 18)
    ("POST", "/v1/connections"),
    ("PUT", "/v1/connections/{connection_id}/credentials"),
    # The API proxy (issue 15): every method but HEAD, which OpenAPI generators leave out.
    *((method, "/v1/proxy/{connection_id}/{path}") for method in ("GET", "POST", "PUT", "PATCH", "DELETE")),
}
# The management API (issue 19), for keys with the admin scope.
MANAGEMENT_OPERATIONS = {
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys"),
    ("GET", "/v1/keys/{prefix}"),
    ("DELETE", "/v1/keys/{prefix}"),
    ("GET", "/v1/webhooks"),
    ("POST", "/v1/webhooks"),
    ("DELETE", "/v1/webhooks/{webhook_id}"),
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/export"),
    ("GET", "/v1/workspace-providers"),
    ("GET", "/v1/workspace-providers/{name}"),
    ("PUT", "/v1/workspace-providers/{name}"),
    ("DELETE", "/v1/workspace-providers/{name}"),
}
OPERATIONS |= MANAGEMENT_OPERATIONS
MANAGEMENT_PATHS = r"^/v1/(keys|webhooks|audit|workspace-providers)"


def run_schemathesis(stack, workdir: Path, key: str, *args: str, config: str = "") -> tuple[str, int]:
    """Run the CLI against the gateway with `key`; returns its output and the number of test cases."""
    config_file = workdir / "schemathesis.toml"
    config_file.write_text(config)
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(config_file),
            "--no-color",
            "run",
            f"{stack.gateway_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "25",
            "--seed",
            "20261127",
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--report",
            "junit",
            "--report-junit-path",
            str(workdir / "junit.xml"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=workdir,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated, output[-3000:]
    assert key not in output
    return output, int(generated.group(1))


def test_the_served_schema_is_json_openapi_3_with_every_operation(ops_stack):
    response = requests.get(ops_stack.gateway_url + "/openapi.json", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/vnd.oai.openapi+json"
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert {(method.upper(), path) for path, item in document["paths"].items() for method in item} == OPERATIONS
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    docs = requests.get(ops_stack.gateway_url + "/docs", timeout=30)
    assert docs.status_code == 200 and "/openapi.json" in docs.text and "swagger-ui" in docs.text


def test_gateway_answers_match_its_schema(ops_stack, tmp_path):
    key = ops_stack.new_key(random_id("ws-fuzz"))  # a key per run: the per-key rate limit stays out of the way
    # the management operations have a run of their own, with an admin key (below)
    output, generated = run_schemathesis(ops_stack, tmp_path, key, "--exclude-path-regex", MANAGEMENT_PATHS)
    assert re.search(r"Selected: 18/34\s+Tested: 18", output), output[-3000:]
    assert generated >= 200


def test_the_management_api_matches_its_schema(ops_stack, tmp_path):
    """An admin key over the management API (keys, webhooks, audit log): every answer
    documented, no 5xx — including the ids of a real webhook and delivery, so the 200s of
    rotate, deliveries and redeliver are validated too."""
    workspace = random_id("ws-fuzz-admin")
    key = ops_stack.new_key(workspace, "admin", "connections:read", "connections:write", "tokens:read")
    created = ops_stack.gw("POST", "/v1/webhooks", key, json={"url": "https://hooks.example.com/fuzz"})
    assert created.status_code == 201, created.text
    hook = created.json()["id"]
    # GET and DELETE /v1/keys/{prefix} act on a key of their own: schemathesis reuses ids it
    # reads in answers, and revoking the admin key itself would leave the rest untested (401)
    spare = ops_stack.gw("POST", "/v1/keys", key, json={"name": "spare"}).json()["prefix"]
    config = f"""
[[operations]]
include-path-regex = "^/v1/webhooks/"
parameters = {{ "path.webhook_id" = "{hook}" }}

[[operations]]
include-path-regex = "^/v1/keys/"
parameters = {{ "path.prefix" = "{spare}" }}
"""
    output, generated = run_schemathesis(
        ops_stack,
        tmp_path,
        key,
        "--include-path-regex",
        MANAGEMENT_PATHS,
        "--phases",
        "examples,coverage,fuzzing",
        # below the gateway's per-key API_KEY_RATE_LIMIT (600/min): 429s would leave the
        # operations untested
        "--rate-limit",
        "540/m",
        config=config,
    )
    assert re.search(rf"Selected: {len(MANAGEMENT_OPERATIONS)}/\d+\s+Tested: {len(MANAGEMENT_OPERATIONS)}", output), (
        output[-3000:]
    )
    assert generated >= 150
    # the admin key survived the run (no generated prefix is its own) and still works
    after = ops_stack.gw("GET", "/v1/keys", key)
    listing = ops_stack.manage("gateway", "apikey", "list", "--workspace", workspace).stdout
    assert after.status_code == 200, (after.text, listing)


def test_operations_on_a_real_connection_match_the_schema(ops_stack, tmp_path):
    """The same on a real connection's id (generated ids are all unknown: 404), so token,
    check and refresh answers that carry data (200) are validated too. DELETE gets its own
    connection (the first call revokes it, later ones find it revoked)."""
    key = ops_stack.new_key(random_id("ws-fuzz-live"))
    live, revocable = (ops_stack.connect(key, user_id="fuzz-user") for _ in range(2))
    config = f"""
[[operations]]
include-path-regex = "^/v1/(token|check-connection|refresh)/"
parameters = {{ "path.connection_id" = "{live}" }}

[[operations]]
include-path-regex = "^/v1/connections/"
parameters = {{ "path.connection_id" = "{revocable}" }}
"""
    output, generated = run_schemathesis(
        ops_stack,
        tmp_path,
        key,
        "--include-path-regex",
        r"\{connection_id\}",
        # A proxied call's answer is the provider's, any status (documented as such): fuzzing
        # it would test the provider, not the gateway. The proxy's own answers are fuzzed above.
        "--exclude-path-regex",
        r"^/v1/proxy/",
        "--phases",
        "examples,coverage,fuzzing",
        config=config,
    )
    # token, check, refresh, delete, reconnect (409 on the revoked one, 201 before) and
    # replacing static credentials (400: an OAuth connection has none)
    assert re.search(r"Selected: 6/\d+\s+Tested: 6", output), output[-3000:]
    assert generated >= 50
    assert ops_stack.gw("GET", f"/v1/check-connection/{live}", key).json()["status"] == "active"
    assert ops_stack.gw("GET", f"/v1/check-connection/{revocable}", key).json()["status"] == "revoked"
