"""Both SDKs checked against the gateway's generated OpenAPI schema (issue 5).

The schema is generated from the gateway's code by drf-spectacular, exactly as served at
`/openapi.json`. The SDK sources are read as text (Go) and syntax trees (Python), so a field
renamed in a serializer, a field an SDK invents, an endpoint an SDK calls that the gateway
does not serve, or a gateway operation no SDK exposes all fail here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from drf_spectacular.generators import SchemaGenerator

ROOT = Path(__file__).resolve().parents[2]
GO_TYPES = ROOT / "oauth-sdk" / "types.go"
GO_CLIENT = ROOT / "oauth-sdk" / "client.go"
GO_MANAGE = ROOT / "oauth-sdk" / "manage.go"  # the management API (issue 19)
PY_MODELS = ROOT / "sdk" / "python" / "src" / "dromos_sdk" / "models.py"
PY_CORE = ROOT / "sdk" / "python" / "src" / "dromos_sdk" / "_core.py"

# SDK type → schema component. Response types must read every property the gateway sends.
GO_RESPONSES = {
    "RequestConnectionOutput": "ConnectionRequest",
    "Connection": "Connection",
    "Token": "Token",
    "Provider": "Provider",
    "ParamFormat": "ParamFormat",
    "ConnectionList": "ConnectionPage",
    "Key": "Key",
    "KeyList": "KeyPage",
    "Webhook": "Webhook",
    "WebhookSecret": "WebhookSecret",
    "WebhookDelivery": "WebhookDelivery",
    "WebhookDeliveryList": "WebhookDeliveryPage",
    "AuditEvent": "AuditEvent",
    "AuditPage": "AuditPage",
    "ProviderAdmin": "ProviderAdmin",
    "ProviderAdminList": "ProviderAdminList",
}
PY_RESPONSES = {
    "ConnectionRequest": "ConnectionRequest",
    "Connection": "Connection",
    "Token": "Token",
    "Provider": "Provider",
    "ParamFormat": "ParamFormat",
    "ConnectionPage": "ConnectionPage",
}
GO_KINDS = {  # Go field type → OpenAPI (type, format or item type)
    "string": ("string", None),
    "bool": ("boolean", None),
    "int": ("integer", None),
    "*int": ("integer", None),
    "*bool": ("boolean", None),
    "*time.Time": ("string", "date-time"),
    "[]string": ("array", "string"),
    "map[string]any": ("object", None),
    "map[string]string": ("object", None),
    "map[string]ParamFormat": ("object", None),
    "[]Connection": ("array", None),
    "time.Time": ("string", "date-time"),
    "*string": ("string", None),
    "*[]string": ("array", "string"),
    "*[]map[string]any": ("array", None),
    "[]Key": ("array", None),
    "[]WebhookDelivery": ("array", None),
    "[]AuditEvent": ("array", None),
    "[]ProviderAdmin": ("array", None),
}
UNEXPOSED_OPERATIONS = {("GET", "/v1/ping")}  # a liveness probe for humans, not an SDK method
# The API proxy (issue 15): one SDK method (Go Client.Proxy, Python client.proxy) takes the
# method as an argument, so it covers every method the schema lists for the proxy path.
PROXY_PATH = "/v1/proxy/{id}/{id}"
PROXY_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
GO_PROXY = ROOT / "oauth-sdk" / "proxy.go"
PY_CLIENTS = [ROOT / "sdk" / "python" / "src" / "dromos_sdk" / name for name in ("_sync.py", "_async.py")]


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator(urlconf="dromos.urls_gateway").get_schema(request=None, public=True)


def component(schema, name: str) -> dict:
    return schema["components"]["schemas"][name]


def resolve(schema, node: dict) -> dict:
    while "$ref" in node:
        node = component(schema, node["$ref"].rsplit("/", 1)[1])
    if "allOf" in node and len(node["allOf"]) == 1:
        return resolve(schema, node["allOf"][0])
    return node


def go_structs() -> dict[str, dict[str, str]]:
    """struct name → {json name: Go type} for every exported struct with json tags."""
    source = GO_TYPES.read_text()
    structs: dict[str, dict[str, str]] = {}
    for name, body in re.findall(r"^type (\w+) struct \{\n(.*?)^\}", source, re.S | re.M):
        fields = re.findall(r"^\t\w+ +(\S+) +`json:\"([^\",]+)[^`]*`", body, re.M)  # gofmt aligns columns
        if fields:
            structs[name] = {json_name: go_type for go_type, json_name in fields}
    return structs


def python_reads() -> dict[str, set[str]]:
    """class name → the JSON keys its from_dict reads (data["k"], data.get("k"), _helper(data, "k"))."""
    tree = ast.parse(PY_MODELS.read_text())
    reads: dict[str, set[str]] = {}
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        method = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "from_dict"), None)
        if method is None:
            continue
        keys: set[str] = set()
        for node in ast.walk(method):
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "data":
                if isinstance(node.slice, ast.Constant):
                    keys.add(node.slice.value)
            elif isinstance(node, ast.Call) and node.args:
                args = node.args
                func = node.func
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr == "get"
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "data"
                    and isinstance(args[0], ast.Constant)
                ):
                    keys.add(args[0].value)
                elif (
                    len(args) >= 2
                    and isinstance(args[0], ast.Name)
                    and args[0].id == "data"
                    and isinstance(args[1], ast.Constant)
                    and isinstance(args[1].value, str)
                ):
                    keys.add(args[1].value)
        reads[cls.name] = keys
    return reads


def schema_operations(schema) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


def _template(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{id}", path)


def test_go_response_types_match_the_schema(schema):
    structs = go_structs()
    for go_name, schema_name in GO_RESPONSES.items():
        fields = structs[go_name]
        props = component(schema, schema_name)["properties"]
        assert set(fields) == set(props), (go_name, set(fields) ^ set(props))
        for json_name, go_type in fields.items():
            prop = resolve(schema, props[json_name])
            kind, detail = GO_KINDS[go_type]
            if "enum" in prop:
                assert kind == "string", (go_name, json_name)
                continue
            assert prop.get("type") == kind, (go_name, json_name, go_type, prop)
            if kind == "string" and detail:
                assert prop.get("format") == detail, (go_name, json_name)
            if kind == "array" and detail:
                assert prop["items"].get("type") == detail, (go_name, json_name)
            if go_type.startswith("*") or json_name in {"next", "previous"}:
                continue
            if prop.get("nullable") and go_type not in {"string", "map[string]any"}:
                pytest.fail(f"{go_name}.{json_name} may be null but {go_type} cannot hold null")


def test_go_request_body_matches_the_schema(schema):
    body = schema["paths"]["/v1/request-connection"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    request = resolve(schema, body)
    fields = go_structs()["RequestConnectionInput"]
    assert set(fields) == set(request["properties"])
    assert set(request["required"]) <= set(fields)


def test_python_models_read_every_schema_field_and_nothing_else(schema):
    reads = python_reads()
    for py_name, schema_name in PY_RESPONSES.items():
        props = set(component(schema, schema_name)["properties"])
        assert reads[py_name] == props, (py_name, reads[py_name] ^ props)


def test_python_request_body_matches_the_schema(schema):
    body = schema["paths"]["/v1/request-connection"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    request = resolve(schema, body)
    source = PY_CORE.read_text()
    sent = set(re.findall(r'"(\w+)":', source.split("def request_connection_call", 1)[1].split("\ndef ", 1)[0]))
    sent |= set(re.findall(r'body\["(\w+)"\]', source))
    assert sent == set(request["properties"]), sent ^ set(request["properties"])


def _go_calls() -> set[tuple[str, str]]:
    source = GO_CLIENT.read_text() + GO_MANAGE.read_text()
    calls = set()
    # "/v1/…" then any run of +url.PathEscape(x) and +"…" pieces (two ids: a webhook's delivery)
    pattern = r'c\.do\(ctx, http\.Method(\w+), ("/v1/[^"]*"(?:\+url\.PathEscape\(\w+\)|\+"[^"]*")*)'
    for method, expression in re.findall(pattern, source):
        path = re.sub(r"\+url\.PathEscape\(\w+\)", "{id}", expression).replace("+", "").replace('"', "")
        calls.add((method.upper(), path))
    proxy = GO_PROXY.read_text()
    if "func (c *Client) Proxy(" in proxy and '"/v1/proxy/"' in proxy:
        calls |= {(method, PROXY_PATH) for method in PROXY_METHODS}
    return calls


def _python_calls() -> set[tuple[str, str]]:
    source = PY_CORE.read_text()
    calls = set()
    for method, path in re.findall(r'RequestSpec\("(\w+)", f?"(/v1/[^"]*)"', source):
        calls.add((method, _template(path)))
    for path, method in re.findall(r'path = f"(/v1/[^"]*)"\n\s+return Call\(\s*RequestSpec\("(\w+)", path', source):
        calls.add((method, _template(path)))
    if "/v1/proxy/{_segment(connection_id)}" in source and all("def proxy(" in p.read_text() for p in PY_CLIENTS):
        calls |= {(method, PROXY_PATH) for method in PROXY_METHODS}
    return calls


@pytest.mark.parametrize("calls", [_go_calls, _python_calls], ids=["go", "python"])
def test_sdk_calls_exactly_the_gateway_operations(schema, calls):
    served = {(method, _template(path)) for method, path in schema_operations(schema)}
    expected = served - {(m, _template(p)) for m, p in UNEXPOSED_OPERATIONS}
    assert calls() == expected


def test_query_parameters_the_sdks_send_are_declared(schema):
    declared = {
        path: {p["name"] for p in ops["get"].get("parameters", []) if p["in"] == "query"}
        for path, ops in schema["paths"].items()
        if "get" in ops
    }
    assert {"auto_refresh", "min_ttl"} <= declared["/v1/token/{connection_id}"]
    assert {"user_id", "provider_name", "status", "page", "page_size"} <= declared["/v1/connections"]
    go_source = GO_CLIENT.read_text()
    py_source = PY_CORE.read_text()
    for name in ("auto_refresh", "min_ttl", "user_id", "provider_name", "status", "page", "page_size"):
        assert f'"{name}"' in go_source, name
        assert f'"{name}"' in py_source, name


def test_error_shape_is_what_the_sdks_parse(schema):
    error = component(schema, "Error")
    assert set(error["required"]) == {"error", "message"}
    go_errors = (ROOT / "oauth-sdk" / "errors.go").read_text() + GO_CLIENT.read_text()
    py_errors = PY_CORE.read_text()
    for name in ("error", "message"):
        assert f'json:"{name}' in go_errors or f'"{name}"' in go_errors, name
        assert f'"{name}"' in py_errors, name
    statuses = {code for ops in schema["paths"].values() for op in ops.values() for code in op["responses"]}
    assert {"401", "404", "409", "429", "502", "503"} <= statuses
