"""Agent API keys. Shown once, stored as a SHA-256 digest (the key has 256 bits of
randomness, so a slow hash adds nothing) next to a short visible prefix used for lookup."""

from __future__ import annotations

from django.db import models

from dromos.wire import DEFAULT_ENVIRONMENT

ALL_SCOPES = (
    "connections:write",
    "connections:read",
    "connections:delete",
    "tokens:read",
    "tokens:refresh",
    "proxy",
)
# Never implied by an empty scope list: a key is a workspace admin only when it says so
# (the management API: keys, webhooks, audit log).
ADMIN_SCOPE = "admin"
KNOWN_SCOPES = (*ALL_SCOPES, ADMIN_SCOPE)


class ApiKey(models.Model):
    workspace = models.CharField(max_length=128, db_index=True)
    # The workspace's environment the key works in (issue 19): it never sees another's objects.
    environment = models.CharField(max_length=32, default=DEFAULT_ENVIRONMENT, db_default=DEFAULT_ENVIRONMENT)
    name = models.CharField(max_length=128)
    prefix = models.CharField(max_length=16, unique=True)
    key_digest = models.CharField(max_length=64)
    scopes = models.JSONField(default=list, help_text="Empty means every scope")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    egress_policy = models.JSONField(
        null=True,
        blank=True,
        help_text='Proxy rules [{"provider", "methods", "path"}]; null: PROXY_DEFAULT_POLICY (gateway_app.egress)',
    )
    # Narrow keys (issue 19, gateway_app.restrictions): null / blank means unrestricted.
    allowed_providers = models.JSONField(null=True, blank=True, help_text="Provider names; null: any")
    allowed_user_ids = models.JSONField(null=True, blank=True, help_text="user_ids; null: any (see user_id_prefix)")
    user_id_prefix = models.CharField(max_length=255, blank=True, default="", help_text="Blank: any")
    allowed_cidrs = models.JSONField(null=True, blank=True, help_text="Source networks; null: any address")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Refused (401) from then on")
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="minted",
        help_text="The admin key this one was minted from (POST /v1/keys with expires_in): revoked with it",
    )
    created_by = models.CharField(max_length=16, blank=True, default="", help_text="Prefix of the creating key")

    class Meta:
        ordering = ["workspace", "name"]

    def __str__(self) -> str:
        return f"{self.workspace}/{self.name} ({self.prefix})"


class ProxyCall(models.Model):
    """One proxied API call (issue 15): who, which connection, what (method, host, path
    without its query string), how it ended, how much and how long. Never a body, a query
    string, a header or a token."""

    workspace = models.CharField(max_length=128)
    key_prefix = models.CharField(max_length=16)
    connection_id = models.CharField(max_length=64, db_index=True)
    provider = models.CharField(max_length=64, blank=True)
    method = models.CharField(max_length=8)
    host = models.CharField(max_length=255, blank=True)
    path = models.CharField(max_length=2048)
    status = models.PositiveSmallIntegerField(help_text="What the agent received")
    error = models.CharField(max_length=64, blank=True, help_text="Our error code when the gateway answered")
    bytes_sent = models.BigIntegerField(default=0, help_text="Request body bytes sent to the provider")
    bytes_received = models.BigIntegerField(default=0, help_text="Response body bytes passed to the agent")
    duration_ms = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["workspace", "created_at"], name="proxycall_ws_created")]

    def __str__(self) -> str:
        return f"{self.method} {self.host}{self.path} → {self.status}"
