"""The wire contract between agents, the gateway and the broker, written once.

- The inputs of the public API (request-connection body, token and list queries), which
  the gateway validates before calling the broker and the broker validates again when an
  operator calls it directly.
- The bodies the broker builds (connection, token, provider, connection request, list
  page), as drf-spectacular serializers: they document /v1 in the gateway's OpenAPI schema;
  tests/gateway/test_wire_contract.py fails when a body and its serializer differ.
- The connection statuses (`broker_app.models.Connection.Status` is built from them).
- The broker's internal paths, as the gateway calls them and the broker routes them.

Shared layer: imports neither `gateway_app` nor `broker_app`."""

from __future__ import annotations

import re

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from dromos.tags import MAX_TAGS, TagError, parse_tag_filter, validate_tags
from dromos.validators import validate_scope_token

# -- connection statuses ------------------------------------------------------------------
PENDING, ACTIVE, FAILED, REVOKED = CONNECTION_STATUSES = ("pending", "active", "failed", "revoked")
# -- how a connection is made (request-connection `flow`) --------------------------------
FLOW_CODE, FLOW_DEVICE = ("code", "device")
# Machine grants (issue 18): a token for the app itself, obtained by the broker without
# consent, re-obtained before it expires (as a refresh is).
FLOW_CLIENT_CREDENTIALS, FLOW_JWT_BEARER, FLOW_GITHUB_APP = MACHINE_FLOWS = (
    "client_credentials",
    "jwt_bearer",
    "github_app",
)
CONNECTION_FLOWS = (FLOW_CODE, FLOW_DEVICE, *MACHINE_FLOWS)
# The request fields each machine flow takes (secrets: stored encrypted, never answered).
GRANT_SECRET_FIELDS = ("client_id", "client_secret", "private_key")
GRANT_PARAM_FIELDS = ("audience", "resource", "subject")
_FLOW_FIELDS = {
    FLOW_CLIENT_CREDENTIALS: {"client_id", "client_secret", "audience", "resource"},
    FLOW_JWT_BEARER: {"client_id", "private_key", "subject"},
    FLOW_GITHUB_APP: {"client_id", "private_key"},
}

# -- the broker's internal paths ------------------------------------------------------------
# `{connection_id}` is the only parameter. `internal_path` fills one for the gateway's
# client; `internal_route` turns one into a Django URL pattern for the broker.
CONNECTIONS = "internal/v1/connections"
CONNECTION = "internal/v1/connections/{connection_id}"
CONNECTION_TOKEN = "internal/v1/connections/{connection_id}/token"
CONNECTION_REFRESH = "internal/v1/connections/{connection_id}/refresh"
PROVIDERS = "internal/v1/providers"
# connect sessions and reconnect in place (issue 16); `{session_id}` names a session
CONNECTION_RECONNECT = "internal/v1/connections/{connection_id}/reconnect"
CONNECT_SESSIONS = "internal/v1/connect-sessions"
CONNECT_SESSION = "internal/v1/connect-sessions/{session_id}"
STATIC_CONNECTIONS = "internal/v1/static-connections"
CONNECTION_CREDENTIALS = "internal/v1/connections/{connection_id}/credentials"
# the API proxy (issue 15): the credential it injects (an audited token read), a refresh
# only if the rejected token is still the stored one, the "needs attention" flag
PROXY_CREDENTIAL = "internal/v1/connections/{connection_id}/proxy-credential"
PROXY_REFRESH = "internal/v1/connections/{connection_id}/proxy-refresh"
PROXY_ATTENTION = "internal/v1/connections/{connection_id}/proxy-attention"
# a workspace's own provider apps (issue 19): list (own and shared), and one by `{name}`
# (GET, PUT to create or replace, DELETE)
WORKSPACE_PROVIDERS = "internal/v1/workspace-providers"
WORKSPACE_PROVIDER = "internal/v1/workspace-providers/{name}"
# the management API (issue 19): a workspace's webhooks and audit log; `{webhook_id}` and
# `{delivery_id}` are UUIDs
WEBHOOKS = "internal/v1/webhooks"
WEBHOOK = "internal/v1/webhooks/{webhook_id}"
WEBHOOK_ROTATE = "internal/v1/webhooks/{webhook_id}/rotate-secret"
WEBHOOK_DELIVERIES = "internal/v1/webhooks/{webhook_id}/deliveries"
WEBHOOK_REDELIVER = "internal/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"
AUDIT_EVENTS = "internal/v1/audit"
AUDIT_EXPORT = "internal/v1/audit/export"

