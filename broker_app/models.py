"""Broker state: providers, connections (with encrypted tokens) and the audit trail."""

from __future__ import annotations

import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from dromos import wire


def new_connection_id() -> str:
    # 192 bits of randomness, url-safe, never sequential.
    return "c_" + secrets.token_urlsafe(24)


class Provider(models.Model):
    """A configured provider: a catalog template plus credentials and overrides.

    Shared (workspace and environment empty): the operator's default, seen by every
    workspace. Owned (issue 19): one workspace's own app in one of its environments (its
    own client id and secret, scopes, authorize parameters, display name); a workspace's
    lookup by name prefers its own row (broker_app.selectors.provider_get_by_name)."""

    class TokenAuth(models.TextChoices):
        BASIC = "client_secret_basic"
        POST = "client_secret_post"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.SlugField(max_length=64, help_text="Lower-case id agents use, e.g. google")
    workspace = models.CharField(
        max_length=128, blank=True, default="", db_default="", help_text="Empty: shared by every workspace"
    )
    environment = models.CharField(
        max_length=32, blank=True, default="", db_default="", help_text="The owning workspace's environment"
    )
    display_name = models.CharField(max_length=128, blank=True)
    template = models.CharField(max_length=64, help_text="Catalog entry this provider is built on")
    client_id = models.CharField(max_length=512, blank=True)
    client_secret_enc = models.TextField(blank=True, editable=False)
    # Issue 18: the app's private key (PEM) for GitHub App installation tokens and the JWT
    # bearer grant (Google service accounts), encrypted like the client secret; client_id
    # is then the JWT's issuer (the GitHub App's id or client id, the service account's email).
    private_key_enc = models.TextField(blank=True, editable=False, default="", db_default="")
    discovery_url = models.URLField(max_length=1024, blank=True)
    authorize_url = models.URLField(max_length=1024, blank=True)
    token_url = models.URLField(max_length=1024, blank=True)
    revocation_url = models.URLField(max_length=1024, blank=True)
    userinfo_url = models.URLField(max_length=1024, blank=True)
    api_base_url = models.URLField(
        max_length=1024,
        blank=True,
        default="",
        db_default="",  # raw inserts (COPY) too
        help_text="Where the proxy sends API calls (overrides the catalog's)",
    )
    default_scopes = models.JSONField(default=list, blank=True)
    authorize_params = models.JSONField(default=dict, blank=True)
    token_auth = models.CharField(max_length=32, choices=TokenAuth.choices, blank=True)
    settings = models.JSONField(
        default=dict, blank=True, help_text="Fixed template parameters (tenant, domain, allowed tenants …)"
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "workspace", "environment"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "environment", "name"], name="provider_ws_env_name"),
            # A shared row has no environment; an owned row always has one.
            models.CheckConstraint(
                condition=(Q(workspace="", environment="") | (~Q(workspace="") & ~Q(environment=""))),
                name="provider_owner_complete",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.workspace}/{self.environment})" if self.workspace else self.name


