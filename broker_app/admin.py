"""The operators' connection viewer.

Tokens are never displayed, not even masked or as ciphertext: every page names its fields
explicitly (fieldsets, list columns), so the encrypted columns, state and nonce digests,
PKCE verifiers, client secrets and webhook secrets never reach a form, a list or the page
source. Refresh and revoke go through the same services the API uses, audited as
`admin:<username>`.

Workspaces (issue 19): a superuser, or a staff user with `broker_app.view_all_workspaces`,
sees every workspace; any other staff user sees only the workspaces a StaffWorkspace row
gives them (none: no workspace's rows). Lists, change pages, actions and the detail page
buttons all read through the limited queryset: another workspace's object is a 404 even by
its direct URL. Operator-wide rows (shared providers, cached discovery documents) are for
the unlimited only."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from broker_app.audit import Actor
from broker_app.models import (
    AuditEvent,
    CachedDocument,
    Connection,
    Provider,
    StaffWorkspace,
    WebhookDelivery,
    WebhookEndpoint,
)
from broker_app.services import audit_partitions
from broker_app.services.refresh import token_refresh
from broker_app.services.revocation import connection_revoke
from broker_app.webhooks import WebhookError, validate_events, webhook_redeliver
from dromos.errors import ApiError

# Never shown anywhere in the admin.
SECRET_FIELDS = (
    "access_token_enc",
    "refresh_token_enc",
    "id_token_enc",
    "pkce_verifier_enc",
    "device_code_enc",
    "device_code_digest",
    "state_digest",
    "nonce_digest",
    "client_secret_enc",
    "secret_enc",
    "grant_secret_enc",
    "private_key_enc",
)


def _actor(request) -> Actor:
    return Actor(name=f"admin:{request.user.get_username()}", ip=request.META.get("REMOTE_ADDR"))


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


ALL_WORKSPACES = "broker_app.view_all_workspaces"


def allowed_workspaces(request) -> list[str] | None:
    """The workspaces the admin user may see; None: all of them."""
    user = request.user
    if not user.is_authenticated:
        return []
    if user.is_superuser or user.has_perm(ALL_WORKSPACES):
        return None
    cached = getattr(request, "_dromos_workspaces", None)
    if cached is None:
        cached = list(StaffWorkspace.objects.filter(user=user).values_list("workspace", flat=True))
        request._dromos_workspaces = cached
    return cached


class WorkspaceScopedAdmin(admin.ModelAdmin):
    """Rows limited to the user's workspaces (see the module docstring). `workspace_field`
    names the lookup of a row's workspace; `operator_rows` (a Q) are rows no workspace owns,
    shown to the unlimited only."""

    workspace_field = "workspace"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        workspaces = allowed_workspaces(request)
        if workspaces is None:
            return queryset
        return queryset.filter(**{f"{self.workspace_field}__in": workspaces})

    def _guard(self, request, object_id) -> None:
        # Django answers an object outside get_queryset with a redirect to the index: make it
        # an honest 404, as the API answers another workspace's connection.
        if object_id is not None and self.get_object(request, unquote(object_id)) is None:
            raise Http404("not found")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        self._guard(request, object_id)
        return super().change_view(request, object_id, form_url, extra_context)

    def delete_view(self, request, object_id, extra_context=None):
        self._guard(request, object_id)
        return super().delete_view(request, object_id, extra_context)

    def history_view(self, request, object_id, extra_context=None):
        self._guard(request, object_id)
        return super().history_view(request, object_id, extra_context)


class WorkspaceFilter(admin.SimpleListFilter):
    """Filter by typing a workspace: a deployment has many, and listing them would mean a
    DISTINCT over the whole connections table on every page of the list."""

    title = "workspace"
    parameter_name = "workspace"
    template = "admin/broker_app/input_filter.html"

    def lookups(self, request, model_admin):
        return ()

    def has_output(self) -> bool:
        return True

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()
        return queryset.filter(workspace=value) if value else queryset

    def choices(self, changelist):
        # One entry: the other parameters in force (kept by the form) and the "All" link.
        keep = [(name, value) for name, value in changelist.params.items() if name != self.parameter_name]
        yield {
            "selected": self.value() is None,
            "query_parts": keep,
            "display": "All",
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
        }


class ProviderFilter(admin.RelatedFieldListFilter):
    """The provider choices a limited user may see: the shared ones and their workspaces'."""

    def field_choices(self, field, request, model_admin):
        choices = super().field_choices(field, request, model_admin)
        workspaces = allowed_workspaces(request)
        if workspaces is None:
            return choices
        visible = set(
            Provider.objects.filter(Q(workspace="") | Q(workspace__in=workspaces)).values_list("pk", flat=True)
        )
        return [(pk, label) for pk, label in choices if pk in visible]