# -- environments (issue 19) ------------------------------------------------------------------
# The gateway names the key's environment in this header next to X-Dromos-Workspace; the
# broker filters every workspace-scoped lookup by both. No header: DEFAULT_ENVIRONMENT
# (rows made before environments existed were migrated to it).
ENVIRONMENT_HEADER = "X-Dromos-Environment"
DEFAULT_ENVIRONMENT = "production"
ENVIRONMENT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def valid_environment(value: object) -> str:
    """`value` when it is an environment name (lower-case letters, digits, `_`, `-`; 1-32,
    first a letter or digit); ValueError otherwise (no path or SQL character gets through)."""
    if not isinstance(value, str) or not ENVIRONMENT_PATTERN.fullmatch(value):
        raise ValueError("environment must be 1-32 characters of a-z, 0-9, _ and -, starting with a letter or digit")
    return value


def internal_path(template: str, connection_id: str | None = None, *, session_id: str | None = None, **ids: str) -> str:
    """The absolute path the gateway calls, e.g. `/internal/v1/connections/abc/token`."""
    if connection_id is not None:
        template = template.replace("{connection_id}", connection_id)
    if session_id is not None:
        template = template.replace("{session_id}", session_id)
    for name, value in ids.items():
        template = template.replace("{" + name + "}", value)
    return "/" + template


def internal_route(template: str) -> str:
    """The Django URL pattern the broker serves `template` at."""
    return re.sub(r"\{(\w+)\}", r"<str:\1>", template)


# -- inputs ---------------------------------------------------------------------------------
PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 50, 200
# A page number past PAGE_MAX is a 400 (a 30-digit one overflowed the database's OFFSET).
PAGE_MAX = 100_000
MIN_TTL_DEFAULT, MIN_TTL_MAX = 60, 86400


@extend_schema_serializer(component_name="Input")  # the schema's name for it since issue 5
class RequestConnectionInputSerializer(serializers.Serializer):
    user_id = serializers.CharField(max_length=255)
    provider_name = serializers.CharField(max_length=64)
    scopes = serializers.ListField(
        child=serializers.CharField(max_length=256, validators=[validate_scope_token]),
        required=False,
        allow_empty=True,
        max_length=100,
    )
    return_url = serializers.CharField(
        max_length=2048, trim_whitespace=False, required=False, help_text="Required for the code flow"
    )
    params = serializers.DictField(child=serializers.CharField(max_length=256), required=False, allow_empty=True)
    flow = serializers.ChoiceField(
        choices=CONNECTION_FLOWS,
        required=False,
        help_text="code (default): consent at authUrl; device (RFC 8628): the user enters user_code at "
        "verification_uri, the broker polls; client_credentials (RFC 6749 §4.4), jwt_bearer (RFC 7523: "
        "a Google service account), github_app (GitHub App installation tokens): a machine connection, "
        "active at once, its token re-obtained before it expires",
    )
    # Machine flows only. The secrets are stored encrypted and never answered.
    client_id = serializers.CharField(
        required=False,
        max_length=512,
        help_text="Machine flows: this connection's own client (client_credentials) or JWT issuer "
        "(jwt_bearer: the service account's client_email; github_app: the app's client id or app id); "
        "default: the provider's",
    )
    client_secret = serializers.CharField(
        required=False, max_length=1024, trim_whitespace=False, help_text="client_credentials, with client_id"
    )
    private_key = serializers.CharField(
        required=False,
        max_length=16384,
        trim_whitespace=False,
        help_text="jwt_bearer, github_app: a PEM RSA private key (≥ 2048 bits); default: the provider's",
    )
    audience = serializers.CharField(required=False, max_length=512, help_text="client_credentials: sent as audience")
    resource = serializers.CharField(
        required=False, max_length=1024, help_text="client_credentials: sent as resource (RFC 8707)"
    )
    subject = serializers.CharField(
        required=False, max_length=320, help_text="jwt_bearer: the user to impersonate (the assertion's sub)"
    )

    def validate(self, attrs):
        flow = attrs.get("flow", FLOW_CODE)
        if flow == FLOW_CODE and not attrs.get("return_url"):
            raise serializers.ValidationError({"return_url": ["This field is required."]})
        allowed = _FLOW_FIELDS.get(flow, set())
        extra = sorted(name for name in (*GRANT_SECRET_FIELDS, *GRANT_PARAM_FIELDS) if name in attrs)
        refused = [name for name in extra if name not in allowed]
        if refused:
            raise serializers.ValidationError({name: [f"not part of the {flow} flow"] for name in refused})
        for name in ("client_id", "client_secret", "audience", "resource", "subject"):
            if name in attrs and not _API_KEY.match(attrs[name]):
                raise serializers.ValidationError({name: ["only printable ASCII without spaces"]})
        if flow == FLOW_CLIENT_CREDENTIALS and bool(attrs.get("client_id")) != bool(attrs.get("client_secret")):
            raise serializers.ValidationError(
                {
                    "client_secret" if attrs.get("client_id") else "client_id": [
                        "give client_id and client_secret together"
                    ]
                }
            )
        return attrs


