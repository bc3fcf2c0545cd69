"""The broker's side of the management API (issue 19): a workspace's webhooks and audit
log, called by the gateway for admin keys (bodies: dromos/wire.py). Every lookup is scoped
to X-Dromos-Workspace: another workspace's webhook or delivery is a 404, like an unknown one."""

from __future__ import annotations

import uuid
from datetime import UTC

from django.core.paginator import EmptyPage, Paginator
from django.db import transaction
from django.http import StreamingHttpResponse
from django.utils import timezone
from rest_framework.response import Response
from rest_framework.views import APIView

from broker_app.apis import _actor, _environment, _required_workspace
from broker_app.audit import Actor, audit_record
from broker_app.models import AuditEvent, Connection, WebhookDelivery, WebhookEndpoint
from broker_app.services.audit_chain import audit_export_lines
from broker_app.webhooks import (
    WebhookError,
    webhook_endpoint_create,
    webhook_endpoint_remove,
    webhook_redeliver,
    webhook_secret_rotate,
)
from dromos import wire
from dromos.errors import ApiError, InvalidRequest, NotFound
from dromos.http import no_store


class Conflict(ApiError):
    status_code, code = 409, "conflict"


def _uuid(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"{what} not found") from None


def _tenant(request) -> dict:
    """The caller's workspace and environment: another's webhook is a 404."""
    return {"workspace": _required_workspace(request), "environment": _environment(request)}


def _endpoint(request, webhook_id: str) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(pk=_uuid(webhook_id, "webhook"), **_tenant(request)).first()
    if endpoint is None:
        raise NotFound("webhook not found")
    return endpoint


def webhook_as_dict(endpoint: WebhookEndpoint) -> dict:
    return {
        "id": str(endpoint.pk),
        "url": endpoint.url,
        "events": list(endpoint.events or []),
        "enabled": endpoint.enabled,
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }


def delivery_as_dict(delivery: WebhookDelivery) -> dict:
    return {
        "id": str(delivery.pk),
        "event": delivery.event,
        "connection_id": delivery.connection_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "next_attempt_at": delivery.next_attempt_at,
        "created_at": delivery.created_at,
        "delivered_at": delivery.delivered_at,
    }


def _audit(request, action: str, detail: dict) -> None:
    """The management action, in the workspace's audit log (connection_id blank)."""
    actor: Actor = _actor(request)
    audit_record(connection_id="", workspace=actor.workspace, actor=actor, action=action, detail=detail)


class WebhookListApi(APIView):
    def get(self, request):
        endpoints = WebhookEndpoint.objects.filter(**_tenant(request)).order_by("created_at")
        return Response({"results": [webhook_as_dict(e) for e in endpoints]})

    def post(self, request):
        serializer = wire.WebhookInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            with transaction.atomic():
                endpoint, secret = webhook_endpoint_create(
                    **_tenant(request),
                    url=serializer.validated_data["url"],
                    events=serializer.validated_data.get("events"),
                )
                _audit(request, "webhook.created", {"webhook_id": str(endpoint.pk), "url": endpoint.url})
        except (WebhookError, ValueError) as exc:  # urlsplit's ValueError: "Invalid IPv6 URL"
            message = str(exc)[:200]
            raise InvalidRequest(message, details={"url": [message]}) from None
        return no_store(Response({**webhook_as_dict(endpoint), "secret": secret}, status=201))


class WebhookDetailApi(APIView):
    def delete(self, request, webhook_id: str):
        endpoint = _endpoint(request, webhook_id)
        body = webhook_as_dict(endpoint)
        with transaction.atomic():
            webhook_endpoint_remove(endpoint=endpoint)
            _audit(request, "webhook.deleted", {"webhook_id": body["id"], "url": body["url"]})
        return Response(body)


class WebhookRotateApi(APIView):
    def post(self, request, webhook_id: str):
        endpoint = _endpoint(request, webhook_id)
        with transaction.atomic():
            secret = webhook_secret_rotate(endpoint=endpoint)
            _audit(request, "webhook.secret_rotated", {"webhook_id": str(endpoint.pk)})
        return no_store(Response({"id": str(endpoint.pk), "secret": secret}))