class ConnectionOperations:
    """Refresh now / revoke, shared by the list actions and the detail page buttons."""

    @staticmethod
    def refresh(request, connection: Connection) -> tuple[int, str]:
        try:
            view = token_refresh(connection_id=connection.id, workspace=None, actor=_actor(request))
        except ApiError as exc:
            return messages.ERROR, f"Connection {connection.id}: refresh failed: {exc.message}"
        expires = _when(view.expires_at)
        return messages.SUCCESS, f"Connection {connection.id}: refreshed; the token now expires {expires}"

    @staticmethod
    def revoke(request, connection: Connection) -> tuple[int, str]:
        try:
            revoked = connection_revoke(connection_id=connection.id, workspace=None, actor=_actor(request))
        except ApiError as exc:
            return messages.ERROR, f"Connection {connection.id}: revoke failed: {exc.message}"
        note = " (provider revocation deferred, will be retried)" if revoked.revoke_pending else ""
        return messages.SUCCESS, f"Connection {connection.id}: revoked, tokens wiped{note}"


@admin.register(Connection)
class ConnectionAdmin(WorkspaceScopedAdmin):
    list_display = (
        "id",
        "workspace",
        "environment",
        "user_id",
        "provider",
        "status",
        "expires_at",
        "last_refreshed_at",
        "failure",
        "tag_list",
        "created_at",
    )
    list_filter = ("status", ("provider", ProviderFilter), WorkspaceFilter, "environment")
    show_facets = admin.ShowFacets.NEVER  # counts per filter choice would scan the table on every page
    search_fields = ("=id", "=user_id")
    search_help_text = "Exact connection id or user id"
    list_select_related = ("provider",)
    list_per_page = 50
    show_full_result_count = False
    date_hierarchy = None
    actions = ("refresh_now", "revoke")
    change_form_template = "admin/broker_app/connection/change_form.html"
    fieldsets = (
        (None, {"fields": ("id", "workspace", "environment", "user_id", "provider", "status", "flow")}),
        ("Scopes", {"fields": ("scopes", "granted_scopes")}),
        (
            "Tokens (values are never shown)",
            {
                "fields": (
                    "token_type",
                    "token_expires",
                    "refresh_token_expires",
                    "has_refresh_token",
                    "last_refresh",
                    "token_version",
                    "refresh_failures",
                    "next_refresh_attempt",
                )
            },
        ),
        ("Failure", {"fields": ("error", "error_description", "revoke_pending")}),
        ("Account", {"fields": ("account", "metadata", "params", "grant_params", "return_url")}),
        ("Tags", {"fields": ("tags", "connect_session")}),
        ("Timestamps", {"fields": ("created", "updated", "activated", "consent_window_closes")}),
        ("Audit trail", {"fields": ("audit_trail",)}),
        ("Webhook deliveries", {"fields": ("webhook_deliveries",)}),
    )
    readonly_fields = tuple(field for fieldset in fieldsets for field in fieldset[1]["fields"])

    def get_queryset(self, request):
        # The encrypted columns are not even loaded.
        return super().get_queryset(request).defer(*(f for f in SECRET_FIELDS if hasattr(Connection, f)))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_operate_permission(self, request) -> bool:
        return request.user.has_perm("broker_app.change_connection")

    @admin.display(description="Tags")
    def tag_list(self, obj):
        return ", ".join(f"{key}:{value}" for key, value in sorted((obj.tags or {}).items())) or "-"

    # Times to the second, in UTC: an operator compares them with logs and provider consoles.
    @admin.display(description="Access token expires")
    def token_expires(self, obj):
        return _when(obj.expires_at)

    @admin.display(description="Refresh token expires")
    def refresh_token_expires(self, obj):
        return _when(obj.refresh_expires_at)

    @admin.display(description="Last refresh")
    def last_refresh(self, obj):
        return _when(obj.last_refreshed_at)

    @admin.display(description="Next proactive refresh attempt")
    def next_refresh_attempt(self, obj):
        return _when(obj.next_refresh_attempt_at)

    @admin.display(description="Created")
    def created(self, obj):
        return _when(obj.created_at)

    @admin.display(description="Updated")
    def updated(self, obj):
        return _when(obj.updated_at)

    @admin.display(description="Activated")
    def activated(self, obj):
        return _when(obj.activated_at)

    @admin.display(description="Consent window closes")
    def consent_window_closes(self, obj):
        return _when(obj.state_expires_at)

    @admin.display(description="Failure")
    def failure(self, obj):
        return obj.error or ""

    @admin.display(description="Refresh token stored", boolean=True)
    def has_refresh_token(self, obj):
        # Reads the deferred column only to test presence; the value never leaves here.
        return bool(Connection.objects.filter(pk=obj.pk).exclude(refresh_token_enc="").exists())

    @admin.display(description="Audit trail (latest 50)")
    def audit_trail(self, obj):
        # Newest first along the (connection_id, created_at) index, one partition after another.
        rows = AuditEvent.objects.filter(connection_id=obj.id).order_by("-created_at", "-id")[:50]
        body = format_html_join(
            "\n",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    _when(e.created_at),
                    e.action,
                    e.actor,
                    e.ip or "—",
                    ", ".join(f"{k}={v}" for k, v in (e.detail or {}).items()) or "—",
                )
                for e in rows
            ),
        )
        if not body:
            return "—"
        return format_html(
            '<table class="audit-trail"><thead><tr><th>When</th><th>Action</th><th>Actor</th>'
            "<th>From</th><th>Detail</th></tr></thead><tbody>{}</tbody></table>",
            body,
        )

    @admin.display(description="Webhook deliveries (latest 20)")
    def webhook_deliveries(self, obj):
        rows = WebhookDelivery.objects.filter(connection_id=obj.id).select_related("endpoint")[:20]
        body = format_html_join(
            "\n",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:broker_app_webhookdelivery_change", args=[d.pk]),
                    _when(d.created_at),
                    d.event,
                    d.endpoint.url,
                    d.status,
                    d.attempts,
                )
                for d in rows
            ),
        )
        if not body:
            return "—"
        return format_html(
            "<table><thead><tr><th>Created</th><th>Event</th><th>Endpoint</th><th>Status</th>"
            "<th>Attempts</th></tr></thead><tbody>{}</tbody></table>",
            body,
        )

    @admin.action(description="Refresh now", permissions=["operate"])
    def refresh_now(self, request, queryset):
        for connection in queryset.select_related(None).only("id"):
            level, text = ConnectionOperations.refresh(request, connection)
            self.message_user(request, text, level)

    @admin.action(description="Revoke (at the provider, and wipe the tokens)", permissions=["operate"])
    def revoke(self, request, queryset):
        for connection in queryset.select_related(None).only("id"):
            level, text = ConnectionOperations.revoke(request, connection)
            self.message_user(request, text, level)

    # Detail page buttons (POST only, CSRF-protected by the admin's middleware).
    def get_urls(self):
        def wrap(operation):
            def view(request, object_id):
                if request.method != "POST":
                    return HttpResponseNotAllowed(["POST"])
                if not self.has_operate_permission(request):
                    raise PermissionDenied
                # The admin quotes primary keys in its URLs ("_" → "_5F"): connection ids hold "_".
                connection = get_object_or_404(self.get_queryset(request).only("id"), pk=unquote(object_id))
                level, text = operation(request, connection)
                self.message_user(request, text, level)
                return HttpResponseRedirect(reverse("admin:broker_app_connection_change", args=[quote(connection.pk)]))

            return self.admin_site.admin_view(view)

        return [
            path("<str:object_id>/refresh/", wrap(ConnectionOperations.refresh), name="broker_app_connection_refresh"),
            path("<str:object_id>/revoke/", wrap(ConnectionOperations.revoke), name="broker_app_connection_revoke"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        self._guard(request, object_id)
        extra_context = {**(extra_context or {}), "can_operate": self.has_operate_permission(request)}
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(Provider)
class ProviderAdmin(WorkspaceScopedAdmin):
    list_display = (
        "name", "owner", "environment", "template", "client_id", "has_client_secret", "enabled", "updated_at",
    )  # fmt: skip
    list_filter = ("enabled", "template", WorkspaceFilter, "environment")
    search_fields = ("name", "client_id")
    exclude = ("client_secret_enc", "private_key_enc")
    readonly_fields = ("id", "has_client_secret", "has_private_key", "created_at", "updated_at")
    # What only the operator changes: who owns a row, and the URLs the broker fetches.
    OPERATOR_FIELDS = (
        "workspace", "environment", "discovery_url", "authorize_url", "token_url", "revocation_url",
        "userinfo_url", "api_base_url",
    )  # fmt: skip

    def get_readonly_fields(self, request, obj=None):
        if allowed_workspaces(request) is None:
            return self.readonly_fields
        return (*self.readonly_fields, *self.OPERATOR_FIELDS)

    def has_add_permission(self, request):
        # A row added here would be shared (or another workspace's): the operator's to make.
        return allowed_workspaces(request) is None and super().has_add_permission(request)

    @admin.display(description="Workspace")
    def owner(self, obj):
        return obj.workspace or "(shared)"

    @admin.display(description="Client secret set", boolean=True)
    def has_client_secret(self, obj):
        return bool(obj.client_secret_enc)

    @admin.display(description="Private key set", boolean=True)
    def has_private_key(self, obj):
        return bool(obj.private_key_enc)


class AuditPaginator(Paginator):
    """The unfiltered audit list counts its pages from PostgreSQL's row estimate once the
    table is large: an exact COUNT(*) over 10^8 rows takes seconds. Filtered, it counts."""

    @cached_property
    def count(self) -> int:
        if not self.object_list.query.where:
            estimate = audit_partitions.audit_rows_estimate()
            if estimate is not None and estimate > audit_partitions.ESTIMATE_ABOVE:
                return estimate
        return super().count


@admin.register(AuditEvent)
class AuditEventAdmin(WorkspaceScopedAdmin):
    paginator = AuditPaginator
    list_display = ("created_at", "action", "connection_id", "workspace", "environment", "actor", "ip")
    list_filter = ("action", "workspace", "environment")
    search_fields = ("=connection_id", "actor")
    # Newest first by time: with a workspace or connection filter the (…, created_at) index
    # serves the page (the table is partitioned by created_at on PostgreSQL).
    ordering = ("-created_at", "-id")
    readonly_fields = (
        "connection_id", "workspace", "environment", "actor", "action", "ip", "detail", "created_at", "chain_hash",
        "prev_id",
    )  # fmt: skip
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class OperatorOnlyAdmin(admin.ModelAdmin):
    """Rows no workspace owns: for users who see every workspace only."""

    def has_module_permission(self, request):
        return allowed_workspaces(request) is None and super().has_module_permission(request)

    def has_view_permission(self, request, obj=None):
        return allowed_workspaces(request) is None and super().has_view_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return allowed_workspaces(request) is None and super().has_change_permission(request, obj)

    def has_add_permission(self, request):
        return allowed_workspaces(request) is None and super().has_add_permission(request)

    def has_delete_permission(self, request, obj=None):
        return allowed_workspaces(request) is None and super().has_delete_permission(request, obj)


@admin.register(CachedDocument)
class CachedDocumentAdmin(OperatorOnlyAdmin):
    list_display = ("url", "fetched_at", "expires_at")
    readonly_fields = ("url", "body", "fetched_at", "expires_at")


@admin.register(StaffWorkspace)
class StaffWorkspaceAdmin(OperatorOnlyAdmin):
    """Which workspaces a limited staff user sees (superusers edit these)."""

    list_display = ("user", "workspace")
    list_filter = ("workspace",)
    search_fields = ("user__username", "workspace")


class WebhookEndpointForm(forms.ModelForm):
    class Meta:
        model = WebhookEndpoint
        fields = ("enabled", "events")

    def clean_events(self):
        try:
            return validate_events(self.cleaned_data.get("events") or [])
        except WebhookError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(WorkspaceScopedAdmin):
    """Endpoints are added with `manage.py webhook add` (which shows the signing secret
    once); here they can be disabled, narrowed to some events, removed, and watched."""

    form = WebhookEndpointForm
    list_display = ("url", "workspace", "environment", "enabled", "event_list", "created_at")
    list_filter = ("enabled", "workspace", "environment")
    search_fields = ("workspace", "url")
    fields = (
        "id", "workspace", "environment", "url", "enabled", "events", "created_at", "updated_at", "recent_deliveries",
    )  # fmt: skip
    readonly_fields = ("id", "workspace", "environment", "url", "created_at", "updated_at", "recent_deliveries")

    def has_add_permission(self, request):
        return False

    @admin.display(description="Events")
    def event_list(self, obj):
        return ", ".join(obj.events) or "all"

    @admin.display(description="Recent deliveries (latest 20)")
    def recent_deliveries(self, obj):
        rows = obj.deliveries.all()[:20]
        body = format_html_join(
            "\n",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:broker_app_webhookdelivery_change", args=[d.pk]),
                    _when(d.created_at),
                    d.event,
                    d.connection_id,
                    d.status,
                    d.attempts,
                    d.last_status_code or "—",
                )
                for d in rows
            ),
        )
        if not body:
            return "—"
        return format_html(
            "<table><thead><tr><th>Created</th><th>Event</th><th>Connection</th><th>Status</th>"
            "<th>Attempts</th><th>Last HTTP status</th></tr></thead><tbody>{}</tbody></table>",
            body,
        )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(WorkspaceScopedAdmin):
    workspace_field = "endpoint__workspace"
    list_display = (
        "created_at",
        "event",
        "connection_id",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "delivered_at",
    )
    list_filter = ("status", "event", "endpoint__workspace", "endpoint__environment")
    search_fields = ("=connection_id", "=id")
    list_select_related = ("endpoint",)
    show_full_result_count = False
    actions = ("redeliver",)
    readonly_fields = (
        "id",
        "endpoint",
        "event",
        "connection_id",
        "payload",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "created_at",
        "delivered_at",
    )
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_redeliver_permission(self, request) -> bool:
        return request.user.has_perm("broker_app.change_webhookdelivery")

    @admin.action(description="Deliver again (resets the attempt count)", permissions=["redeliver"])
    def redeliver(self, request, queryset):
        count = sum(1 for delivery in queryset if webhook_redeliver(delivery=delivery))
        self.message_user(request, f"{count} deliveries queued again", messages.SUCCESS)