_API_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no space, no CR/LF


def _printable(value: str, what: str) -> str:
    if not value.isprintable():
        raise serializers.ValidationError(f"{what} has a control or non-printable character")
    return value


class CredentialsSerializer(serializers.Serializer):
    """A static credential. Messages never echo a value."""

    type = serializers.ChoiceField(choices=("api_key", "basic"))
    api_key = serializers.CharField(required=False, max_length=4096, trim_whitespace=False)
    username = serializers.CharField(required=False, max_length=256, trim_whitespace=False)
    password = serializers.CharField(required=False, max_length=1024, trim_whitespace=False)

    def to_internal_value(self, data):
        attrs = super().to_internal_value(data)
        fields = {"api_key": ("api_key",), "basic": ("username", "password")}[attrs["type"]]
        extra = set(data) - {"type", *fields}
        if extra:
            raise serializers.ValidationError(
                {str(name)[:32]: ["not part of this credential type"] for name in sorted(extra, key=str)}
            )
        return attrs

    def validate(self, attrs):
        fields = {"api_key": ("api_key",), "basic": ("username", "password")}[attrs["type"]]
        missing = [name for name in fields if not attrs.get(name)]
        if missing:
            raise serializers.ValidationError({name: ["This field is required."] for name in missing})
        if attrs["type"] == "api_key":
            if not _API_KEY.match(attrs["api_key"]):
                raise serializers.ValidationError({"api_key": ["only printable ASCII without spaces"]})
            return {"type": "api_key", "api_key": attrs["api_key"]}
        _printable(attrs["username"], "username")
        _printable(attrs["password"], "password")
        if ":" in attrs["username"]:
            raise serializers.ValidationError({"username": ["a Basic-auth username cannot contain ':'"]})
        return {"type": "basic", "username": attrs["username"], "password": attrs["password"]}


class StaticConnectionInputSerializer(serializers.Serializer):
    user_id = serializers.CharField(max_length=255)
    provider_name = serializers.CharField(max_length=64)
    params = serializers.DictField(child=serializers.CharField(max_length=256), required=False, allow_empty=True)
    credentials = CredentialsSerializer()


class CredentialsReplaceInputSerializer(serializers.Serializer):
    credentials = CredentialsSerializer()


class TokenQuerySerializer(serializers.Serializer):
    auto_refresh = serializers.BooleanField(
        required=False, help_text="Refresh first when the token expires within min_ttl seconds"
    )
    min_ttl = serializers.IntegerField(
        required=False, min_value=0, max_value=MIN_TTL_MAX, help_text=f"Seconds (default {MIN_TTL_DEFAULT})"
    )