class Connection(models.Model):
    class Status(models.TextChoices):  # the values are the wire contract's (dromos.wire)
        PENDING = wire.PENDING
        ACTIVE = wire.ACTIVE
        FAILED = wire.FAILED
        REVOKED = wire.REVOKED

    id = models.CharField(primary_key=True, max_length=64, default=new_connection_id, editable=False)
    workspace = models.CharField(max_length=128)
    # The workspace's environment (issue 19): every workspace-scoped lookup filters by both.
    environment = models.CharField(max_length=32, default=wire.DEFAULT_ENVIRONMENT, db_default=wire.DEFAULT_ENVIRONMENT)
    user_id = models.CharField(max_length=255)
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="connections")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    scopes = models.JSONField(default=list)
    granted_scopes = models.JSONField(default=list, blank=True)
    params = models.JSONField(default=dict, blank=True)
    return_url = models.TextField()

    # Consent flow (pending only). Secrets are stored as digests or ciphertext.
    state_digest = models.CharField(max_length=64, unique=True, null=True, blank=True)
    state_expires_at = models.DateTimeField(null=True, blank=True)
    nonce_digest = models.CharField(max_length=64, blank=True)
    pkce_verifier_enc = models.TextField(blank=True)

    # Device authorization grant (RFC 8628), pending only: the device code (encrypted; its
    # digest is unique, so one device code never serves two connections), the polling
    # interval the provider asked for and when the next poll is due (the beat scan's key).
    # `state_expires_at` holds the device code's expiry.
    flow = models.CharField(max_length=24, default="code")
    device_code_enc = models.TextField(blank=True)
    device_code_digest = models.CharField(max_length=64, unique=True, null=True, blank=True)
    device_interval = models.PositiveIntegerField(null=True, blank=True)
    device_next_poll_at = models.DateTimeField(null=True, blank=True)

    # Machine grants (issue 18: client_credentials, jwt_bearer, github_app): the secrets a
    # connection was given once in its request (client_id, client_secret, private_key; an
    # encrypted JSON object bound to this row, never served) and the non-secret parameters
    # every token request repeats (audience, resource, subject).
    grant_secret_enc = models.TextField(blank=True, default="", db_default="")
    grant_params = models.JSONField(default=dict, blank=True, db_default={})

    # Tokens, encrypted and bound to this row.
    access_token_enc = models.TextField(blank=True)
    refresh_token_enc = models.TextField(blank=True)
    id_token_enc = models.TextField(blank=True)
    token_type = models.CharField(max_length=32, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    refresh_expires_at = models.DateTimeField(null=True, blank=True)
    token_version = models.PositiveIntegerField(default=0)
    last_refreshed_at = models.DateTimeField(null=True, blank=True)
    refresh_failures = models.PositiveIntegerField(default=0)
    next_refresh_attempt_at = models.DateTimeField(null=True, blank=True)
    # When a token was last served (written at most once an hour, and on the first read of
    # each new token): the usage-aware sweep's input.
    last_read_at = models.DateTimeField(null=True, blank=True)
    # When connection.expiring was sent for the current refresh_expires_at (reset when it moves).
    expiry_warned_at = models.DateTimeField(null=True, blank=True)

    account = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    error = models.CharField(max_length=64, blank=True)
    error_description = models.CharField(max_length=512, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    revoke_pending = models.BooleanField(default=False)
    # Issue 16: labels an agent filters by (dromos/tags.py bounds them), and the connect
    # session that produced the connection.
    tags = models.JSONField(default=dict, blank=True)
    connect_session = models.ForeignKey(
        "ConnectSession", null=True, blank=True, on_delete=models.SET_NULL, related_name="connections"
    )
    # Set when the provider refused a freshly refreshed token through the proxy (issue 15):
    # the grant may lack a scope or be disabled; cleared by the next successful refresh.
    attention = models.CharField(max_length=64, blank=True, default="", db_default="")  # db_default: raw inserts too

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["workspace", "user_id"], name="conn_ws_user"),
            models.Index(fields=["workspace", "status"], name="conn_ws_status"),
            # The refresh sweep reads only active rows with an expiry: its cost follows
            # the number due, not the number stored.
            models.Index(
                fields=["expires_at"],
                name="conn_active_expiry",
                condition=Q(status="active", expires_at__isnull=False),
            ),
            models.Index(fields=["created_at"], name="conn_pending_created", condition=Q(status="pending")),
            models.Index(
                fields=["device_next_poll_at"],
                name="conn_device_poll_due",
                condition=Q(status="pending", device_next_poll_at__isnull=False),
            ),
            # The grant-expiry task reads only active rows whose refresh token has an end.
            models.Index(
                fields=["refresh_expires_at"],
                name="conn_active_grant_end",
                condition=Q(status="active", refresh_expires_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.id

    def aad(self, field: str) -> str:
        return f"{self.id}:{field}"


class AuditEvent(models.Model):
    """Who did what to which connection, when, from where. Never holds a token."""

    connection_id = models.CharField(max_length=64)
    workspace = models.CharField(max_length=128, blank=True)
    # The workspace's environment (issue 19; rows older than environments: production).
    environment = models.CharField(max_length=32, blank=True, db_default=wire.DEFAULT_ENVIRONMENT, editable=False)
    actor = models.CharField(max_length=128, help_text="apikey:<prefix>, admin:<username>, system")
    action = models.CharField(max_length=64)
    ip = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Tamper evidence (broker_app/services/audit_chain.py), written by the sealing step off
    # the hot path: database defaults, so the token read's INSERT does not name them.
    chain_hash = models.CharField(max_length=64, blank=True, db_default="", editable=False)
    prev_id = models.BigIntegerField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-id"]
        # On PostgreSQL the table is partitioned by day on created_at (migration 0006):
        # its primary key is (id, created_at), these are partitioned indexes.
        indexes = [
            models.Index(fields=["connection_id", "created_at"], name="auditevent_connection_at"),
            models.Index(fields=["workspace", "created_at"], name="auditevent_workspace_at"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.connection_id}"


class AuditSeal(models.Model):
    """The head of one day's audit hash chain (broker_app/services/audit_chain.py): the last
    sealed row, its hash and how many rows the chain holds, so deleting the last rows of a
    day is detected too."""

    day = models.DateField(primary_key=True)
    head_id = models.BigIntegerField()
    head_at = models.DateTimeField()
    head_hash = models.CharField(max_length=64)
    rows = models.BigIntegerField()
    sealed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"audit seal {self.day}"


class RefreshInFlight(models.Model):
    """A durable "a refresh reached the provider" marker (issue 14).

    Written and committed on a connection of its own just before the provider's token
    endpoint is called, deleted in the transaction that stores the provider's answer. One
    left behind whose token_version is still the row's means the process died between
    the provider's answer and the commit: the refresh token may have been rotated and lost.
    No foreign key: the row it names is locked FOR UPDATE by the refresh while the marker
    is written from another session."""

    connection_id = models.CharField(max_length=64, primary_key=True)
    token_version = models.PositiveIntegerField()
    started_at = models.DateTimeField()

    class Meta:
        db_table = "broker_app_refreshinflight"  # named in refresh.py's marker INSERT

    def __str__(self) -> str:
        return f"refresh in flight {self.connection_id}"


class CachedDocument(models.Model):
    """Persistent cache of OIDC discovery documents and JWKS, honouring Cache-Control."""

    url = models.URLField(max_length=1024, unique=True)
    body = models.JSONField()
    fetched_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.url


class WebhookEndpoint(models.Model):
    """Where a workspace wants to hear about its connections. The signing secret is stored
    encrypted (broker_app.crypto, bound to this row) and shown once, when it is made."""

    class Event(models.TextChoices):
        ACTIVATED = "connection.activated"
        FAILED = "connection.failed"
        REFRESHED_AFTER_FAILURE = "connection.refreshed_after_failure"
        REVOKED = "connection.revoked"
        RECONNECTED = "connection.reconnected"
        SESSION_COMPLETED = "connect_session.completed"
        EXPIRING = "connection.expiring"
        EXPIRED = "connection.expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.CharField(max_length=128, db_index=True)
    environment = models.CharField(max_length=32, default=wire.DEFAULT_ENVIRONMENT, db_default=wire.DEFAULT_ENVIRONMENT)
    url = models.URLField(max_length=2048)
    secret_enc = models.TextField(editable=False)
    enabled = models.BooleanField(default=True)
    events = models.JSONField(default=list, blank=True, help_text="Event names to send; empty means every event")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["workspace", "created_at"]
        constraints = [models.UniqueConstraint(fields=["workspace", "environment", "url"], name="webhook_ws_env_url")]

    def __str__(self) -> str:
        return f"{self.workspace} → {self.url}"

    def wants(self, event: str) -> bool:
        return self.enabled and (not self.events or event in self.events)


class WebhookDelivery(models.Model):
    """One event sent (or being sent) to one endpoint: the payload, and every attempt's outcome."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=64)
    connection_id = models.CharField(max_length=64, db_index=True)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=512, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["next_attempt_at"], name="webhook_pending_due", condition=Q(status="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.connection_id} → {self.status}"


def new_connect_session_id() -> str:
    return "cs_" + secrets.token_urlsafe(18)


class ConnectSession(models.Model):
    """A short-lived invitation to connect (issue 16): the hosted page at /connect/{token}
    shows it to the end user. The token is single-use and stored only as its digest; the
    session id is what the agent reads the outcome by."""

    class Status(models.TextChoices):
        PENDING = "pending"  # link not used yet
        STARTED = "started"  # the page started a consent flow (the token is spent)
        COMPLETED = "completed"  # the flow produced (or reconnected) a connection
        FAILED = "failed"  # the flow ended in an error (denied, account_mismatch …)

    id = models.CharField(primary_key=True, max_length=64, default=new_connect_session_id, editable=False)
    workspace = models.CharField(max_length=128)
    environment = models.CharField(max_length=32, default=wire.DEFAULT_ENVIRONMENT, db_default=wire.DEFAULT_ENVIRONMENT)
    user_id = models.CharField(max_length=255)
    token_digest = models.CharField(max_length=64, unique=True, editable=False)
    allowed_providers = models.JSONField(default=list, blank=True, help_text="Provider names; empty means all")
    scopes = models.JSONField(default=dict, blank=True, help_text="provider name -> scopes")
    return_url = models.TextField()
    tags = models.JSONField(default=dict, blank=True)
    reconnect = models.ForeignKey(
        "Connection", null=True, blank=True, on_delete=models.CASCADE, related_name="reconnect_sessions"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error = models.CharField(max_length=64, blank=True)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["workspace", "created_at"], name="connect_session_ws")]

    def __str__(self) -> str:
        return self.id


class ConnectAttempt(models.Model):
    """A pending reconnect of an existing connection (issue 16). The consent flow's secrets
    live here, not on the connection, so the connection keeps its status and its tokens keep
    working until a callback proves the same account consented again."""

    class Status(models.TextChoices):
        PENDING = "pending"
        COMPLETED = "completed"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="connect_attempts")
    connect_session = models.ForeignKey(
        ConnectSession, null=True, blank=True, on_delete=models.SET_NULL, related_name="attempts"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    scopes = models.JSONField(default=list)
    return_url = models.TextField()
    state_digest = models.CharField(max_length=64, unique=True, null=True, blank=True)
    state_expires_at = models.DateTimeField()
    nonce_digest = models.CharField(max_length=64, blank=True)
    pkce_verifier_enc = models.TextField(blank=True)
    error = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"reconnect {self.connection_id} ({self.status})"

    def aad(self, field: str) -> str:
        return f"attempt:{self.pk}:{field}"


class WorkspaceBranding(models.Model):
    """How the hosted connect page presents a workspace: name, logo, accent colour."""

    workspace = models.CharField(max_length=128, primary_key=True)
    display_name = models.CharField(max_length=128, blank=True)
    accent_color = models.CharField(max_length=7, blank=True, help_text="#RRGGBB")
    logo = models.BinaryField(blank=True, default=b"", editable=False)
    logo_content_type = models.CharField(max_length=32, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "workspace brandings"

    def __str__(self) -> str:
        return self.workspace


class StaffWorkspace(models.Model):
    """An admin staff user limited to some workspaces (issue 19): in the Django admin such a
    user sees, opens and acts on only these workspaces' rows. A staff user without the
    `view_all_workspaces` permission (superusers have every permission) and without rows
    here sees no workspace's rows at all."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_workspaces")
    workspace = models.CharField(max_length=128)

    class Meta:
        ordering = ["user", "workspace"]
        constraints = [models.UniqueConstraint(fields=["user", "workspace"], name="staff_workspace_unique")]
        permissions = [("view_all_workspaces", "Can see every workspace's rows in the admin")]

    def __str__(self) -> str:
        return f"{self.user} → {self.workspace}"
