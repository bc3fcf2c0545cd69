"""The bodies the broker builds, as agents receive them through the gateway, have exactly
the fields the OpenAPI schema (dromos/wire.py's serializers) declares: a field a body has
and the schema does not declare fails here, and so does a declared field no body has."""

from __future__ import annotations

from collections import defaultdict

import pytest
from drf_spectacular.generators import SchemaGenerator

from broker_app.models import Connection, Provider
from broker_app.providers.spec import builtin_catalog
from dromos import wire
from tests.conftest import connect, start_connection

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator(urlconf="dromos.urls_gateway").get_schema(request=None, public=True)


def ref_name(node: dict) -> str | None:
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[1]
    if len(node.get("allOf", ())) == 1:
        return ref_name(node["allOf"][0])
    return None


class Walk:
    """Walks bodies against schema components, recording which fields each body had."""

    def __init__(self, schema: dict) -> None:
        self.components = schema["components"]["schemas"]
        self.seen: dict[str, set[str]] = defaultdict(set)

    def body(self, value, name: str, where: str) -> None:
        component = self.components[name]
        assert isinstance(value, dict), where
        if "oneOf" in component:  # one of several bodies (request-connection: code or device flow)
            fitting = [
                ref_name(option)
                for option in component["oneOf"]
                if set(value) <= set(self.components[ref_name(option)]["properties"])
                and set(self.components[ref_name(option)].get("required", ())) <= set(value)
            ]
            assert len(fitting) == 1, f"{where}: fits {fitting} of schema {name}"
            return self.body(value, fitting[0], where)
        declared, required = set(component["properties"]), set(component.get("required", ()))
        assert set(value) <= declared, f"{where}: not in schema {name}: {sorted(set(value) - declared)}"
        assert required <= set(value), f"{where}: schema {name} requires {sorted(required - set(value))}"
        self.seen[name] |= set(value)
        for field, field_value in value.items():
            self.value(field_value, component["properties"][field], f"{where}.{field}")

    def value(self, value, node: dict, where: str) -> None:
        if value is None:
            return
        nested = ref_name(node)
        if nested and "enum" not in self.components[nested]:
            self.body(value, nested, where)
        elif node.get("type") == "array" and ref_name(node["items"]):
            for n, item in enumerate(value):
                self.value(item, node["items"], f"{where}[{n}]")
        elif node.get("type") == "object" and ref_name(node.get("additionalProperties") or {}):
            for key, item in value.items():
                self.value(item, node["additionalProperties"], f"{where}[{key}]")


def operation_body(schema: dict, method: str, path: str) -> str:
    responses = schema["paths"][path][method]["responses"]
    ok = responses.get("200") or responses["201"]
    return ref_name(ok["content"]["application/json"]["schema"])


def test_every_body_has_exactly_the_fields_the_schema_declares(
    stack, fake_provider, fake_provider_row, schema, monkeypatch
):
    # A provider whose agents pass a parameter, so /v1/providers carries a ParamFormat.
    Provider.objects.create(name="zendesk", template="zendesk", client_id="zd-client")
    key = stack.key()
    walk = Walk(schema)

    def check(method: str, template: str, path: str, status: int = 200, **kwargs) -> dict:
        response = stack.call(method, path, key, **kwargs)
        assert response.status_code == status, response.text
        walk.body(response.json(), operation_body(schema, method.lower(), template), f"{method} {template}")
        return response.json()

    request_body = {"user_id": "u", "provider_name": "fake", "return_url": "https://app.example.com/r"}
    pending = check("POST", "/v1/request-connection", "/v1/request-connection", 201, json=request_body)
    check("GET", "/v1/check-connection/{connection_id}", f"/v1/check-connection/{pending['connection_id']}")
    device_body = {"user_id": "u", "provider_name": "fake", "flow": "device"}
    check("POST", "/v1/request-connection", "/v1/request-connection", 201, json=device_body)
    cid = connect(stack, fake_provider, key)
    assert start_connection(stack, key)  # a third connection: the list has a next and a previous page
    check("GET", "/v1/check-connection/{connection_id}", f"/v1/check-connection/{cid}")
    token = check("GET", "/v1/token/{connection_id}", f"/v1/token/{cid}")
    assert "id_token" in token  # the fake provider is OIDC: the optional field is exercised
    check("GET", "/v1/token/{connection_id}", f"/v1/token/{cid}?auto_refresh=true&min_ttl=86400")
    check("POST", "/v1/refresh/{connection_id}", f"/v1/refresh/{cid}")
    middle = check("GET", "/v1/connections", "/v1/connections?page=2&page_size=1")
    assert middle["next"] and middle["previous"]
    providers = check("GET", "/v1/providers", "/v1/providers")
    assert any(provider["param_formats"] for provider in providers["providers"])
    check("DELETE", "/v1/connections/{connection_id}", f"/v1/connections/{cid}")
    # A static login: the token body's username and password.
    Provider.objects.create(name="linear-key", template="linear_api_key")
    Provider.objects.create(name="twilio", template="twilio")
    static = check(
        "POST",
        "/v1/connections",
        "/v1/connections",
        201,
        json={
            "user_id": "u",
            "provider_name": "linear-key",
            "credentials": {"type": "api_key", "api_key": "lin_x_123"},
        },
    )
    check(
        "PUT",
        "/v1/connections/{connection_id}/credentials",
        f"/v1/connections/{static['connection_id']}/credentials",
        json={"credentials": {"type": "api_key", "api_key": "lin_y_456"}},
    )
    monkeypatch.setitem(builtin_catalog()["twilio"], "verify_url", "")
    login = check(
        "POST",
        "/v1/connections",
        "/v1/connections",
        201,
        json={
            "user_id": "u",
            "provider_name": "twilio",
            "credentials": {"type": "basic", "username": "AC1", "password": "pw"},
        },
    )
    check("GET", "/v1/token/{connection_id}", f"/v1/token/{login['connection_id']}")

    for name in (
        "ConnectionRequest",
        "DeviceConnectionRequest",
        "Connection",
        "Token",
        "ConnectionPage",
        "ProviderList",
        "Provider",
    ):
        declared = set(walk.components[name]["properties"])
        assert walk.seen[name] == declared, f"schema {name} declares fields no body had: {declared - walk.seen[name]}"
    assert walk.seen["ParamFormat"] == set(walk.components["ParamFormat"]["properties"])