class ConnectionListQuerySerializer(serializers.Serializer):
    user_id = serializers.CharField(required=False, allow_blank=True, max_length=255)
    provider_name = serializers.CharField(required=False, allow_blank=True, max_length=64)
    status = serializers.ChoiceField(choices=CONNECTION_STATUSES, required=False, allow_blank=True)
    page = serializers.IntegerField(required=False, min_value=1, max_value=PAGE_MAX, help_text="Default 1")
    page_size = serializers.IntegerField(
        required=False, min_value=1, max_value=PAGE_SIZE_MAX, help_text=f"Default {PAGE_SIZE_DEFAULT}"
    )
    tag = serializers.ListField(
        child=serializers.CharField(max_length=330),
        required=False,
        max_length=MAX_TAGS,
        help_text="key:value, repeatable (all must match); a connection carries its connect session's tags",
    )

    def validate_tag(self, value):
        try:
            return [":".join(parse_tag_filter(raw)) for raw in value]
        except TagError as exc:
            raise serializers.ValidationError(str(exc)) from None


def tag_pairs(tags: list[str]) -> list[tuple[str, str]]:
    """`ConnectionListQuerySerializer`'s validated `tag` values as (key, value) pairs (a key
    holds no ':')."""
    return [tuple(raw.split(":", 1)) for raw in tags]  # type: ignore[misc]


def parse_query(serializer_class: type[serializers.Serializer], query_params) -> dict:
    """The query parameters that were given and not blank, validated by `serializer_class`;
    a bad value raises ValidationError (answered 400 invalid_request)."""
    serializer = serializer_class(data=query_params)
    serializer.is_valid(raise_exception=True)
    return {
        name: value
        for name, value in serializer.validated_data.items()
        if name in query_params and value not in ("", None)
    }


SESSION_EXPIRES_DEFAULT, SESSION_EXPIRES_MIN, SESSION_EXPIRES_MAX = 1800, 60, 86400
SESSION_STATUSES = ("pending", "started", "completed", "failed", "expired")


def _scope_list(**kwargs) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.CharField(max_length=256, validators=[validate_scope_token]), max_length=100, **kwargs
    )


class ConnectSessionInputSerializer(serializers.Serializer):
    user_id = serializers.CharField(max_length=255, required=False, help_text="Required unless reconnect is set")
    allowed_providers = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        allow_empty=True,
        max_length=50,
        help_text="Provider names the page offers (default: every configured provider)",
    )
    scopes = serializers.DictField(child=_scope_list(), required=False, help_text="provider name -> scopes")
    return_url = serializers.CharField(max_length=2048, trim_whitespace=False)
    tags = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=256),
        required=False,
        help_text=f"Copied onto the connection; at most {MAX_TAGS}, keys [A-Za-z0-9_.-]{{1,64}}, values <= 256",
    )
    expires_in = serializers.IntegerField(
        required=False,
        min_value=SESSION_EXPIRES_MIN,
        max_value=SESSION_EXPIRES_MAX,
        help_text=f"Seconds the link lives (default {SESSION_EXPIRES_DEFAULT})",
    )
    reconnect = serializers.RegexField(
        r"^[A-Za-z0-9_-]{1,64}$", required=False, help_text="A connection id: the page reconnects it in place"
    )

    def validate_tags(self, value):
        try:
            return validate_tags(value)
        except TagError as exc:
            raise serializers.ValidationError(str(exc)) from None


@extend_schema_serializer(component_name="ReconnectInput")
class ReconnectInputSerializer(serializers.Serializer):
    scopes = _scope_list(
        required=False, allow_empty=True, help_text="Added to the connection's scopes (incremental consent)"
    )
    return_url = serializers.CharField(
        max_length=2048, trim_whitespace=False, required=False, help_text="Default: the connection's"
    )


# -- bodies ---------------------------------------------------------------------------------
class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
    message = serializers.CharField()