class WebhookDeliveryListApi(APIView):
    def get(self, request, webhook_id: str):
        endpoint = _endpoint(request, webhook_id)
        query = wire.parse_query(wire.DeliveryQuerySerializer, request.query_params)
        deliveries = endpoint.deliveries.order_by("-created_at", "id")
        if query.get("status"):
            deliveries = deliveries.filter(status=query["status"])
        page_number, page_size = query.get("page", 1), query.get("page_size", wire.PAGE_SIZE_DEFAULT)
        paginator = Paginator(deliveries, page_size)
        try:
            page = paginator.page(page_number)
            results = [delivery_as_dict(d) for d in page.object_list]
            has_next, has_previous = page.has_next(), page.has_previous()
        except EmptyPage:
            results, has_next, has_previous = [], False, page_number > 1
        return Response(
            {
                "count": paginator.count,
                "next_page": page_number + 1 if has_next else None,
                "previous_page": page_number - 1 if has_previous else None,
                "results": results,
            }
        )


class WebhookRedeliverApi(APIView):
    def post(self, request, webhook_id: str, delivery_id: str):
        endpoint = _endpoint(request, webhook_id)
        delivery = endpoint.deliveries.filter(pk=_uuid(delivery_id, "delivery")).first()
        if delivery is None:
            raise NotFound("delivery not found")
        if delivery.status != WebhookDelivery.Status.FAILED:
            raise Conflict(f"only a failed delivery is sent again; this one is {delivery.status}")
        with transaction.atomic():
            webhook_redeliver(delivery=delivery)
            _audit(request, "webhook.redelivered", {"webhook_id": str(endpoint.pk), "delivery_id": str(delivery.pk)})
        delivery.refresh_from_db()
        return Response(delivery_as_dict(delivery), status=202)


def _audit_filters(request, query: dict) -> dict:
    """The workspace, its environment and the filters given. A connection_id that is not the
    workspace environment's is a 404, like an unknown one (its log never holds another's rows)."""
    tenant = _tenant(request)
    filters = dict(tenant)
    for name in ("connection_id", "actor", "action"):
        if query.get(name):
            filters[name] = query[name]
    if "connection_id" in filters and not Connection.objects.filter(pk=filters["connection_id"], **tenant).exists():
        raise NotFound("connection not found")
    return filters


def audit_row_as_dict(row: AuditEvent) -> dict:
    return {
        "id": row.id,
        "created_at": row.created_at,
        "connection_id": row.connection_id,
        "actor": row.actor,
        "action": row.action,
        "ip": row.ip,
        "detail": row.detail or {},
    }


class AuditListApi(APIView):
    """Newest first, by id (a keyset page: no OFFSET, no COUNT over the partitioned table)."""

    def get(self, request):
        query = wire.parse_query(wire.AuditPageQuerySerializer, request.query_params)
        rows = AuditEvent.objects.filter(**_audit_filters(request, query))
        if query.get("since"):
            rows = rows.filter(created_at__gte=query["since"])
        if query.get("until"):
            rows = rows.filter(created_at__lt=query["until"])
        if query.get("cursor"):
            rows = rows.filter(id__lt=int(query["cursor"]))
        limit = query.get("limit", wire.AUDIT_LIMIT_DEFAULT)
        page = list(rows.order_by("-id").only(*(f.name for f in AuditEvent._meta.concrete_fields))[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        return Response(
            {"next_cursor": str(page[-1].id) if more else None, "results": [audit_row_as_dict(r) for r in page]}
        )


class AuditExportApi(APIView):
    """NDJSON, oldest first, streamed (manage.py audit export's lines, this workspace's only)."""

    def get(self, request):
        query = wire.parse_query(wire.AuditQuerySerializer, request.query_params)
        if not query.get("since"):
            raise InvalidRequest("since is required", details={"since": ["This field is required."]})
        until = query.get("until") or timezone.now()
        lines = audit_export_lines(
            since=query["since"].astimezone(UTC), until=until.astimezone(UTC), **_audit_filters(request, query)
        )
        response = StreamingHttpResponse((line + "\n" for line in lines), content_type="application/x-ndjson")
        response["Cache-Control"] = "no-store"
        return response
