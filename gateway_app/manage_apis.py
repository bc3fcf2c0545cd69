"""The management API (issue 19) for workspace admins: keys whose scopes include `admin`.

- `/v1/keys`: create (the key is in that answer only), list, read, revoke. A key created
  here never holds more than the admin key creating it; with `expires_in` it is minted
  (a child of the creating key, revoked with it). Served by the gateway itself (keys are
  the gateway's).
- `/v1/webhooks`, `/v1/audit`: relayed to the broker's internal endpoints (dromos/wire.py).

Everything is scoped to the admin key's workspace: another workspace's key, webhook,
delivery or audit row is a 404, exactly like an unknown one."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import orjson
from django.conf import settings
from django.core.paginator import EmptyPage, Paginator
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers

from dromos import wire
from dromos.errors import BadGateway, InvalidRequest, NotFound
from dromos.http import no_store
from gateway_app import restrictions
from gateway_app.apis import ERRORS, GatewayApi, _query, relay_answer, request_client_ip
from gateway_app.broker_client import BrokerAnswer, broker
from gateway_app.keys import apikey_revoke
from gateway_app.models import ADMIN_SCOPE, KNOWN_SCOPES, ApiKey
from gateway_app.restrictions import (
    MINT_MAX_SECONDS,
    MINT_MIN_SECONDS,
    RestrictionError,
    key_as_dict,
    key_create,
    same_tenant,
)

PREFIX = r"[a-z0-9]{8}"
UUID = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
MANAGE_ERRORS = {k: v for k, v in ERRORS.items() if k in (400, 401, 403, 404, 429, 502, 503)}
MANAGE_ERRORS[403] = OpenApiResponse(wire.ErrorSerializer, description="Not an admin key, or outside its restrictions")
BODY_ERRORS = {**MANAGE_ERRORS, 413: OpenApiResponse(wire.ErrorSerializer, description="Body too large")}


def _path_parameter(name: str, pattern: str, text: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.PATH, pattern=f"^{pattern}$", description=text)


PREFIX_PARAMETER = _path_parameter("prefix", PREFIX, "The key's public prefix (dk_<prefix>_…)")
WEBHOOK_PARAMETER = _path_parameter("webhook_id", UUID, "From /v1/webhooks")
DELIVERY_PARAMETER = _path_parameter("delivery_id", UUID, "From the webhook's deliveries")


# -- bodies -------------------------------------------------------------------------------------------


class _Restrictions(serializers.Serializer):
    providers = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        allow_null=True,
        max_length=100,
        help_text="Only these providers; null: any",
    )
    user_ids = serializers.ListField(
        child=serializers.CharField(max_length=255),
        required=False,
        allow_null=True,
        max_length=100,
        help_text="Only these user_ids (or, with user_id_prefix, those too); null: any",
    )
    user_id_prefix = serializers.CharField(
        required=False, allow_null=True, max_length=255, help_text="Only user_ids starting with this"
    )
    allowed_cidrs = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        allow_null=True,
        max_length=100,
        help_text="Only from these source networks; null: any address",
    )
    egress_policy = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        allow_null=True,
        max_length=50,
        help_text='Proxy rules, "PROVIDER METHODS PATH_GLOB" or {"provider","methods","path"}; null: the default',
    )


class KeyCreateInputSerializer(_Restrictions):
    name = serializers.CharField(max_length=128)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=KNOWN_SCOPES),
        required=False,
        min_length=1,
        help_text="Default: the creating key's, admin excepted; never more than the creating key's",
    )
    expires_at = serializers.DateTimeField(required=False, help_text="Refused from then on (401)")
    expires_in = serializers.IntegerField(
        required=False,
        min_value=MINT_MIN_SECONDS,
        max_value=MINT_MAX_SECONDS,
        help_text="Mint a short-lived key (seconds): revoked with the creating key",
    )

    def validate_expires_at(self, value):
        return wire.utc_moment(value, "expires_at")


class KeySerializer(serializers.Serializer):
    prefix = serializers.CharField()
    name = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    providers = serializers.ListField(child=serializers.CharField(), allow_null=True)
    user_ids = serializers.ListField(child=serializers.CharField(), allow_null=True)
    user_id_prefix = serializers.CharField(allow_null=True)
    allowed_cidrs = serializers.ListField(child=serializers.CharField(), allow_null=True)
    egress_policy = serializers.ListField(child=serializers.DictField(), allow_null=True)
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    minted_from = serializers.CharField(allow_null=True, help_text="The parent key's prefix (minted keys)")
    created_by = serializers.CharField(allow_null=True, help_text="The prefix of the admin key that created it")


class KeyCreatedSerializer(KeySerializer):
    key = serializers.CharField(help_text="The key itself: shown in this answer only")


class KeyPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = KeySerializer(many=True)


class KeyListQuerySerializer(wire.NoBlankQuerySerializer):
    include_revoked = serializers.BooleanField(required=False, help_text="Default false")
    page = serializers.IntegerField(required=False, min_value=1, max_value=wire.PAGE_MAX, help_text="Default 1")
    page_size = serializers.IntegerField(
        required=False, min_value=1, max_value=wire.PAGE_SIZE_MAX, help_text=f"Default {wire.PAGE_SIZE_DEFAULT}"
    )


def _json(body: dict, status: int = 200) -> HttpResponse:
    return no_store(HttpResponse(orjson.dumps(body), status=status, content_type="application/json"))


def _page_links(request, params: dict, body: dict) -> dict:
    for number, link in wire.PAGE_LINKS.items():
        page = body.pop(number, None)
        query = urlencode({**params, "page": page})
        body[link] = None if page is None else request.build_absolute_uri(f"{request.path}?{query}")
    return body


class ManageApi(GatewayApi):
    required_scope = ADMIN_SCOPE

    def relay(self, method: str, path: str, *, json: dict | None = None, params: dict | None = None) -> BrokerAnswer:
        return broker().call(
            method,
            path,
            principal=self.request.user,
            client_ip=request_client_ip(self.request),
            json=json,
            params=params,
        )


class WorkspaceWideApi(ManageApi):
    restrict = staticmethod(restrictions.restrict_workspace_wide)


# -- keys -------------------------------------------------------------------------------------------------


def _workspace_key(request, prefix: str) -> ApiKey:
    if not re.fullmatch(PREFIX, prefix):
        raise InvalidRequest("prefix is malformed")
    key = ApiKey.objects.select_related("parent").filter(**same_tenant(request.user), prefix=prefix).first()
    if key is None:
        raise NotFound("key not found")
    return key


class KeyListApi(ManageApi):
    @extend_schema(
        operation_id="create_key",
        request=KeyCreateInputSerializer,
        responses={201: KeyCreatedSerializer, **BODY_ERRORS},
    )
    def post(self, request):
        serializer = KeyCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        creator = ApiKey.objects.filter(pk=request.user.key_id).first()
        if creator is None:  # deleted meanwhile
            raise NotFound("key not found")
        try:
            key, plaintext = key_create(
                workspace=request.user.workspace,
                name=data["name"],
                scopes=data.get("scopes"),
                providers=data.get("providers"),
                user_ids=data.get("user_ids"),
                user_id_prefix=data.get("user_id_prefix"),
                cidrs=data.get("allowed_cidrs"),
                expires_at=data.get("expires_at"),
                expires_in=data.get("expires_in"),
                egress_policy=data.get("egress_policy"),
                creator=creator,
                default_policy=settings.PROXY_DEFAULT_POLICY,
            )
        except RestrictionError as exc:
            raise InvalidRequest(str(exc)) from None
        key.parent = creator if key.parent_id else None
        return _json({**key_as_dict(key), "key": plaintext}, status=201)

    @extend_schema(
        operation_id="list_keys",
        parameters=[KeyListQuerySerializer],
        responses={200: KeyPageSerializer, **MANAGE_ERRORS},
    )
    def get(self, request):
        query = wire.parse_query(KeyListQuerySerializer, request.query_params)
        keys = ApiKey.objects.select_related("parent").filter(**same_tenant(request.user)).order_by("-id")
        if not query.get("include_revoked"):
            keys = keys.filter(revoked_at__isnull=True)
        page_number, page_size = query.get("page", 1), query.get("page_size", wire.PAGE_SIZE_DEFAULT)
        paginator = Paginator(keys, page_size)
        try:
            page = paginator.page(page_number)
            results, has_next = [key_as_dict(k) for k in page.object_list], page.has_next()
        except EmptyPage:
            results, has_next = [], False
        body = {
            "count": paginator.count,
            "next_page": page_number + 1 if has_next else None,
            "previous_page": page_number - 1 if page_number > 1 else None,
            "results": results,
        }
        params = {name: str(value).lower() if isinstance(value, bool) else value for name, value in query.items()}
        return _json(_page_links(request, params, body))


class KeyDetailApi(ManageApi):
    @extend_schema(
        operation_id="get_key", parameters=[PREFIX_PARAMETER], responses={200: KeySerializer, **MANAGE_ERRORS}
    )
    def get(self, request, prefix: str):
        return _json(key_as_dict(_workspace_key(request, prefix)))

    @extend_schema(
        operation_id="revoke_key",
        parameters=[PREFIX_PARAMETER],
        responses={200: KeySerializer, **MANAGE_ERRORS},
        description="Revokes the key and every key minted from it. Other gateway processes refuse them at their "
        "next request (the shared revocation marker), within API_KEY_CACHE_SECONDS without Redis.",
    )
    def delete(self, request, prefix: str):
        key = _workspace_key(request, prefix)
        apikey_revoke(prefix=key.prefix, workspace=request.user.workspace)
        key.refresh_from_db()
        return _json(key_as_dict(key))


# -- webhooks -------------------------------------------------------------------------------------------


def _check(value: str, pattern: str, what: str) -> str:
    if not re.fullmatch(pattern, value):
        raise InvalidRequest(f"{what} is malformed")
    return value


class WebhookListApi(WorkspaceWideApi):
    @extend_schema(
        operation_id="create_webhook",
        request=wire.WebhookInputSerializer,
        responses={201: wire.WebhookCreatedSerializer, **BODY_ERRORS},
    )
    def post(self, request):
        serializer = wire.WebhookInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return relay_answer(
            self.relay("POST", wire.internal_path(wire.WEBHOOKS), json=serializer.validated_data), cacheable=False
        )

    @extend_schema(operation_id="list_webhooks", responses={200: wire.WebhookListSerializer, **MANAGE_ERRORS})
    def get(self, request):
        return relay_answer(self.relay("GET", wire.internal_path(wire.WEBHOOKS)))


class WebhookDetailApi(WorkspaceWideApi):
    @extend_schema(
        operation_id="delete_webhook",
        parameters=[WEBHOOK_PARAMETER],
        responses={200: wire.WebhookSerializer, **MANAGE_ERRORS},
        description="Deletes the webhook and its delivery history.",
    )
    def delete(self, request, webhook_id: str):
        _check(webhook_id, UUID, "webhook_id")
        return relay_answer(self.relay("DELETE", wire.internal_path(wire.WEBHOOK, webhook_id=webhook_id)))


class WebhookRotateApi(WorkspaceWideApi):
    @extend_schema(
        operation_id="rotate_webhook_secret",
        request=None,
        parameters=[WEBHOOK_PARAMETER],
        responses={200: wire.WebhookSecretSerializer, **MANAGE_ERRORS},
    )
    def post(self, request, webhook_id: str):
        _check(webhook_id, UUID, "webhook_id")
        return relay_answer(
            self.relay("POST", wire.internal_path(wire.WEBHOOK_ROTATE, webhook_id=webhook_id)), cacheable=False
        )


class WebhookDeliveryListApi(WorkspaceWideApi):
    @extend_schema(
        operation_id="list_webhook_deliveries",
        parameters=[WEBHOOK_PARAMETER, wire.DeliveryQuerySerializer],
        responses={200: wire.WebhookDeliveryPageSerializer, **MANAGE_ERRORS},
    )
    def get(self, request, webhook_id: str):
        _check(webhook_id, UUID, "webhook_id")
        params = _query(wire.DeliveryQuerySerializer, request)
        answer = self.relay("GET", wire.internal_path(wire.WEBHOOK_DELIVERIES, webhook_id=webhook_id), params=params)
        if answer.status != 200:
            return relay_answer(answer)
        return HttpResponse(
            orjson.dumps(_page_links(request, params, orjson.loads(answer.body))), content_type="application/json"
        )


class WebhookRedeliverApi(WorkspaceWideApi):
    @extend_schema(
        operation_id="redeliver_webhook_delivery",
        request=None,
        parameters=[WEBHOOK_PARAMETER, DELIVERY_PARAMETER],
        responses={
            202: wire.WebhookDeliverySerializer,
            409: OpenApiResponse(wire.ErrorSerializer, description="The delivery has not failed"),
            **MANAGE_ERRORS,
        },
        description="Queues a failed delivery again from scratch (attempts reset).",
    )
    def post(self, request, webhook_id: str, delivery_id: str):
        _check(webhook_id, UUID, "webhook_id")
        _check(delivery_id, UUID, "delivery_id")
        path = wire.internal_path(wire.WEBHOOK_REDELIVER, webhook_id=webhook_id, delivery_id=delivery_id)
        return relay_answer(self.relay("POST", path))


# -- a workspace's provider apps (the broker's /internal/v1/workspace-providers) -----------------

PROVIDER_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
PROVIDER_PARAMETER = _path_parameter("name", PROVIDER_NAME, "The provider's name (lower case)")


def _restrict_provider(request, principal) -> None:
    """An admin key limited to some providers manages only those (403 otherwise)."""
    name = request.parser_context["kwargs"].get("name") if request.parser_context else None
    if isinstance(name, str):
        restrictions.check_target(principal, provider_name=name)


class WorkspaceProviderListApi(ManageApi):
    @extend_schema(
        operation_id="list_workspace_providers",
        responses={200: wire.ProviderAdminListSerializer, **MANAGE_ERRORS},
        description="Per name, the provider row this workspace uses: its own, or the shared one "
        "(`shared: true`, read-only). Never a secret.",
    )
    def get(self, request):
        return relay_answer(self.relay("GET", wire.internal_path(wire.WORKSPACE_PROVIDERS)))


class WorkspaceProviderDetailApi(ManageApi):
    restrict = staticmethod(_restrict_provider)

    @extend_schema(
        operation_id="get_workspace_provider",
        parameters=[PROVIDER_PARAMETER],
        responses={200: wire.ProviderAdminSerializer, **MANAGE_ERRORS},
        description="The workspace's own row (a shared one, or another workspace's: 404).",
    )
    def get(self, request, name: str):
        _check(name, PROVIDER_NAME, "name")
        return relay_answer(self.relay("GET", wire.internal_path(wire.WORKSPACE_PROVIDER, name=name.lower())))

    @extend_schema(
        operation_id="upsert_workspace_provider",
        parameters=[PROVIDER_PARAMETER],
        request=wire.ProviderUpsertInputSerializer,
        responses={200: wire.ProviderAdminSerializer, 201: wire.ProviderAdminSerializer, **BODY_ERRORS},
        description="Create (201) or update (200) the workspace's own provider app; fields left out keep "
        "their value; `client_secret` is write-only. Endpoint URLs are the operator's (400).",
    )
    def put(self, request, name: str):
        _check(name, PROVIDER_NAME, "name")
        serializer = wire.ProviderUpsertInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        path = wire.internal_path(wire.WORKSPACE_PROVIDER, name=name.lower())
        return relay_answer(self.relay("PUT", path, json=dict(serializer.validated_data)), cacheable=False)

    @extend_schema(
        operation_id="delete_workspace_provider",
        parameters=[PROVIDER_PARAMETER],
        responses={
            204: OpenApiResponse(description="Deleted"),
            409: OpenApiResponse(wire.ErrorSerializer, description="provider_in_use: it has connections"),
            **MANAGE_ERRORS,
        },
        description="Refused (409 `provider_in_use`) while the provider has connections: disable it with "
        "`enabled: false`, or revoke them first.",
    )
    def delete(self, request, name: str):
        _check(name, PROVIDER_NAME, "name")
        answer = self.relay("DELETE", wire.internal_path(wire.WORKSPACE_PROVIDER, name=name.lower()))
        if answer.status == 204:
            return HttpResponse(status=204)
        return relay_answer(answer)


# -- the audit log --------------------------------------------------------------------------------------


class AuditListApi(WorkspaceWideApi):
    @extend_schema(
        operation_id="list_audit_events",
        parameters=[wire.AuditPageQuerySerializer],
        responses={200: wire.AuditPageSerializer, **MANAGE_ERRORS},
        description="The workspace's audit log, newest first; follow `next` for older rows.",
    )
    def get(self, request):
        params = _query(wire.AuditPageQuerySerializer, request)
        answer = self.relay("GET", wire.internal_path(wire.AUDIT_EVENTS), params=params)
        if answer.status != 200:
            return relay_answer(answer)
        body = orjson.loads(answer.body)
        cursor = body.pop("next_cursor", None)
        body["next"] = (
            None
            if cursor is None
            else request.build_absolute_uri(f"{request.path}?{urlencode({**params, 'cursor': cursor})}")
        )
        return HttpResponse(orjson.dumps(body), content_type="application/json")


class AuditExportApi(WorkspaceWideApi):
    @extend_schema(
        operation_id="export_audit_events",
        parameters=[wire.AuditQuerySerializer],
        responses={
            (200, "application/x-ndjson"): OpenApiResponse(
                OpenApiTypes.STR, description="One JSON object per line, oldest first (as manage.py audit export)"
            ),
            **MANAGE_ERRORS,
        },
        description="Streams the rows created in [since, until) as NDJSON; `since` is required.",
    )
    def get(self, request):
        params = _query(wire.AuditQuerySerializer, request)
        if "since" not in params:
            raise InvalidRequest("since is required", details={"since": ["This field is required."]})
        upstream = broker().stream(
            wire.internal_path(wire.AUDIT_EXPORT),
            principal=request.user,
            client_ip=request_client_ip(request),
            params=params,
        )
        if upstream.status == 200 and upstream.headers.get("Content-Type", "").startswith("application/x-ndjson"):

            def lines():
                try:
                    yield from upstream.stream(64 * 1024)
                finally:
                    upstream.release_conn()

            response = StreamingHttpResponse(lines(), content_type="application/x-ndjson")
            response["Cache-Control"] = "no-store"
            return response
        body = upstream.read()
        upstream.release_conn()
        if upstream.status in (400, 404, 503) and body.startswith(b"{"):
            return relay_answer(BrokerAnswer(upstream.status, body, upstream.headers.get("Retry-After")))
        raise BadGateway(f"the broker answered {upstream.status}")