class ConnectionRequestSerializer(serializers.Serializer):
    authUrl = serializers.URLField()  # noqa: N815 (the contract's spelling)
    state = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    provider_id = serializers.CharField()
    connection_id = serializers.CharField()


class DeviceConnectionRequestSerializer(serializers.Serializer):
    connection_id = serializers.CharField()
    provider_id = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    user_code = serializers.CharField(help_text="What the user types at verification_uri")
    verification_uri = serializers.CharField()
    verification_uri_complete = serializers.CharField(
        required=False, help_text="verification_uri with the code filled in, when the provider offers one"
    )
    expires_at = serializers.DateTimeField(help_text="The connection fails with expired_token after this")
    interval = serializers.IntegerField(help_text="Seconds between the broker's polls of the provider")


class TokenSerializer(serializers.Serializer):
    access_token = serializers.CharField(
        help_text="token_type api_key: the key; basic: base64(username:password), the Basic header's value"
    )
    token_type = serializers.CharField(
        help_text="Bearer (OAuth, including the machine flows), api_key or basic (static credentials)"
    )
    expires_at = serializers.DateTimeField(allow_null=True)
    id_token = serializers.CharField(required=False)
    username = serializers.CharField(required=False, help_text="token_type basic: the login")
    password = serializers.CharField(required=False, help_text="token_type basic: the password")
    scopes = serializers.ListField(child=serializers.CharField())
    provider_name = serializers.CharField()
    connection_id = serializers.CharField()
    warnings = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="min_ttl_not_met: auto_refresh gave a token living less than min_ttl (refreshed within "
        "the last few seconds, or a refresh is in progress or unavailable); it is valid until expires_at",
    )


class ConnectionSerializer(serializers.Serializer):
    connection_id = serializers.CharField()
    status = serializers.ChoiceField(choices=CONNECTION_STATUSES)
    flow = serializers.CharField(
        help_text="How it was made: code, device, api_key, basic, client_credentials, jwt_bearer, github_app"
    )
    provider_name = serializers.CharField()
    provider_id = serializers.CharField()
    user_id = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    granted_scopes = serializers.ListField(child=serializers.CharField())
    scopes_narrowed = serializers.BooleanField()
    missing_scopes = serializers.ListField(child=serializers.CharField())
    warnings = serializers.ListField(
        child=serializers.CharField(),
        help_text="refresh_token_expires_soon, refresh_token_expired, no_refresh_token, scopes_narrowed",
    )
    error = serializers.CharField(allow_null=True)
    error_description = serializers.CharField(allow_null=True)
    account = serializers.DictField()
    metadata = serializers.DictField()
    expires_at = serializers.DateTimeField(allow_null=True)
    refresh_token_expires_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    activated_at = serializers.DateTimeField(allow_null=True)
    last_refreshed_at = serializers.DateTimeField(allow_null=True)
    tags = serializers.DictField(child=serializers.CharField())
    connect_session_id = serializers.CharField(allow_null=True)


# The gateway's page. The broker answers `next_page` / `previous_page` (page numbers); the
# gateway turns them into its own links (PAGE_LINKS). (A comment, not a docstring: a
# docstring would become the schema's description.)
class ConnectionPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ConnectionSerializer(many=True)


PAGE_LINKS = {"next_page": "next", "previous_page": "previous"}  # broker's page number -> gateway's link


class ParamFormatSerializer(serializers.Serializer):
    pattern = serializers.CharField()
    example = serializers.CharField()
    required = serializers.BooleanField()


class ProviderSerializer(serializers.Serializer):
    name = serializers.CharField()
    display_name = serializers.CharField()
    provider_id = serializers.CharField()
    template = serializers.CharField()
    default_scopes = serializers.ListField(child=serializers.CharField())
    supports_refresh = serializers.BooleanField()
    supports_pkce = serializers.BooleanField()
    oidc = serializers.BooleanField()
    docs_url = serializers.CharField(allow_blank=True)
    params = serializers.ListField(child=serializers.CharField())
    scopes_url = serializers.CharField(allow_blank=True)
    supports_revocation = serializers.BooleanField(allow_null=True)
    refresh_token_rotation = serializers.BooleanField()
    refresh_token_lifetime_days = serializers.IntegerField(allow_null=True)
    api_base_url = serializers.CharField(allow_blank=True, help_text="Where /v1/proxy sends calls; empty: no proxy")
    param_formats = serializers.DictField(child=ParamFormatSerializer())