def test_connection_statuses_are_the_wire_contracts(schema):
    assert Connection.Status.values == list(wire.CONNECTION_STATUSES)
    assert schema["components"]["schemas"]["StatusEnum"]["enum"] == list(wire.CONNECTION_STATUSES)


def test_the_gateway_calls_the_paths_the_broker_serves():
    from django.urls import resolve

    for template in (wire.CONNECTIONS, wire.CONNECTION, wire.CONNECTION_TOKEN, wire.CONNECTION_REFRESH):
        path = wire.internal_path(template, "c_abc")
        assert resolve(path, urlconf="dromos.urls_broker").kwargs.get("connection_id", "c_abc") == "c_abc"
    assert resolve(wire.internal_path(wire.PROVIDERS), urlconf="dromos.urls_broker")
    assert resolve(wire.internal_path(wire.WORKSPACE_PROVIDERS), urlconf="dromos.urls_broker")
    named = resolve(wire.internal_path(wire.WORKSPACE_PROVIDER, name="google"), urlconf="dromos.urls_broker")
    assert named.kwargs == {"name": "google"}


def test_the_broker_serves_the_management_paths_the_gateway_calls():
    """Webhooks and the audit log (issue 19): every internal path resolves on the broker with
    the ids the gateway fills in."""
    from django.urls import resolve

    ids = {"webhook_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "delivery_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7"}
    for template in (
        wire.WEBHOOKS,
        wire.WEBHOOK,
        wire.WEBHOOK_ROTATE,
        wire.WEBHOOK_DELIVERIES,
        wire.WEBHOOK_REDELIVER,
        wire.AUDIT_EVENTS,
        wire.AUDIT_EXPORT,
    ):
        path = wire.internal_path(template, **{k: v for k, v in ids.items() if k in template})
        match = resolve(path, urlconf="dromos.urls_broker")
        assert match.kwargs == {k: v for k, v in ids.items() if k in template}, template


@pytest.mark.django_db
def test_the_management_bodies_are_their_serializers():
    from broker_app.manage_apis import audit_row_as_dict, delivery_as_dict, webhook_as_dict
    from broker_app.models import AuditEvent, WebhookDelivery, WebhookEndpoint
    from broker_app.webhooks import webhook_endpoint_create

    endpoint, _ = webhook_endpoint_create(workspace="ws-a", url="https://hooks.example.com/x")
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint, event="connection.revoked", connection_id="c", payload={}
    )
    row = AuditEvent.objects.create(connection_id="c", workspace="ws-a", actor="system", action="token.read")
    for body, serializer in (
        (webhook_as_dict(WebhookEndpoint.objects.get(pk=endpoint.pk)), wire.WebhookSerializer),
        (delivery_as_dict(delivery), wire.WebhookDeliverySerializer),
        (audit_row_as_dict(row), wire.AuditEventSerializer),
    ):
        assert set(body) == set(serializer().fields), serializer.__name__
        assert set(serializer(body).data) == set(body)  # every field renders as documented