class ProviderListSerializer(serializers.Serializer):
    providers = ProviderSerializer(many=True)


class ConnectSessionCreatedSerializer(serializers.Serializer):
    connect_url = serializers.URLField()
    session_id = serializers.CharField()
    expires_at = serializers.DateTimeField()


class ConnectSessionSerializer(serializers.Serializer):
    session_id = serializers.CharField()
    status = serializers.ChoiceField(choices=SESSION_STATUSES)
    user_id = serializers.CharField()
    allowed_providers = serializers.ListField(child=serializers.CharField())
    scopes = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
    return_url = serializers.CharField()
    tags = serializers.DictField(child=serializers.CharField())
    reconnect = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    expires_at = serializers.DateTimeField()
    created_at = serializers.DateTimeField()
    used_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    connections = ConnectionSerializer(many=True)


class ReconnectRequestSerializer(serializers.Serializer):
    authUrl = serializers.URLField()  # noqa: N815 (the contract's spelling)
    connection_id = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())


# -- the management API (issue 19): webhooks and the audit log ---------------------------------
# Bodies the broker builds for the gateway's /v1/webhooks and /v1/audit; the key bodies are
# the gateway's own (gateway_app/manage_apis.py).
WEBHOOK_EVENTS = (
    "connection.activated",
    "connection.failed",
    "connection.refreshed_after_failure",
    "connection.revoked",
    "connection.reconnected",
    "connect_session.completed",
    "connection.expiring",
    "connection.expired",
)
DELIVERY_STATUSES = ("pending", "delivered", "failed")
AUDIT_LIMIT_DEFAULT, AUDIT_LIMIT_MAX = 100, 500


class NoBlankQuerySerializer(serializers.Serializer):
    """A query whose non-text parameters may not be given blank (`?until=`): a blank value is
    a 400 here, not silently "not given"."""

    def to_internal_value(self, data):
        if hasattr(data, "get"):
            blank = [
                name
                for name, field in self.fields.items()
                if not getattr(field, "allow_blank", False) and name in data and data.get(name) == ""
            ]
            if blank:
                raise serializers.ValidationError({name: ["may not be blank"] for name in blank})
        return super().to_internal_value(data)


class WebhookInputSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=2048, help_text="https (plain http only for WEBHOOK_ALLOW_HTTP_HOSTS)")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WEBHOOK_EVENTS),
        required=False,
        allow_empty=True,
        max_length=len(WEBHOOK_EVENTS),
        help_text="Events to send; empty or omitted: every event",
    )


class WebhookSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    url = serializers.CharField()
    events = serializers.ListField(child=serializers.CharField())
    enabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(help_text="The signing secret, shown once (whsec_…)")


class WebhookListSerializer(serializers.Serializer):
    results = WebhookSerializer(many=True)


class WebhookSecretSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    secret = serializers.CharField(help_text="The new signing secret, shown once; the old one stops at once")


class DeliveryQuerySerializer(NoBlankQuerySerializer):
    status = serializers.ChoiceField(choices=DELIVERY_STATUSES, required=False, allow_blank=True)
    page = serializers.IntegerField(required=False, min_value=1, max_value=PAGE_MAX, help_text="Default 1")
    page_size = serializers.IntegerField(
        required=False, min_value=1, max_value=PAGE_SIZE_MAX, help_text=f"Default {PAGE_SIZE_DEFAULT}"
    )


class WebhookDeliverySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    event = serializers.CharField()
    connection_id = serializers.CharField()
    status = serializers.ChoiceField(choices=DELIVERY_STATUSES)
    attempts = serializers.IntegerField()
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    delivered_at = serializers.DateTimeField(allow_null=True)


class WebhookDeliveryPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = WebhookDeliverySerializer(many=True)


class AuditQuerySerializer(NoBlankQuerySerializer):
    connection_id = serializers.RegexField(r"^[A-Za-z0-9_-]{1,64}$", required=False, allow_blank=True)
    actor = serializers.CharField(
        required=False, allow_blank=True, max_length=128, help_text="apikey:<prefix>, admin:<username>, system"
    )
    action = serializers.CharField(required=False, allow_blank=True, max_length=64, help_text="e.g. token.read")
    since = serializers.DateTimeField(required=False, help_text="Rows created at or after (ISO 8601)")
    until = serializers.DateTimeField(required=False, help_text="Rows created before (ISO 8601; default now)")

    def validate(self, attrs):
        for name in ("since", "until"):
            if attrs.get(name) is not None:
                attrs[name] = utc_moment(attrs[name], name)
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["must be after since"]})
        return attrs


def utc_moment(value, name: str):
    """`value` in UTC; a moment outside what UTC can hold (year 1 at +05:00) is a 400."""
    from datetime import UTC

    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise serializers.ValidationError({name: ["out of range"]}) from None


class AuditPageQuerySerializer(AuditQuerySerializer):
    cursor = serializers.RegexField(
        r"^[0-9]{1,19}$", required=False, allow_blank=True, help_text="From the previous page's `next` link"
    )
    limit = serializers.IntegerField(
        required=False, min_value=1, max_value=AUDIT_LIMIT_MAX, help_text=f"Default {AUDIT_LIMIT_DEFAULT}"
    )


class AuditEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    connection_id = serializers.CharField()
    actor = serializers.CharField()
    action = serializers.CharField()
    ip = serializers.CharField(allow_null=True)
    detail = serializers.DictField()


class AuditPageSerializer(serializers.Serializer):
    next = serializers.CharField(allow_null=True, help_text="The next (older) page, null on the last")
    results = AuditEventSerializer(many=True)


# -- a workspace's provider apps (issue 19): the bodies of /v1/workspace-providers ---------------
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")


class ProviderUpsertInputSerializer(serializers.Serializer):
    template = serializers.CharField(
        required=False, max_length=64, help_text="Required for a new row unless the name is a catalog key"
    )
    display_name = serializers.CharField(required=False, max_length=128)
    client_id = serializers.CharField(required=False, max_length=512)
    client_secret = serializers.CharField(
        required=False, max_length=4096, trim_whitespace=False, write_only=True, help_text="Write-only: never answered"
    )
    default_scopes = serializers.ListField(
        child=serializers.CharField(max_length=256, validators=[validate_scope_token]), required=False, max_length=100
    )
    authorize_params = serializers.DictField(child=serializers.CharField(max_length=512), required=False)
    settings = serializers.DictField(required=False, help_text="Catalog keys (broker_app/providers/spec.py)")
    token_auth = serializers.ChoiceField(choices=TOKEN_AUTH_METHODS, required=False)
    enabled = serializers.BooleanField(required=False)

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:
            message = "not a field a workspace may set (endpoint URLs are the operator's)"
            raise serializers.ValidationError({str(name)[:64]: [message] for name in unknown})
        return attrs


class ProviderAdminSerializer(serializers.Serializer):
    name = serializers.CharField()
    shared = serializers.BooleanField(help_text="The operator's default (read-only for the workspace)")
    environment = serializers.CharField(allow_null=True)
    template = serializers.CharField()
    display_name = serializers.CharField()
    client_id = serializers.CharField()
    client_secret_set = serializers.BooleanField(help_text="Whether a secret is stored; the secret is never answered")
    default_scopes = serializers.ListField(child=serializers.CharField())
    authorize_params = serializers.DictField(child=serializers.CharField())
    settings = serializers.DictField()
    token_auth = serializers.CharField()
    enabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ProviderAdminListSerializer(serializers.Serializer):
    providers = ProviderAdminSerializer(many=True)
